"""Speed and accuracy of what ``cryoai abinit`` does after training, on a trained run and particles with known
poses: prints one JSON line.

Stages, each timed in the process's CPU seconds (user + system; with ``--threads 1`` the rate one idle core
would have) and scored against the true poses (:func:`cryoai_core.evaluate.poses.pose_errors`: one global
rotation, both hands, aligns the predictions to the truth):

* ``predict``: the encoder's poses and the per-particle fit terms (``cryoai predict-poses --no-refine``);
* ``refine``: the same, refined against the trained map (``--refine``, the export of a refined run);
* ``gold``: the gold-standard half maps from the refined poses (:mod:`cryoai_core.gold_standard`), with the
  resolution they claim and the error of the poses refined apart.

Example (a 64 px run on simulated particles, e.g. ``cryoai simulate -n 3000 --box 64 --snr 0.1``):
    nice python benchmarks/export_speed.py --checkpoint run/checkpoint.pt --particles sim/particles.star \\
        --limit 1000 --threads 1
"""
import argparse
import json
import time

import numpy as np
import torch

from cryoai_core.evaluate.poses import pose_errors
from cryoai_core.gold_standard import gold_standard_half_maps
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.readers import read_particles
from cryoai_core.reconstruct import halves_of
from cryoai_core.rotations import euler_to_matrix
from cryoai_core.train.checkpoint import config_from_checkpoint, read_checkpoint, restore_learner
from cryoai_core.train.export import predict_and_score
from cryoai_core.train.learner import CryoAILearner
from throughput import _retain_freed_memory, code_version

STAGES = ("predict", "refine", "gold")


def _errors(euler_degrees: np.ndarray, origins_angstrom: np.ndarray, truth, pixel: float) -> dict:
    report = pose_errors(euler_to_matrix(euler_degrees).numpy(), euler_to_matrix(truth.euler_angles_degrees).numpy(),
                         origins_angstrom / pixel, truth.origins_angstrom / pixel)
    return {"median_degrees": round(float(report["median_angle_degrees"]), 2),
            "within_20_degrees": round(float(report["fraction_within_20_degrees"]), 4),
            "median_shift_error_px": round(float(report["median_shift_error_px"]), 3)}


def _predict(learner, dataset, std: float, refine: bool) -> tuple:
    with predict_and_score(learner, dataset, std, progress_bar=False, refine=refine) as poses:
        chunks = list(poses.chunks())
    return np.concatenate([c[1] for c in chunks]), np.concatenate([c[2] for c in chunks])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--particles", required=True, help="star file of the particles with their true poses")
    parser.add_argument("--limit", type=int, default=None, help="the first N particles only")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default=None)
    args = parser.parse_args()
    _retain_freed_memory()
    torch.set_num_threads(args.threads)
    state = read_checkpoint(args.checkpoint)
    config = config_from_checkpoint(state, device="cpu")
    learner = CryoAILearner(config)
    restore_learner(learner, state, with_optimizers=False)
    std = state["progress"]["normalization"][1]
    truth = read_particles(args.particles)
    if args.limit:
        truth = truth.subset(np.arange(min(args.limit, len(truth))))
    dataset = ParticleDataset(truth, box=config.box, invert_contrast=config.invert_contrast)
    figures = {"benchmark": "export_speed", "code": code_version(), "box": config.box, "particles": len(truth),
               "threads": torch.get_num_threads()}
    if args.label:
        figures["label"] = args.label
    refined = None
    for stage in args.stages:
        cpu = time.process_time()
        if stage == "gold":
            if refined is None:
                refined = _predict(learner, dataset, std, True)
            result = gold_standard_half_maps(dataset, refined[0], refined[1], seed=config.seed,
                                             config=config.half_maps, search_config=config.search,
                                             halves=halves_of(truth, config.seed))
            euler, origins = result.euler_angles_degrees, result.origins_angstrom
            figures["gold_resolution_px"] = round(float(result.resolution_pixels), 3)
        else:
            euler, origins = _predict(learner, dataset, std, stage == "refine")
            if stage == "refine":
                refined = (euler, origins)
        seconds = time.process_time() - cpu
        figures[f"images_per_cpu_s_{stage}"] = round(len(truth) / seconds, 1)
        figures.update({f"{stage}_{key}": value for key, value in
                        _errors(euler, origins, truth, truth.pixel_size_angstrom).items()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
