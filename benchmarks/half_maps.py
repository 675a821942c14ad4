"""Half-map resolution against the truth, with the true poses: prints one JSON line.

Simulates particles from the bundled 4AKE map (or MAP), backprojects half maps with the true poses
(:func:`cryoai_core.reconstruct.reconstruct_half_maps`) and compares their FSC=0.143 resolution with the
FSC of the full backprojected map against the simulator's reference map, at 0.5 (the gold-standard
relation FSC_full,truth = sqrt(2 FSC_half / (1 + FSC_half)) maps 0.143 to 0.5) and at 0.143.

Example:
    python benchmarks/half_maps.py --particles 4000 --box 32 --pixel-size 3 --snr 0.1
"""
import argparse
import json
import os
import sys
import tempfile

from cryoai_core.cli.simulate import BUILTIN_MAP
from cryoai_core.evaluate.fsc import fsc_curve, resolution_at
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import read_mrc
from cryoai_core.io.star import read_star
from cryoai_core.reconstruct import reconstruct_half_maps
from cryoai_core.simulate import SimulationConfig, simulate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("map", nargs="?", default=BUILTIN_MAP)
    parser.add_argument("--particles", type=int, default=4000)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=3.0)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--shift-sigma", type=float, default=3.0, help="Å")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    volume, voxel = read_mrc(args.map)
    with tempfile.TemporaryDirectory() as folder:
        config = SimulationConfig(num_particles=args.particles, box=args.box, pixel_size_angstrom=args.pixel_size,
                                  snr=args.snr, shift_sigma_angstrom=args.shift_sigma, seed=args.seed)
        simulate(volume, voxel, config, folder, progress=False)
        table = read_star(os.path.join(folder, "particles.star"))
        reference, _ = read_mrc(os.path.join(folder, "reference.mrc"))
        result = reconstruct_half_maps(ParticleDataset(table), table.euler_angles_degrees, table.origins_angstrom,
                                       seed=args.seed)
    frequencies, full_vs_truth = fsc_curve(result.full, reference)
    _, half_vs_truth = fsc_curve(result.half1, reference)
    half = result.resolution_pixels
    truth_05 = resolution_at(frequencies, full_vs_truth, 0.5)
    truth_0143 = resolution_at(frequencies, full_vs_truth, 0.143)
    print(json.dumps({
        "benchmark": "half_maps", "map": os.path.basename(args.map), "particles": args.particles, "box": args.box,
        "pixel_size_angstrom": args.pixel_size, "snr": args.snr, "seed": args.seed,
        "half_maps_fsc0143_px": half, "full_vs_truth_fsc05_px": truth_05, "full_vs_truth_fsc0143_px": truth_0143,
        "half1_vs_truth_fsc0143_px": resolution_at(frequencies, half_vs_truth, 0.143),
        "relative_difference_vs_fsc05": (half - truth_05) / truth_05,
        "relative_difference_vs_fsc0143": (half - truth_0143) / truth_0143,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
