"""Memory, start-up time and throughput against the number of particles (10³ to 10⁶ rows). Prints one JSON line.

Simulates one real stack (``--stack-images`` particles), writes star files of N rows that point at it
again and again, and runs ``cryoai abinit`` (a short time budget) and ``cryoai predict-poses`` on each,
every command in its own process so that its peak resident set size (RSS) is its own. Per N it
reports:

* ``abinit_peak_rss_mib`` / ``predict_peak_rss_mib``: peak RSS of the whole command;
* ``startup_s``: from the command's start to its first log line in ``run.log`` (star parse, stack and
  image checks, normalisation: everything before the first training step);
* ``train_images_per_s``: images trained per second of training (``images_seen / elapsed_s`` of the
  final checkpoint);
* ``export_images_per_s``: N over the rest of ``abinit``'s wall time (set-up after the parse, the
  final pose prediction and scoring, the star and the pictures);
* ``predict_images_per_s``: N over the wall time of ``predict-poses`` (parse included);
* ``abinit_bytes_per_particle`` / ``predict_bytes_per_particle``: the growth of the peak RSS from the
  smallest to the largest N, per added particle;
* with ``--workers-check``, at the largest N: images/s read from the memory-mapped stack alone and the
  training images/s with ``--num-workers 2``.

Example (the figures in README.rst, "Large data sets and clusters"; raw lines in results/scale.jsonl):
    nice python benchmarks/scale.py --sizes 1000 100000 1000000 --minutes 0.5 --workers-check
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS_PER_WRITE = 50_000
PARTICLES_PER_MICROGRAPH = 100


def run_child(arguments: list, log: str) -> dict:
    """Run ``cryoai ARGUMENTS`` in a fresh process; return its peak RSS (MiB), wall time and start time."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    start = time.time()
    with open(log, "w") as handle:
        result = subprocess.run(["/usr/bin/time", "-f", "PEAK_RSS_KIB %M", sys.executable, "-m", "cryoai_core.cli",
                                 *arguments], env=env, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.time() - start
    text = open(log).read()
    if result.returncode != 0:
        raise RuntimeError(f"cryoai {' '.join(arguments)} failed ({result.returncode}):\n{text[-2000:]}")
    peak = [line for line in text.splitlines() if line.startswith("PEAK_RSS_KIB")][-1]
    return {"peak_rss_mib": round(int(peak.split()[1]) / 1024, 1), "wall_s": wall, "start": start}


def first_log_time(path: str) -> float:
    """Wall-clock time (epoch seconds) of the first line of a ``run.log``."""
    with open(path) as handle:
        stamp = " ".join(handle.readline().split()[:2])
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def write_repeated_star(template: str, rows: int, path: str) -> None:
    """A RELION 3.1 star of ``rows`` particles cycling through the particle rows of ``template``.

    Each row also gets the columns of a real extraction job, which the exported star must keep:
    ``rlnMicrographName`` (a new micrograph every :data:`PARTICLES_PER_MICROGRAPH` rows, as in real data
    sets, where they are distinct text) and ``rlnCoordinateX/Y``.
    """
    with open(template) as handle:
        lines = handle.read().splitlines()
    start = lines.index("data_particles")
    header_end = start + 1
    while not lines[header_end].startswith("_") or lines[header_end + 1].startswith("_"):
        header_end += 1
    names = [line.split()[0] for line in lines[start:header_end + 1] if line.startswith("_")]
    column = names.index("_rlnImageName")
    stack_folder = os.path.dirname(os.path.abspath(template))
    body = []
    for line in lines[header_end + 1:]:
        fields = line.split()
        if fields:
            # Image names become absolute, so that the star can live in any folder.
            index, stack = fields[column].split("@")
            fields[column] = f"{index}@{os.path.join(stack_folder, stack)}"
            body.append("\t".join(fields))
    added = [f"_{name} #{len(names) + number}" for number, name in
             enumerate(("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"), 1)]
    with open(path, "w") as handle:
        handle.write("\n".join(lines[:header_end + 1] + added) + "\n")
        for first in range(0, rows, ROWS_PER_WRITE):
            handle.write("".join(
                f"{body[row % len(body)]}\tMicrographs/job003/mic{row // PARTICLES_PER_MICROGRAPH:07d}.mrc"
                f"\t{(row * 37) % 3800 + 100}.000000\t{(row * 91) % 3800 + 100}.000000\n"
                for row in range(first, min(first + ROWS_PER_WRITE, rows))))


def read_throughput(star: str, box: int, seconds: float = 5.0, batch_size: int = 128) -> float:
    """Images/s read (and Fourier cropped) from the memory-mapped stacks, no training."""
    sys.path.insert(0, ROOT)
    from cryoai_core.io.dataset import ParticleDataset
    from cryoai_core.io.readers import read_particles

    dataset = ParticleDataset(read_particles(star), box=box)
    rng = np.random.default_rng(0)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dataset.__getitems__(np.sort(rng.choice(len(dataset), batch_size, replace=False)))
        count += batch_size
    return count / (time.perf_counter() - start)


def measure(star: str, rows: int, workdir: str, args, extra: tuple = ()) -> dict:
    import torch

    run = os.path.join(workdir, f"run_{rows}{'_'.join(extra)}")
    abinit = run_child(["abinit", star, "-o", run, "--box", str(args.box), "--max-minutes", str(args.minutes),
                        "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", "cpu",
                        "--amortized-poses", args.amortized_poses, "--no-progress", *extra],
                       os.path.join(workdir, f"abinit_{rows}.log"))
    progress = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)["progress"]
    startup = first_log_time(os.path.join(run, "run.log")) - abinit["start"]
    figures = {"abinit_peak_rss_mib": abinit["peak_rss_mib"], "startup_s": round(startup, 2),
               "train_images_per_s": round(progress["images_seen"] / progress["elapsed_s"], 1),
               "abinit_wall_s": round(abinit["wall_s"], 1),
               "export_images_per_s": round(rows / max(abinit["wall_s"] - startup - progress["elapsed_s"], 1e-3), 1)}
    if extra:
        return figures
    predict = run_child(["predict-poses", "--checkpoint", os.path.join(run, "checkpoint.pt"), star, "-o",
                         os.path.join(workdir, f"predicted_{rows}.star"), "--device", "cpu", "--no-progress"],
                        os.path.join(workdir, f"predict_{rows}.log"))
    figures.update(predict_peak_rss_mib=predict["peak_rss_mib"],
                   predict_images_per_s=round(rows / predict["wall_s"], 1))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    parser.add_argument("--stack-images", type=int, default=1000)
    parser.add_argument("--stack-box", type=int, default=32)
    parser.add_argument("--box", type=int, default=16, help="training box")
    parser.add_argument("--minutes", type=float, default=0.5, help="abinit time budget")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amortized-poses", choices=("encoder", "refined"), default="encoder",
                        help="abinit's amortized poses; 'encoder' (the cheapest) also makes the final pose "
                             "prediction and predict-poses skip the refinement against the map")
    parser.add_argument("--workers-check", action="store_true",
                        help="at the largest size, also read throughput and training with --num-workers 2")
    parser.add_argument("--workdir", default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="cryoai_scale_")
    os.makedirs(workdir, exist_ok=True)
    simulated = os.path.join(workdir, "stack")
    subprocess.run([sys.executable, "-m", "cryoai_core.cli", "simulate", "-o", simulated, "-n",
                    str(args.stack_images), "--box", str(args.stack_box), "--pixel-size", "3", "--seed", "1",
                    "--no-progress"], check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])))
    figures = {"benchmark": "scale", "stack_box": args.stack_box, "box": args.box, "minutes": args.minutes,
               "batch_size": args.batch_size, "threads": args.threads, "amortized_poses": args.amortized_poses}
    for rows in args.sizes:
        star = os.path.join(workdir, f"particles_{rows}.star")
        write_repeated_star(os.path.join(simulated, "particles.star"), rows, star)
        for name, value in measure(star, rows, workdir, args).items():
            figures[f"{name}_{rows}"] = value
    largest = max(args.sizes)
    smallest = min(args.sizes)
    figures["rss_ratio_abinit"] = round(figures[f"abinit_peak_rss_mib_{largest}"]
                                        / figures[f"abinit_peak_rss_mib_{smallest}"], 3)
    figures["rss_ratio_predict"] = round(figures[f"predict_peak_rss_mib_{largest}"]
                                         / figures[f"predict_peak_rss_mib_{smallest}"], 3)
    figures["train_speed_ratio"] = round(figures[f"train_images_per_s_{largest}"]
                                         / figures[f"train_images_per_s_{smallest}"], 3)
    for command in ("abinit", "predict"):
        extra_mib = figures[f"{command}_peak_rss_mib_{largest}"] - figures[f"{command}_peak_rss_mib_{smallest}"]
        figures[f"{command}_bytes_per_particle"] = round(extra_mib * 2 ** 20 / max(largest - smallest, 1), 1)
    if args.workers_check:
        star = os.path.join(workdir, f"particles_{largest}.star")
        figures["read_images_per_s"] = round(read_throughput(star, args.box), 1)
        workers = measure(star, largest, workdir, args, extra=("--num-workers", "2"))
        figures["train_images_per_s_2_workers"] = workers["train_images_per_s"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
