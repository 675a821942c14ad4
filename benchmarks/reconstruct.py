"""Reconstruction benchmark: simulate from the 4AKE map, run `cryoai abinit` with a time budget, and
score map and poses against the ground truth. Prints one JSON line of figures.

The map is the package's bundled ``cryoai_core/data/4ake_L64_px1.5.mrc`` (PDB 4AKE, 64³, 1.5 Å).
Targets of the project (2-core CPU, defaults a user gets):

* noise-free, CTF, shifts σ 3 Å, 32 px of 3 Å, 20 000 particles, 30 min:
  FSC=0.5 ≤ 2.5 px and median squared Frobenius rotation error ≤ 0.01;
* SNR 0.1, otherwise the same, 45 min: FSC=0.5 ≤ 3.5 px.

Examples:
    python benchmarks/reconstruct.py --minutes 30
    python benchmarks/reconstruct.py --minutes 45 --snr 0.1
    python benchmarks/reconstruct.py --minutes 30 --extra=--no-symmetric-loss
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time


def run(command: list) -> None:
    print("+", " ".join(shlex.quote(part) for part in command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default="scratch/benchmark", help="work folder")
    parser.add_argument("--num-particles", type=int, default=20000)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=3.0)
    parser.add_argument("--shift-sigma", type=float, default=3.0)
    parser.add_argument("--snr", type=float, default=None, help="variance SNR (default noise-free)")
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="extra arguments for cryoai abinit (one string)")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "cryoai_core.cli"]
    tag = f"n{args.num_particles}_L{args.box}_snr{args.snr}"
    data = os.path.join(args.outdir, f"data_{tag}_seed{args.seed}")
    run_dir = os.path.join(args.outdir, f"run_{tag}_{int(time.time())}")
    if not os.path.exists(os.path.join(data, "particles.star")):
        command = cli + ["simulate", "-o", data, "-n", str(args.num_particles), "--box", str(args.box),
                         "--pixel-size", str(args.pixel_size), "--shift-sigma", str(args.shift_sigma),
                         "--seed", str(args.seed), "--no-progress"]
        if args.snr is not None:
            command += ["--snr", str(args.snr)]
        run(command)
    start = time.time()
    run(cli + ["abinit", os.path.join(data, "particles.star"), "-o", run_dir, "--max-minutes", str(args.minutes),
               "--seed", str(args.seed), "--no-progress"] + shlex.split(args.extra))
    wall = time.time() - start
    report_path = os.path.join(run_dir, "evaluation.json")
    run(cli + ["evaluate", "--map", os.path.join(run_dir, "volume.mrc"),
               "--reference", os.path.join(data, "reference.mrc"), "--poses", os.path.join(run_dir, "particles.star"),
               "--true-poses", os.path.join(data, "particles.star"), "-o", run_dir, "--json", report_path])
    with open(report_path) as handle:
        report = json.load(handle)
    with open(os.path.join(run_dir, "metrics.csv")) as handle:
        rows = handle.read().strip().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    metrics = dict(zip(header, last))
    figures = {
        "benchmark": "reconstruct", "num_particles": args.num_particles, "box": args.box,
        "pixel_size_angstrom": args.pixel_size, "snr": args.snr, "budget_minutes": args.minutes,
        "extra_args": args.extra, "wall_s_abinit": round(wall, 1), "steps": int(metrics["step"]),
        "epochs_started": int(metrics["epoch"]) + 1, "final_phase": metrics["phase"],
        "images_per_s_last": float(metrics["images_per_s"]),
        **summarize(report), "run_dir": run_dir,
    }
    print(json.dumps(figures))


def summarize(report: dict) -> dict:
    """The headline figures of a `cryoai evaluate --json` report."""
    map_report, poses = report["map"], report["poses"]
    return {
        "fsc05_px": map_report["resolution"]["0.5"]["pixels"],
        "fsc0143_px": map_report["resolution"]["0.143"]["pixels"],
        "mirrored": map_report.get("alignment", {}).get("mirrored"),
        "median_sq_frobenius": poses["median_squared_frobenius"],
        "median_rotation_error_degrees": poses["median_angle_degrees"],
        "translation_mse_px2": poses.get("shift_mse_px2"),
    }


if __name__ == "__main__":
    main()
