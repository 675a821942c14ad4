"""Training throughput of both phases at the full loss radius (images/s) and peak memory. Prints one JSON line.

Random images stand in for particles (the cost of a step does not depend on their content). On CUDA
the peak is ``torch.cuda.max_memory_allocated``; on CPU the process's peak resident set size.

Examples:
    python benchmarks/throughput.py --boxes 32 64
    python benchmarks/throughput.py --device cuda --boxes 64 128 256 --batch-size 256
"""
import argparse
import json
import resource
import time

import torch

from cryoai_core.train.config import build
from cryoai_core.train.learner import CryoAILearner


def measure(box: int, phase: str, batch_size: int, steps: int, device: str) -> float:
    config = build(box=box, pixel_size_angstrom=3.0, input_box=box, input_pixel_size_angstrom=3.0,
                   epochs=1, batch_size=batch_size, device=device)
    learner = CryoAILearner(config).to(device)
    learner.phase = phase
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, box, box, generator=generator).to(device)
    ctf = torch.tensor([[15000.0, 14500.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0]]).repeat(batch_size, 1).to(device)
    progress = config.schedule.marching_fraction
    learner.step(images, ctf, progress, generator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        learner.phase = phase
        learner.step(images, ctf, progress, generator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = {"benchmark": "throughput", "device": args.device, "batch_size": args.batch_size,
               "threads": torch.get_num_threads()}
    for box in args.boxes:
        for phase in ("bootstrap", "amortized"):
            figures[f"images_per_s_{phase}_L{box}"] = round(measure(box, phase, args.batch_size, args.steps,
                                                                    args.device), 1)
    if args.device.startswith("cuda"):
        figures["peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    else:
        figures["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
