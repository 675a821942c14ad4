"""Ablation of the refined amortized phase (``--amortized-poses encoder`` vs ``refined``), one JSON line per run.

For each mode, ``cryoai abinit`` trains on a simulated set with the same budget; then are measured:

* the exported map against the truth (FSC 0.5 / 0.143, pixels) and the exported star's poses;
* the encoder's own poses on the training particles (``predict-poses --no-refine``);
* a held-out set of unseen particles from the same distribution: ``predict-poses --no-refine`` (encoder)
  and ``--refine`` (encoder + local refinement + global search against the trained map).

Rotation errors are medians in degrees after the best global alignment (both hands); shift errors are
medians in pixels. The raw lines are appended to ``--results``.

``--variant NAME --abinit-args "..."`` runs ``cryoai abinit`` with extra options and names the line, e.g. the
settings before the pose memory, the quarter turns and the wider mask
(``--no-search-keep-best --no-bootstrap-quarter-turns --mask-default-fraction 0.9``).

Examples:
    python benchmarks/ablation_refine.py --num-particles 1500 --epochs 8 --modes encoder
    python benchmarks/ablation_refine.py --num-particles 1500 --epochs 8 --modes refined
    python benchmarks/ablation_refine.py --num-particles 1500 --epochs 8 --shift-sigma 7 --tag offcentre
    python benchmarks/ablation_refine.py --map emd21457.mrc --tag emd21457 --modes refined --variant before \
        --abinit-args "--no-search-keep-best --no-bootstrap-quarter-turns --mask-default-fraction 0.9"
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cryoai_core.cli.evaluate import evaluate_map, evaluate_poses  # noqa: E402


def run(command: list) -> None:
    print("+", " ".join(shlex.quote(part) for part in command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def simulate(cli: list, outdir: str, args, count: int, seed: int) -> str:
    star = os.path.join(outdir, "particles.star")
    if not os.path.exists(star):
        command = cli + ["simulate", "-o", outdir, "-n", str(count), "--box", str(args.box), "--pixel-size",
                         str(args.pixel_size), "--shift-sigma", str(args.shift_sigma), "--snr", str(args.snr),
                         "--seed", str(seed), "--no-progress"]
        run(command + ([args.map] if args.map else []))
    return star


def pose_figures(predicted: str, truth: str, prefix: str) -> dict:
    report = evaluate_poses(predicted, truth)
    figures = {f"{prefix}_median_degrees": round(report["median_angle_degrees"], 2)}
    if report.get("median_shift_error_px") is not None:
        figures[f"{prefix}_median_shift_px"] = round(report["median_shift_error_px"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default="scratch/ablation_refine", help="work folder")
    parser.add_argument("--results", default=os.path.join(HERE, "results", "ablation_refine.jsonl"))
    parser.add_argument("--map", default=None, help="map to simulate from (default: the bundled 4AKE)")
    parser.add_argument("--tag", default="4ake", help="name of the case in the JSON lines")
    parser.add_argument("--num-particles", type=int, default=5000)
    parser.add_argument("--heldout", type=int, default=1000, help="unseen particles for predict-poses")
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--pixel-size", type=float, default=3.0)
    parser.add_argument("--shift-sigma", type=float, default=3.0, help="origin σ per axis, Å")
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=8.0,
                        help="training budget of each run, in passes (load-independent on a shared machine)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", default="encoder,refined")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default="defaults", help="name of the abinit settings in the JSON lines")
    parser.add_argument("--abinit-args", default="", help="extra options of cryoai abinit, one string")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "cryoai_core.cli"]
    case = f"{args.tag}_n{args.num_particles}_L{args.box}_snr{args.snr}_shift{args.shift_sigma}_seed{args.seed}"
    train = simulate(cli, os.path.join(args.outdir, f"data_{case}"), args, args.num_particles, args.seed)
    heldout = simulate(cli, os.path.join(args.outdir, f"heldout_{case}"), args, args.heldout, args.seed + 1000)
    reference = os.path.join(os.path.dirname(train), "reference.mrc")
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    for mode in args.modes.split(","):
        run_dir = os.path.join(args.outdir, f"run_{case}_{mode}_{args.variant}_{int(time.time())}")
        start = time.time()
        run(cli + ["abinit", train, "-o", run_dir, "--epochs", str(args.epochs), "--seed", str(args.seed),
                   "--amortized-poses", mode, "--threads", str(args.threads), "--no-progress"]
            + shlex.split(args.abinit_args))
        wall = time.time() - start
        checkpoint = os.path.join(run_dir, "checkpoint.pt")
        report = evaluate_map(os.path.join(run_dir, "volume.mrc"), reference, run_dir)
        figures = {"benchmark": "ablation_refine", "case": args.tag, "amortized_poses": mode,
                   "variant": args.variant, "abinit_args": args.abinit_args,
                   "num_particles": args.num_particles, "box": args.box, "snr": args.snr,
                   "shift_sigma_angstrom": args.shift_sigma, "seed": args.seed, "budget_epochs": args.epochs,
                   "wall_s_abinit_incl_export": round(wall, 1),
                   "fsc05_px": report["resolution"]["0.5"]["pixels"],
                   "fsc0143_px": report["resolution"]["0.143"]["pixels"]}
        learner = torch.load(checkpoint, map_location="cpu", weights_only=False)["learner"]
        figures.update(steps=learner["steps"], final_phase=learner["phase"],
                       final_agreement_degrees=round(learner["agreement_degrees"], 2))
        figures.update(pose_figures(os.path.join(run_dir, "particles.star"), train, "star"))
        for name, star, flag in (("train_encoder", train, "--no-refine"), ("heldout_encoder", heldout, "--no-refine"),
                                 ("heldout_refined", heldout, "--refine")):
            output = os.path.join(run_dir, f"{name}.star")
            run(cli + ["predict-poses", "--checkpoint", checkpoint, star, "-o", output, flag, "--no-progress"])
            figures.update(pose_figures(output, star, name))
        from cryoai_core.io.star import read_star
        from cryoai_core.train.score import SCORE_COLUMN
        scores = np.asarray(read_star(os.path.join(run_dir, "particles.star")).extra_columns[SCORE_COLUMN], float)
        figures.update(score_median=round(float(np.median(scores)), 2), run_dir=run_dir)
        line = json.dumps(figures)
        print(line, flush=True)
        with open(args.results, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
