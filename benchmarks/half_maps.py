"""Half-map resolution against the truth: prints one JSON line.

Simulates particles from the bundled 4AKE map (or MAP) and gives them poses in one of three ways:

- ``true``: the simulator's poses;
- ``searched``: the true poses backprojected into one map of every particle, then every particle's pose
  found again by a global search (rotations and shifts, full resolution) against that map, as the export
  refines poses against one trained map (the noise of both halves is aligned alike);
- ``random-searched``: the same global search against a map backprojected from random poses, one round
  of projection matching from nothing (a run whose poses are far from right).

With these poses it makes half maps twice: plainly (:func:`cryoai_core.reconstruct.reconstruct_half_maps`)
and gold-standard (:func:`cryoai_core.gold_standard.gold_standard_half_maps`, each half refined against its
own map), and compares each half-map FSC=0.143 resolution with the FSC of that full map against the
simulator's reference after alignment (rotation, shift, both hands: the poses of a searched run are known
only up to a global rotation and hand). The gold-standard relation FSC_full,truth = sqrt(2 FSC_half /
(1 + FSC_half)) maps 0.143 to 0.5, so the half-map figure is compared with the truth at 0.5 and 0.143.

Example:
    nice python benchmarks/half_maps.py --poses random-searched --particles 3000 --threads 1
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import roma
import torch

from cryoai_core.cli.simulate import BUILTIN_MAP
from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.evaluate.alignment import align_volumes
from cryoai_core.evaluate.fsc import fsc_curve, resolution_at
from cryoai_core.fourier import fft2_centered
from cryoai_core.gold_standard import gold_standard_half_maps, reference_grid
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import read_mrc
from cryoai_core.io.star import read_star
from cryoai_core.models.forward_model import HalfDisk
from cryoai_core.pose_search import PoseSearch
from cryoai_core.reconstruct import accumulate, reconstruct_half_maps
from cryoai_core.rotations import matrix_to_euler
from cryoai_core.simulate import SimulationConfig, simulate
from cryoai_core.train.config import SearchConfig

POSES = ("true", "searched", "random-searched")


def searched_poses(dataset, volume: np.ndarray, seed: int, batch_size: int = 256):
    """Every particle's pose found by a global search (:class:`SearchConfig` defaults) against ``volume``:
    ``(N, 3)`` RELION angles and ``(N, 2)`` origins in Å."""
    config = SearchConfig()
    box, pixel = dataset.box, dataset.pixel_size_angstrom
    max_shift_px = config.max_shift_fraction * box
    step_px = 2.0 * max_shift_px / (config.shift_points - 1) if config.shift_points > 1 else 0.0
    coarse_radius = box / 2 - 1 if step_px == 0 else min(box / 2 - 1, box / (2.0 * step_px))
    search = PoseSearch(num_rotations=config.rotations, max_shift_px=max_shift_px, shift_points=config.shift_points,
                        coarse_radius_px=coarse_radius, refine_steps=config.refine_steps)
    grid = reference_grid(volume, pixel)
    disk = HalfDisk(box, box // 2 - 1)
    generator = torch.Generator().manual_seed(seed)
    rotations, origins = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.__getitems__(list(range(start, min(len(dataset), start + batch_size))))
        targets = disk.gather(fft2_centered(batch["image"].float()))
        ctf = compute_ctf(disk.freqs_px.double() / pixel, CTFParams.from_array(batch["ctf"].double())).float()
        found = search.search(grid, targets, ctf, disk, generator=generator)
        rotations.append(found.rotations)
        origins.append(found.origins_px)
    return (matrix_to_euler(torch.cat(rotations).double()).numpy(),
            torch.cat(origins).double().numpy() * pixel)


def poses_for(kind: str, table, dataset, seed: int):
    if kind == "true":
        return table.euler_angles_degrees, table.origins_angstrom
    count = len(dataset)
    if kind == "searched":
        angles, origins = table.euler_angles_degrees, table.origins_angstrom
    else:
        random = roma.random_rotmat(count, generator=torch.Generator().manual_seed(seed + 1000))
        angles, origins = matrix_to_euler(random.double()).numpy(), np.zeros((count, 2))
    full = accumulate(dataset, angles, origins, np.arange(count))
    return searched_poses(dataset, full.volume(1e-3 * full.shell_mean_weight()), seed)


def figures(result, reference, prefix: str, seconds: float) -> dict:
    aligned = align_volumes(result.full, reference)
    frequencies, fsc = fsc_curve(aligned.aligned_map, reference)
    half = result.resolution_pixels
    truth_05, truth_0143 = resolution_at(frequencies, fsc, 0.5), resolution_at(frequencies, fsc, 0.143)
    uncorrected = getattr(result, "fsc_uncorrected", None)
    return {
        f"{prefix}_fsc0143_px": half,
        f"{prefix}_uncorrected_fsc0143_px": (None if uncorrected is None else
                                             resolution_at(result.frequencies, uncorrected, result.fsc_threshold)),
        f"{prefix}_established": getattr(result, "established", None),
        f"{prefix}_truth_fsc05_px": truth_05, f"{prefix}_truth_fsc0143_px": truth_0143,
        f"{prefix}_truth_mirrored": aligned.mirrored,
        f"{prefix}_relative_difference_vs_fsc05": (half - truth_05) / truth_05 if math.isfinite(half) else None,
        f"{prefix}_relative_difference_vs_fsc0143": (half - truth_0143) / truth_0143 if math.isfinite(half) else None,
        f"{prefix}_seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("map", nargs="?", default=BUILTIN_MAP)
    parser.add_argument("--poses", choices=POSES, default="true")
    parser.add_argument("--particles", type=int, default=3000)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=3.0)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--shift-sigma", type=float, default=3.0, help="Å")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--label", default="", help="free text stored in the line (e.g. the commit)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    volume, voxel = read_mrc(args.map)
    line = {"benchmark": "half_maps", "map": os.path.basename(args.map), "poses": args.poses,
            "particles": args.particles, "box": args.box, "pixel_size_angstrom": args.pixel_size, "snr": args.snr,
            "seed": args.seed, "threads": args.threads, "label": args.label}
    with tempfile.TemporaryDirectory() as folder:
        config = SimulationConfig(num_particles=args.particles, box=args.box, pixel_size_angstrom=args.pixel_size,
                                  snr=args.snr, shift_sigma_angstrom=args.shift_sigma, seed=args.seed)
        simulate(volume, voxel, config, folder, progress=False)
        table = read_star(os.path.join(folder, "particles.star"))
        reference, _ = read_mrc(os.path.join(folder, "reference.mrc"))
        dataset = ParticleDataset(table)
        start = time.process_time()
        angles, origins = poses_for(args.poses, table, dataset, args.seed)
        line["pose_search_cpu_seconds"] = round(time.process_time() - start, 1)
        start = time.process_time()
        plain = reconstruct_half_maps(dataset, angles, origins, seed=args.seed)
        line.update(figures(plain, reference, "plain", time.process_time() - start))
        start = time.process_time()
        gold = gold_standard_half_maps(dataset, angles, origins, seed=args.seed)
        line.update(figures(gold, reference, "gold", time.process_time() - start))
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
