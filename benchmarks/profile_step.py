"""CPU profile of one training step or one prediction batch at the full loss radius. Prints the step's user and
system CPU seconds and minor page faults, then torch.profiler's table of operators by self time.

Random images stand in for particles, as in ``throughput.py``; one warm-up call runs before the timed one.
On a shared machine the profiler's times are wall-clock and include waiting for a core; the CPU seconds on
the first line do not.

Example:
    nice python benchmarks/profile_step.py --box 64 --phase amortized
"""
import argparse
import os
import resource
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from throughput import PHASES, _batch, _learner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--phase", choices=PHASES, default="amortized")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 for training, 256 to predict")
    parser.add_argument("--rows", type=int, default=25, help="operators shown")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    try:
        from cryoai_core.allocator import retain_freed_memory
        retain_freed_memory()
    except ImportError:
        pass
    torch.set_num_threads(args.threads)
    predicting = args.phase.startswith("predict")
    batch_size = args.batch_size or (256 if predicting else 128)
    learner = _learner(args.box, batch_size, "cpu", "refined" if args.phase in ("refined", "predict_refine")
                       else "encoder", {})
    images, ctf = _batch(args.box, batch_size, "cpu")
    generator = torch.Generator().manual_seed(0)

    def run():
        if predicting:
            with torch.no_grad():
                rotations, origins = learner.predict_poses(images, ctf)
                if args.phase == "predict_refine":
                    rotations, origins = learner.refine_poses(images, ctf, rotations, origins, generator)
                learner.fit_terms(images, ctf, rotations, origins)
        else:
            learner.phase = "bootstrap" if args.phase == "bootstrap" else "amortized"
            learner.step(images, ctf, learner.config.schedule.marching_fraction, generator)

    run()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{args.phase} L{args.box} batch {batch_size}: wall {time.perf_counter() - start:.2f} s, "
          f"user {after.ru_utime - before.ru_utime:.2f} s, system {after.ru_stime - before.ru_stime:.2f} s, "
          f"minor page faults {after.ru_minflt - before.ru_minflt}")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                        max_name_column_width=40))


if __name__ == "__main__":
    main()
