"""Training and pose-prediction throughput at the full loss radius (images/s) and peak memory. Prints one JSON line.

Phases measured per box:

* ``bootstrap``: global pose search + one decoder and one encoder step (``images_per_s_bootstrap_L<box>``);
* ``amortized``: the paper's amortized step (``amortized_poses="encoder"``, symmetrized loss);
* ``refined``: the default amortized step (``amortized_poses="refined"``: local refinement of the encoder's
  pose, the global search every ``search.global_every`` steps);
* ``predict``: what ``cryoai predict-poses --no-refine`` does per batch (encoder on the image and its 180°
  rotation, the better judged by the map, and the per-particle score);
* ``predict_refine``: ``predict-poses --refine`` (the default after a refined run): the same plus the local
  refinement and the global search against the cached map.

Training steps are timed over ``--steps`` steps after ``--warmup-steps`` untimed ones, so that with the default
(20, a multiple of ``search.grid_refresh_steps`` = 10 and ``search.global_every`` = 4) every rebuild of the cached
map and every global search of the refined phase is counted at its real rate (10 steps before 2026-12-04: one
global search in five was missed). Three warm-up steps (one before 2026-12-04: the lines without
``warmup_steps``) let the heap settle under the malloc settings (``cryoai_core/allocator.py``): a process's first
steps still fault in the pages of blocks it has not freed yet, a cost paid once per run, not per step. Random
images stand in for particles (the cost of a step does not depend on their content). On CUDA the peak is
``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set size.

Wall-clock figures depend on what else runs on the machine; ``images_per_cpu_s_*`` divide by the process's
CPU time (user + system, all threads) instead, which on a shared machine is the steadier figure to compare
(with ``--threads 1`` it is the single-core rate the process would have on an idle core).

Examples:
    python benchmarks/throughput.py --boxes 32 64 --threads 1
    python benchmarks/throughput.py --device cuda --boxes 64 128 256 --batch-size 256
"""
import argparse
import json
import os
import resource
import subprocess
import time

import torch

from cryoai_core.train.config import build
from cryoai_core.train.learner import CryoAILearner

PHASES = ("bootstrap", "amortized", "refined", "predict", "predict_refine")
CTF_ROW = [15000.0, 14500.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0]


def _learner(box: int, batch_size: int, device: str, amortized_poses: str, settings: dict) -> CryoAILearner:
    config = build(**{**dict(box=box, pixel_size_angstrom=3.0, input_box=box, input_pixel_size_angstrom=3.0, epochs=1,
                             batch_size=batch_size, device=device, amortized_poses=amortized_poses), **settings})
    return CryoAILearner(config).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _batch(box: int, batch_size: int, device: str) -> tuple:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, box, box, generator=generator).to(device)
    ctf = torch.tensor([CTF_ROW]).repeat(batch_size, 1).to(device)
    return images, ctf


def measure_training(box: int, phase: str, batch_size: int, steps: int, device: str, settings: dict,
                     warmup_steps: int) -> tuple:
    """``(images per wall-clock second, images per process CPU second)`` of training steps of ``phase``."""
    learner = _learner(box, batch_size, device, "refined" if phase == "refined" else "encoder", settings)
    images, ctf = _batch(box, batch_size, device)
    generator = torch.Generator().manual_seed(0)
    progress = learner.config.schedule.marching_fraction
    mode = "bootstrap" if phase == "bootstrap" else "amortized"
    for _ in range(warmup_steps):
        learner.phase = mode
        learner.step(images, ctf, progress, generator)
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        learner.phase = mode
        learner.step(images, ctf, progress, generator)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start), steps * batch_size / (time.process_time() - cpu_start)


@torch.no_grad()
def measure_prediction(box: int, refine: bool, batch_size: int, batches: int, device: str,
                       settings: dict) -> tuple:
    """``(images per wall-clock second, images per process CPU second)`` of pose prediction."""
    learner = _learner(box, batch_size, device, "refined", settings)
    images, ctf = _batch(box, batch_size, device)
    generator = torch.Generator().manual_seed(0)

    def predict():
        rotations, origins = learner.predict_poses(images, ctf)
        if refine:
            rotations, origins = learner.refine_poses(images, ctf, rotations, origins, generator)
        learner.fit_terms(images, ctf, rotations, origins)

    learner.forget_cached_map()
    predict()
    _sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        predict()
    _sync(device)
    return batches * batch_size / (time.perf_counter() - start), batches * batch_size / (time.process_time() - cpu_start)


def _retain_freed_memory() -> bool:
    """The ``cryoai`` command line's malloc settings (``cryoai_core/allocator.py``), where the code has them."""
    try:
        from cryoai_core.allocator import retain_freed_memory
    except ImportError:
        return False
    return retain_freed_memory()


def _encoder_inference_dtype(device: str) -> str:
    """The encoder's type in prediction (``cryoai_core.cuda.encoder_dtype``; code from before that rule: bf16 on
    CUDA only)."""
    try:
        from cryoai_core.cuda import encoder_dtype
    except ImportError:
        return "bfloat16" if device.startswith("cuda") else "float32"
    return str(encoder_dtype(torch.device(device), inference=True)).removeprefix("torch.")


def code_version() -> str:
    """The commit of the imported ``cryoai_core`` (``+dirty`` with local changes), or ``unknown``."""
    import cryoai_core
    folder = os.path.dirname(os.path.dirname(os.path.abspath(cryoai_core.__file__)))
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "cryoai_core"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--batch-size", type=int, default=128, help="training images per step")
    parser.add_argument("--predict-batch-size", type=int, default=256,
                        help="images per prediction batch (predict-poses' default)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after the warm-up steps)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--predict-batches", type=int, default=4, help="timed prediction batches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label", default=None, help="a note stored in the JSON line (e.g. which code ran)")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="training settings by their build() names, e.g. search_refine_finalists=1")
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    retained = _retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = {"benchmark": "throughput", "code": code_version(), "device": args.device,
               "batch_size": args.batch_size, "predict_batch_size": args.predict_batch_size, "steps": args.steps,
               "warmup_steps": args.warmup_steps,
               "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
               "malloc_retains_freed_memory": retained,
               "encoder_inference_dtype": _encoder_inference_dtype(args.device)}
    if args.label:
        figures["label"] = args.label
    if settings:
        figures["settings"] = settings
    for box in args.boxes:
        for phase in args.phases:
            if phase.startswith("predict"):
                rate = measure_prediction(box, phase == "predict_refine", args.predict_batch_size,
                                          args.predict_batches, args.device, settings)
            else:
                rate = measure_training(box, phase, args.batch_size, args.steps, args.device, settings,
                                        args.warmup_steps)
            figures[f"images_per_s_{phase}_L{box}"] = round(rate[0], 1)
            figures[f"images_per_cpu_s_{phase}_L{box}"] = round(rate[1], 1)
    figures["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    if args.device.startswith("cuda"):
        figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    else:
        figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
