"""Simulate particles from the bundled map, reconstruct them ab initio, and score the result.

Runs on a CPU in a few minutes: `cryoai simulate` (adenylate kinase, PDB 4AKE, 32 px of 3 Å, CTF,
shifts), `cryoai abinit` with the default settings and a time budget, then `cryoai evaluate` of the
map (FSC after alignment, both hands) and of the poses against the simulator's ground truth.

Example:
    cryoai demo -o demo_output --minutes 5
"""
import argparse
import json
import os

from cryoai_core.cli import CommandError
from cryoai_core.io.atomic import atomic_open


def add_args(parser):
    parser.add_argument("-o", "--outdir", default="demo_output", help="output folder (default demo_output)")
    parser.add_argument("-n", "--num-particles", type=int, default=10000, help="particles (default 10000)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget, minutes (default 5)")
    parser.add_argument("--snr", type=float, default=None, help="add noise at this SNR (default: noise-free)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args):
    from cryoai_core.cli import abinit, simulate
    from cryoai_core.cli.evaluate import evaluate_map, evaluate_poses

    if args.num_particles < 100:
        raise CommandError(f"the demo needs at least 100 particles, got {args.num_particles}")
    data = os.path.join(args.outdir, "simulated")
    run = os.path.join(args.outdir, "abinit")
    if os.path.exists(os.path.join(run, "checkpoint.pt")):
        raise CommandError(f"{args.outdir} holds a previous demo; remove it or choose another --outdir")
    simulate_args = argparse.Namespace(
        map=None, outdir=data, num_particles=args.num_particles, box=32, pixel_size=3.0, shift_sigma=3.0,
        no_ctf=False, snr=args.snr, snr_db=None, defocus=15000.0, defocus_log_sigma=0.2, astigmatism=300.0,
        voltage=300.0, cs=2.7, amplitude_contrast=0.1, bfactor=0.0, seed=args.seed, no_progress=args.no_progress)
    print(f"[1/3] simulating {args.num_particles} particles in {data}")
    simulate.main(simulate_args)
    parser = argparse.ArgumentParser()
    abinit.add_args(parser)
    abinit_argv = [os.path.join(data, "particles.star"), "-o", run, "--max-minutes", str(args.minutes),
                   "--seed", str(args.seed)] + (["--no-progress"] if args.no_progress else [])
    print(f"[2/3] cryoAI ab initio for {args.minutes:g} min in {run}")
    code = abinit.main(parser.parse_args(abinit_argv))
    if code:
        return code
    print("[3/3] evaluating against the ground truth")
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
