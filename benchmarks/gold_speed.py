"""CPU rate of the gold-standard half-map stage (:func:`cryoai_core.gold_standard.gold_standard_half_maps`) on
simulated particles whose poses are known, without a trained model: prints one JSON line.

The stage starts from the true poses turned by ``--turn-degrees`` about random axes (as an export would hand
it poses near the truth), refines them apart per half and backprojects the half maps. Reported: images per
process CPU second (user + system; with one thread, the rate of one idle core), the CPU seconds of the
refinement and of the reconstructions, the resolution the half maps claim and the error of the poses refined
apart.

Example (64 px, e.g. ``cryoai simulate -o sim -n 3000 --box 64 --snr 0.1 --shift-sigma 3 --seed 7``):
    nice python benchmarks/gold_speed.py sim/particles.star --limit 1024
"""
import argparse
import json
import time

import numpy as np
import roma
import torch

import cryoai_core.gold_standard as gold_standard
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.readers import read_particles
from cryoai_core.rotations import euler_to_matrix, matrix_to_euler
from throughput import _retain_freed_memory, code_version


def _timed(name: str, function, timers: dict):
    def wrapper(*args, **kwargs):
        start = time.process_time()
        result = function(*args, **kwargs)
        timers[name] += time.process_time() - start
        return result
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("particles", help="particles.star with the true poses")
    parser.add_argument("--limit", type=int, default=1024, help="the first particles used")
    parser.add_argument("--turn-degrees", type=float, default=3.0, help="the start poses' error")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default=None)
    args = parser.parse_args()
    _retain_freed_memory()
    torch.set_num_threads(args.threads)
    truth = read_particles(args.particles).subset(np.arange(args.limit))
    generator = torch.Generator().manual_seed(3)
    true_rotations = euler_to_matrix(truth.euler_angles_degrees)
    axes = torch.nn.functional.normalize(torch.randn(args.limit, 3, generator=generator, dtype=torch.float64), dim=-1)
    start_euler = matrix_to_euler(true_rotations @ roma.rotvec_to_rotmat(axes * np.radians(args.turn_degrees)))
    timers = {"refine": 0.0, "reconstruct": 0.0}
    gold_standard._HalfRefiner.run = _timed("refine", gold_standard._HalfRefiner.run, timers)
    gold_standard.reconstruct_halves = _timed("reconstruct", gold_standard.reconstruct_halves, timers)
    start = time.process_time()
    result = gold_standard.gold_standard_half_maps(ParticleDataset(truth), start_euler.numpy(),
                                                   truth.origins_angstrom, seed=0)
    total = time.process_time() - start
    errors = torch.rad2deg(roma.rotmat_geodesic_distance(euler_to_matrix(result.euler_angles_degrees),
                                                         true_rotations))
    figures = {"benchmark": "gold_speed", "code": code_version(), "particles": args.limit, "threads": args.threads,
               "images_per_cpu_s_gold": round(args.limit / total, 1), "cpu_s": round(total, 1),
               "refine_cpu_s": round(timers["refine"], 1), "reconstruct_cpu_s": round(timers["reconstruct"], 1),
               "resolution_px": round(float(result.resolution_pixels), 3),
               "median_degrees": round(errors.median().item(), 2),
               "within_5_degrees": round((errors < 5).double().mean().item(), 4)}
    if args.label:
        figures["label"] = args.label
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
