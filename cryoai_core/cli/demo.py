"""Simulate particles from the bundled map, reconstruct them ab initio, and score the result.

Runs on a CPU in a few minutes: `cryoai simulate` (adenylate kinase, PDB 4AKE, 32 px of 3 Å, CTF,
shifts), `cryoai abinit` with the default settings and a budget in epochs (the same result on every
machine; a busy machine only takes longer), then `cryoai evaluate` of the map (FSC after alignment,
both hands) and of the poses against the simulator's ground truth.

Example:
    cryoai demo -o demo_output --epochs 6
"""
import argparse
import json
import math
import os

from cryoai_core.cli import CommandError
from cryoai_core.cli.checks import check_number, check_writable_folder
from cryoai_core.errors import Interrupted
from cryoai_core.io.atomic import atomic_open

DEMO_EPOCHS = 6.0
"""Default training budget of the demo, in passes over its particles."""
DEMO_BOX = 32
DEMO_PIXEL_SIZE_ANGSTROM = 3.0
DEMO_SHIFT_SIGMA_ANGSTROM = 3.0
REFERENCE_IMAGES_PER_S = 200.0
"""Average training throughput of the demo on an idle 2-core CPU (batch 128, 32 px), a round figure between
the bootstrap's and the amortized phase's rates in benchmarks/README.md; used only for the printed estimate."""
REFERENCE_PREDICT_IMAGES_PER_S = 300.0
"""Throughput of the final pose prediction on the same CPU (estimate only)."""


def add_args(parser):
    parser.add_argument("-o", "--outdir", default="demo_output", help="output folder (default demo_output)")
    parser.add_argument("-n", "--num-particles", type=int, default=10000, help="particles (default 10000)")
    parser.add_argument("--epochs", type=float, default=DEMO_EPOCHS,
                        help=f"training budget, passes over the particles (default {DEMO_EPOCHS:g})")
    parser.add_argument("--minutes", type=float, default=None,
                        help="optional time limit of the training, minutes (the result then depends on the machine)")
    parser.add_argument("--snr", type=float, default=None, help="add noise at this SNR (default: noise-free)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def validate_demo(args) -> None:
    """Check the options and the output folder without writing anything."""
    if args.num_particles < 100:
        raise CommandError(f"the demo needs at least 100 particles, got {args.num_particles}")
    check_number("--epochs", args.epochs, 0)
    check_number("--minutes", args.minutes, 0)
    check_number("--snr", args.snr, 0)
    check_number("--threads", args.threads, 1, strict=False)
    if not 0 <= args.seed < 2 ** 31:
        raise CommandError(f"--seed must lie in [0, 2^31), got {args.seed}")
    check_writable_folder(args.outdir, "-o/--outdir")
    for name in ("simulated", "abinit", "evaluation", "evaluation.json"):
        if os.path.exists(os.path.join(args.outdir, name)):
            raise CommandError(f"{args.outdir} holds a previous demo ({name}); remove it or choose another --outdir")


def time_estimate_minutes(num_particles: int, epochs: float) -> float:
    """Minutes of training plus the final pose prediction on an idle 2-core CPU."""
    return (num_particles * epochs / REFERENCE_IMAGES_PER_S + num_particles / REFERENCE_PREDICT_IMAGES_PER_S) / 60


def _sub_args(module, argv: list):
    parser = argparse.ArgumentParser()
    module.add_args(parser)
    return parser.parse_args(argv)


def main(args):
    from cryoai_core.cli import abinit, simulate
    from cryoai_core.cli.evaluate import evaluate_map, evaluate_poses

    validate_demo(args)
    data = os.path.join(args.outdir, "simulated")
    run = os.path.join(args.outdir, "abinit")
    progress = ["--no-progress"] if args.no_progress else []
    simulate_argv = ["-o", data, "-n", str(args.num_particles), "--box", str(DEMO_BOX), "--pixel-size",
                     str(DEMO_PIXEL_SIZE_ANGSTROM), "--shift-sigma", str(DEMO_SHIFT_SIGMA_ANGSTROM),
                     "--seed", str(args.seed)] + (["--snr", repr(args.snr)] if args.snr else []) + progress
    abinit_argv = [os.path.join(data, "particles.star"), "-o", run, "--epochs", repr(args.epochs),
                   "--seed", str(args.seed)] + progress
    abinit_argv += ["--max-minutes", repr(args.minutes)] if args.minutes else []
    abinit_argv += ["--threads", str(args.threads)] if args.threads else []
    simulate_args, abinit_args = _sub_args(simulate, simulate_argv), _sub_args(abinit, abinit_argv)
    steps = args.epochs * math.ceil(args.num_particles / abinit_args.batch_size)
    print(f"cryoAI demo: {args.num_particles} particles, {args.epochs:g} epochs (about {steps:.0f} steps of "
          f"{abinit_args.batch_size} images); about {time_estimate_minutes(args.num_particles, args.epochs):.0f} min "
          "on an idle 2-core CPU, longer on a busy one (the progress lines give the ETA)", flush=True)
    print(f"[1/3] simulating {args.num_particles} particles in {data}", flush=True)
    simulate.main(simulate_args)
    print(f"[2/3] cryoAI ab initio for {args.epochs:g} epochs in {run}", flush=True)
    try:
        abinit.main(abinit_args)
    except Interrupted as error:
        raise Interrupted(f"{error}; the demo does not resume: run it again with a new --outdir") from None
    print("[3/3] evaluating against the ground truth", flush=True)
    report = {"map": evaluate_map(os.path.join(run, "volume.mrc"), os.path.join(data, "reference.mrc"),
                                  os.path.join(args.outdir, "evaluation")),
              "poses": evaluate_poses(os.path.join(run, "particles.star"), os.path.join(data, "particles.star"))}
    with atomic_open(os.path.join(args.outdir, "evaluation.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    fsc = report["map"]["resolution"]["0.5"]
    poses = report["poses"]
    print(f"\nFSC=0.5 vs ground truth: {fsc['pixels']:.2f} px ({fsc['angstrom']:.1f} Å); "
          f"median rotation error {poses['median_angle_degrees']:.1f}° "
          f"(squared Frobenius {poses['median_squared_frobenius']:.4f}; random poses give about 130°)")
    print(f"map:      {os.path.join(run, 'volume.mrc')}\nposes:    {os.path.join(run, 'particles.star')}\n"
          f"pictures: {run}/{{loss,poses,slices}}.png, {os.path.join(args.outdir, 'evaluation')}\n"
          f"figures:  {os.path.join(args.outdir, 'evaluation.json')}")
    return 0
