"""The bad-input and fault corpus of the ``cryoai`` command line (issue: reliability).

Every case runs the real command line (``main(argv)`` in process; the kill and signal cases in a
subprocess) and asserts: the exit code of its class, exactly one line on stderr without "Traceback"
naming the problem, and a file system left exactly as it was (every file's size and mtime, no new file).
Faults are injected deterministically through ``CRYOAI_TEST_FAULT`` (``cryoai_core/faults.py``).
"""
import csv
import dataclasses
import os
import signal
import subprocess
import sys

import mrcfile
import numpy as np
import pytest
import torch

from cryoai_core.cli import main
from cryoai_core.io.mrc import read_mrc, write_mrc
from cryoai_core.io.star import read_star, write_star

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny simulated set (40 particles, 16 px of 6 Å), a finished run on it, and a 3 Å set."""
    root = tmp_path_factory.mktemp("corpus")
    sim, sim3, run = str(root / "sim"), str(root / "sim3"), str(root / "run")
    assert main(["simulate", "-o", sim, "-n", "40", "--box", "16", "--pixel-size", "6", "--seed", "2",
                 "--no-progress"]) == 0
    assert main(["simulate", os.path.join(sim, "reference.mrc"), "-o", sim3, "-n", "20", "--box", "16",
                 "--pixel-size", "3", "--no-progress"]) == 0
    assert main(["abinit", os.path.join(sim, "particles.star"), "-o", run, "--epochs", "1", "--batch-size", "16",
                 "--threads", "1", "--no-progress"]) == 0
    return {"root": str(root), "sim": sim, "star": os.path.join(sim, "particles.star"),
            "stack": os.path.join(sim, "particles.mrcs"), "ref": os.path.join(sim, "reference.mrc"),
            "star3": os.path.join(sim3, "particles.star"), "run": run,
            "ckpt": os.path.join(run, "checkpoint.pt"), "volume": os.path.join(run, "volume.mrc"),
            "poses": os.path.join(run, "particles.star")}


def snapshot(*folders) -> dict:
    state = {}
    for folder in folders:
        for parent, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = os.path.join(parent, name)
                info = os.lstat(path)
                state[path] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return state


# ---- helpers that build bad inputs inside the case's work folder ----

def _text(name, content):
    def make(base, work):
        path = os.path.join(work, name)
        with open(path, "w" if isinstance(content, str) else "wb") as handle:
            handle.write(content)
        return path
    return make


def _map(name, array_fn, voxel=6.0):
    def make(base, work):
        path = os.path.join(work, name)
        write_mrc(path, array_fn(read_mrc(base["ref"])[0]), voxel)
        return path
    return make


def _with_nan(volume):
    volume = volume.copy()
    volume[3, 4, 5] = np.nan
    return volume


def _with_inf(volume):
    volume = volume.copy()
    volume[0, 0, 0] = np.inf
    return volume


def _star_ctf(column, value, count=None):
    """A copy of the simulated star with CTF column ``column`` set to ``value`` (for the first ``count``)."""
    def make(base, work):
        table = read_star(base["star"])
        ctf = np.array(table.ctf)
        ctf[:count, column] = value
        path = os.path.join(work, "bad_ctf.star")
        write_star(path, dataclasses.replace(table, ctf=ctf))
        return path
    return make


def _stack_copy(modify, name="bad"):
    """A copy of the simulated set whose stack is changed by ``modify(data) -> data`` (or bytes edit)."""
    def make(base, work):
        folder = os.path.join(work, name)
        os.makedirs(folder)
        data, _ = read_mrc(base["stack"])
        with mrcfile.new(os.path.join(folder, "particles.mrcs")) as handle:
            handle.set_data(modify(data.copy()).astype(np.float32))
            handle.voxel_size = 6.0
        table = read_star(base["star"])
        path = os.path.join(folder, "particles.star")
        write_star(path, dataclasses.replace(table, stack_files=(os.path.join(folder, "particles.mrcs"),)))
        return path
    return make


def _truncated_stack(base, work):
    path = _stack_copy(lambda data: data, "trunc")(base, work)
    stack = os.path.join(os.path.dirname(path), "particles.mrcs")
    with open(stack, "r+b") as handle:
        handle.truncate(os.path.getsize(stack) - 3000)
    return path


def _garbage_stack(base, work):
    path = _stack_copy(lambda data: data, "garbage")(base, work)
    with open(os.path.join(os.path.dirname(path), "particles.mrcs"), "wb") as handle:
        handle.write(os.urandom(5000))
    return path


def _missing_stack(base, work):
    path = _stack_copy(lambda data: data, "nostack")(base, work)
    os.remove(os.path.join(os.path.dirname(path), "particles.mrcs"))
    return path


def _few_particles(base, work):
    table = read_star(base["star"])
    path = os.path.join(work, "few.star")
    write_star(path, table.subset(np.arange(5)))
    return path


def _no_ctf(base, work):
    table = read_star(base["star"])
    path = os.path.join(work, "noctf.star")
    write_star(path, dataclasses.replace(table, ctf=None))
    return path


def _no_poses(base, work):
    table = read_star(base["star"])
    path = os.path.join(work, "noposes.star")
    write_star(path, dataclasses.replace(table, euler_angles_degrees=None, origins_angstrom=None))
    return path


def _short_poses(base, work):
    path = os.path.join(work, "short.star")
    write_star(path, read_star(base["poses"]).subset(np.arange(10)))
    return path


def _checkpoint(transform):
    def make(base, work):
        path = os.path.join(work, "ckpt.pt")
        torch.save(transform(torch.load(base["ckpt"], weights_only=False)), path)
        return path
    return make


def _without(key):
    def transform(state):
        del state[key]
        return state
    return transform


def _folder_with(names):
    def make(base, work):
        path = os.path.join(work, "old")
        os.makedirs(path)
        for name in names:
            with open(os.path.join(path, name), "w") as handle:
                handle.write("step,loss\n1,2\n")
        return path
    return make


def _file(base, work):
    return _text("a_file", "not a folder")(base, work)


def _copy_run(base, work):
    import shutil
    path = os.path.join(work, "run")
    shutil.copytree(base["run"], path)
    return path


def _unchanged(base, work):
    return None


@dataclasses.dataclass
class Case:
    id: str
    argv: object
    """``argv(base, made) -> list``; ``made`` is what ``setup`` returned."""
    code: int
    text: str
    setup: object = _unchanged
    fault: str | None = None
    readonly: bool = False


def A(*extra, star=None):
    """abinit on the simulated set into work/out."""
    return lambda b, m, w: ["abinit", star or b["star"], "-o", os.path.join(w, "out"), "--epochs", "1",
                            "--no-progress"] + list(extra)


def S(*extra):
    """simulate from the small reference map (16³ of 6 Å: fast) into work/sim."""
    return lambda b, m, w: ["simulate", b["ref"], "-o", os.path.join(w, "sim"), "-n", "10", "--no-progress"] + list(extra)


def P(*extra, particles=None):
    return lambda b, m, w: ["predict-poses", particles or b["star"], "--checkpoint", b["ckpt"], "-o",
                            os.path.join(w, "p.star"), "--no-progress"] + list(extra)


CASES = [
    # -- abinit: options out of range (all fail before anything is written) --
    Case("abinit-max-minutes-0", A("--max-minutes", "0"), 2, "--max-minutes must be positive"),
    Case("abinit-max-minutes-negative", A("--max-minutes", "-5"), 2, "--max-minutes must be positive"),
    Case("abinit-max-minutes-nan", A("--max-minutes", "nan"), 2, "--max-minutes must be a finite"),
    Case("abinit-max-minutes-inf", A("--max-minutes", "inf"), 2, "--max-minutes must be a finite"),
    Case("abinit-epochs-0", A("--epochs", "0"), 2, "--epochs must be positive"),
    Case("abinit-epochs-nan", A("--epochs", "nan"), 2, "--epochs must be a finite"),
    Case("abinit-threads-negative", A("--threads", "-1"), 2, "--threads must be at least 1"),
    Case("abinit-threads-0", A("--threads", "0"), 2, "--threads must be at least 1"),
    Case("abinit-workers-negative", A("--num-workers", "-1"), 2, "--num-workers must be ≥ 0"),
    Case("abinit-checkpoint-minutes-0", A("--checkpoint-minutes", "0"), 2, "--checkpoint-minutes must be positive"),
    Case("abinit-batch-1", A("--batch-size", "1"), 2, "--batch-size must be at least 2"),
    Case("abinit-batch-0", A("--batch-size", "0"), 2, "--batch-size must be at least 2"),
    Case("abinit-lr-0", A("--lr-encoder", "0"), 2, "--lr-encoder must be in (0, 1)"),
    Case("abinit-lr-5", A("--lr-decoder", "5"), 2, "--lr-decoder must be in (0, 1)"),
    Case("abinit-lr-nan", A("--lr-encoder", "nan"), 2, "--lr-encoder must be a finite"),
    Case("abinit-mask-tiny", A("--mask-radius-angstrom", "0.01"), 2, "the mask must be at least 4 pixels"),
    Case("abinit-mask-2px", A("--mask-radius-angstrom", "12"), 2, "the mask must be at least 4 pixels"),
    Case("abinit-mask-negative", A("--mask-radius-angstrom", "-3"), 2, "--mask-radius-angstrom must be positive"),
    Case("abinit-box-odd", A("--box", "15"), 2, "--box must be even"),
    Case("abinit-box-small", A("--box", "8"), 2, "--box must be even, at least 16"),
    Case("abinit-box-large", A("--box", "64"), 2, "at most the particle box (16)"),
    Case("abinit-device-missing-cuda", A("--device", "cuda:7"), 2, "CUDA"),
    Case("abinit-device-unknown", A("--device", "tpu"), 2, "--device tpu"),
    Case("abinit-device-garbage", A("--device", "not a device"), 2, "not a device name"),
    Case("abinit-seed-negative", A("--seed", "-1"), 2, "--seed must lie in"),
    Case("abinit-root-missing", A("--root", "/nonexistent/folder"), 2, "--root /nonexistent/folder: not a folder"),
    Case("abinit-shift-fraction", A("--search-max-shift-fraction", "0.9"), 2, "--search-max-shift-fraction"),
    # -- abinit: output folders --
    Case("abinit-resume-empty", A("--resume"), 2, "holds no checkpoint"),
    Case("abinit-outdir-is-file", lambda b, m, w: ["abinit", b["star"], "-o", m, "--epochs", "1"], 2,
         "exists and is not a folder", setup=_file),
    Case("abinit-outdir-under-file", lambda b, m, w: ["abinit", b["star"], "-o", os.path.join(m, "run"),
                                                      "--epochs", "1"], 2, "is a file, not a folder", setup=_file),
    Case("abinit-outdir-readonly", A(), 2, "is not writable", readonly=True),
    Case("abinit-old-metrics", lambda b, m, w: ["abinit", b["star"], "-o", m, "--epochs", "1"], 2,
         "outputs of an earlier run (metrics.csv)", setup=_folder_with(["metrics.csv"])),
    Case("abinit-old-run", lambda b, m, w: ["abinit", b["star"], "-o", m, "--epochs", "1"], 2,
         "already holds a run; add --resume", setup=_copy_run),
    # -- abinit: broken particle files --
    Case("abinit-particles-missing", A(star="/nonexistent/p.star"), 2, "/nonexistent/p.star"),
    Case("abinit-particles-folder", lambda b, m, w: ["abinit", b["sim"] + "/", "-o", os.path.join(w, "o"),
                                                     "--epochs", "1"], 2, "unknown particle file type"),
    Case("abinit-star-empty", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "empty.star", setup=_text("empty.star", "")),
    Case("abinit-star-garbage", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "garbage.star", setup=_text("garbage.star", "data_\nloop_\n_rlnFoo #1\nthis is not a star file\n\x00\x01")),
    Case("abinit-star-binary", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "binary.star", setup=_text("binary.star", os.urandom(4000))),
    Case("abinit-extension", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "unknown particle file type", setup=_text("p.txt", "x")),
    Case("abinit-cs-garbage", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "p.cs", setup=_text("p.cs", os.urandom(3000))),
    Case("abinit-no-ctf", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "no CTF parameters", setup=_no_ctf),
    Case("abinit-few-particles", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "needs at least 10", setup=_few_particles),
    Case("abinit-stack-missing", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "particle stack not found", setup=_missing_stack),
    Case("abinit-stack-truncated", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "truncated", setup=_truncated_stack),
    Case("abinit-stack-garbage", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "particles.mrcs", setup=_garbage_stack),
    Case("abinit-stack-nan", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "NaN", setup=_stack_copy(lambda d: np.where(np.arange(d.size).reshape(d.shape) == 500, np.nan, d))),
    Case("abinit-stack-inf", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "infinite", setup=_stack_copy(lambda d: np.where(np.arange(d.size).reshape(d.shape) == 9, np.inf, d))),
    Case("abinit-stack-zero", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "constant", setup=_stack_copy(np.zeros_like)),
    Case("abinit-stack-constant", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "constant", setup=_stack_copy(lambda d: np.full_like(d, 3.5))),
    # -- abinit: impossible CTF parameters (CTF_FIELDS order: dU, dV, angle, kV, Cs, w, phase, B) --
    Case("abinit-voltage-0", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "voltage of 0 kV is impossible", setup=_star_ctf(3, 0.0)),
    Case("abinit-voltage-volts", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "voltage of 300000 kV is impossible", setup=_star_ctf(3, 300000.0)),
    Case("abinit-cs-micrometres", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "spherical aberration (Cs) of 2700 mm", setup=_star_ctf(4, 2700.0)),
    Case("abinit-amplitude-contrast-1.5", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs",
                                                          "1"], 2, "amplitude contrast of 1.5", setup=_star_ctf(5, 1.5)),
    Case("abinit-amplitude-contrast-1", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs",
                                                        "1"], 2, "amplitude contrast of 1 ", setup=_star_ctf(5, 1.0)),
    Case("abinit-amplitude-contrast-negative", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"),
                                                               "--epochs", "1"], 2, "amplitude contrast of -0.1",
         setup=_star_ctf(5, -0.1)),
    Case("abinit-defocus-nan", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "rlnDefocusU", setup=_star_ctf(0, np.nan, count=3)),
    Case("abinit-defocus-huge", lambda b, m, w: ["abinit", m, "-o", os.path.join(w, "o"), "--epochs", "1"], 2,
         "impossible for single-particle data", setup=_star_ctf(1, 5e7)),
    # -- abinit --resume: dishonest resumes and broken checkpoints --
    Case("resume-changed-batch", lambda b, m, w: ["abinit", b["star"], "-o", m, "--epochs", "1", "--batch-size",
                                                  "32", "--resume"], 2, "batch_size: 16 in the checkpoint, 32 now",
         setup=_copy_run),
    Case("resume-changed-lr", lambda b, m, w: ["abinit", b["star"], "-o", m, "--epochs", "1", "--batch-size", "16",
                                               "--lr-encoder", "0.0005", "--resume"], 2, "lr_encoder",
         setup=_copy_run),
    Case("resume-changed-box-and-seed", lambda b, m, w: ["abinit", b["star"], "-o", m, "--epochs", "1",
                                                         "--batch-size", "16", "--seed", "4", "--resume"], 2,
         "seed: 0 in the checkpoint, 4 now", setup=_copy_run),
    Case("resume-garbage-checkpoint", lambda b, m, w: ["abinit", b["star"], "-o", os.path.dirname(m), "--epochs", "1",
                                                       "--batch-size", "16", "--resume"], 2,
         "cannot be read as a cryoAI checkpoint", setup=_text("checkpoint.pt", os.urandom(2000))),
    # -- predict-poses --
    Case("predict-checkpoint-missing", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint",
                                                        os.path.join(w, "none.pt"), "-o", os.path.join(w, "p.star")],
         2, "no checkpoint at"),
    Case("predict-checkpoint-garbage", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", m, "-o",
                                                        os.path.join(w, "p.star")], 2,
         "cannot be read as a cryoAI checkpoint", setup=_text("x.pt", os.urandom(1000))),
    Case("predict-checkpoint-foreign", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", m, "-o",
                                                        os.path.join(w, "p.star")], 2,
         "is not a complete cryoAI checkpoint", setup=_checkpoint(lambda state: {"model": state["encoder"]})),
    Case("predict-checkpoint-list", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", m, "-o",
                                                     os.path.join(w, "p.star")], 2, "holds a list",
         setup=_checkpoint(lambda state: [1, 2, 3])),
    Case("predict-checkpoint-no-encoder", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", m, "-o",
                                                           os.path.join(w, "p.star")], 2, "missing encoder",
         setup=_checkpoint(_without("encoder"))),
    Case("predict-checkpoint-wrong-weights", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", m, "-o",
                                                              os.path.join(w, "p.star"), "--no-progress"], 2,
         "networks do not match", setup=_checkpoint(lambda s: {**s, "encoder": {"weight": torch.zeros(3)}})),
    Case("predict-output-folder", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", b["ckpt"], "-o", w],
         2, "is a folder"),
    Case("predict-output-missing-folder", lambda b, m, w: ["predict-poses", b["star"], "--checkpoint", b["ckpt"],
                                                           "-o", os.path.join(w, "no", "p.star")], 2, "does not exist"),
    Case("predict-batch-0", P("--batch-size", "0"), 2, "--batch-size must be at least 1"),
    Case("predict-other-pixel-size", P(particles=None) if False else
         (lambda b, m, w: ["predict-poses", b["star3"], "--checkpoint", b["ckpt"], "-o", os.path.join(w, "p.star")]),
         2, "cannot be Fourier cropped"),
    Case("predict-device", P("--device", "cuda:3"), 2, "CUDA"),
    Case("predict-voltage-0", lambda b, m, w: ["predict-poses", m, "--checkpoint", b["ckpt"], "-o",
                                               os.path.join(w, "p.star")], 2, "voltage of 0 kV",
         setup=_star_ctf(3, 0.0)),
    Case("predict-stack-nan", lambda b, m, w: ["predict-poses", m, "--checkpoint", b["ckpt"], "-o",
                                               os.path.join(w, "p.star")], 2, "NaN",
         setup=_stack_copy(lambda d: np.where(np.arange(d.size).reshape(d.shape) == 77, np.nan, d))),
    # -- simulate --
    Case("simulate-n-0", lambda b, m, w: ["simulate", b["ref"], "-o", os.path.join(w, "s"), "-n", "0"], 2,
         "-n/--num-particles must be at least 1"),
    Case("simulate-box-odd", S("--box", "15"), 2, "--box must be even"),
    Case("simulate-pixel-0", S("--pixel-size", "0"), 2, "--pixel-size must be positive"),
    Case("simulate-voltage-0", S("--voltage", "0"), 2, "voltage of 0 kV is impossible"),
    Case("simulate-amplitude-1.5", S("--amplitude-contrast", "1.5"), 2, "amplitude contrast of 1.5"),
    Case("simulate-cs-micrometres", S("--cs", "2700"), 2, "2700 mm is impossible"),
    Case("simulate-snr-0", S("--snr", "0"), 2, "--snr must be positive"),
    Case("simulate-snr-nan", S("--snr", "nan"), 2, "--snr must be a finite"),
    Case("simulate-snr-db-inf", S("--snr-db", "inf"), 2, "--snr-db must be a finite"),
    Case("simulate-bfactor-negative", S("--bfactor", "-10"), 2, "--bfactor must be at least 0"),
    Case("simulate-defocus-0", S("--defocus", "0"), 2, "--defocus must be positive"),
    Case("simulate-defocus-huge", S("--defocus", "1e8"), 2, "impossible for single-particle data"),
    Case("simulate-shift-negative", S("--shift-sigma", "-1"), 2, "--shift-sigma must be at least 0"),
    Case("simulate-seed-negative", S("--seed", "-3"), 2, "--seed must lie in"),
    Case("simulate-map-zero", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "every voxel of the map equals 0", setup=_map("zero.mrc", np.zeros_like)),
    Case("simulate-map-constant", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "a constant map", setup=_map("const.mrc", lambda v: np.full_like(v, 2.0))),
    Case("simulate-map-nan", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "1 NaN or infinite voxel", setup=_map("nan.mrc", _with_nan)),
    Case("simulate-map-inf", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "NaN or infinite voxel", setup=_map("inf.mrc", _with_inf)),
    Case("simulate-map-not-cubic", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "expected a cubic 3D map", setup=_map("slab.mrc", lambda v: v[:8])),
    Case("simulate-map-2d", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "expected a cubic 3D map", setup=_map("image.mrc", lambda v: v[0])),
    Case("simulate-map-missing", lambda b, m, w: ["simulate", os.path.join(w, "none.mrc"), "-o",
                                                  os.path.join(w, "s"), "-n", "10"], 2, "MRC file not found"),
    Case("simulate-map-garbage", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "is not a valid MRC file", setup=_text("junk.mrc", os.urandom(3000))),
    Case("simulate-map-no-voxel-size", lambda b, m, w: ["simulate", m, "-o", os.path.join(w, "s"), "-n", "10"], 2,
         "no voxel size", setup=_map("novoxel.mrc", lambda v: v, voxel=0.0)),
    Case("simulate-outdir-is-file", lambda b, m, w: ["simulate", b["ref"], "-o", m, "-n", "10"], 2,
         "exists and is not a folder", setup=_file),
    Case("simulate-outdir-readonly", S(), 2, "is not writable", readonly=True),
    Case("simulate-poses-from-missing", S("--poses-from", "/nonexistent/poses.star"), 2, "file not found"),
    # -- simulate: full disk and I/O errors at every file (fault hook), nothing left behind --
    Case("simulate-full-disk-stack", S(), 3, "No space left on device", fault="write:particles.mrcs:enospc"),
    Case("simulate-full-disk-star", S(), 3, "No space left on device", fault="write:particles.star:enospc"),
    Case("simulate-full-disk-config", S(), 3, "No space left on device", fault="write:simulation.yaml:enospc"),
    Case("simulate-full-disk-reference", S(), 3, "No space left on device", fault="write:reference.mrc:enospc"),
    Case("simulate-io-error", S(), 3, "Input/output error", fault="write:particles.star:eio"),
    # -- evaluate --
    Case("evaluate-nothing", lambda b, m, w: ["evaluate"], 2, "nothing to do"),
    Case("evaluate-map-alone", lambda b, m, w: ["evaluate", "--map", b["volume"]], 2, "go together"),
    Case("evaluate-poses-alone", lambda b, m, w: ["evaluate", "--poses", b["poses"]], 2, "go together"),
    Case("evaluate-map-nan-voxel", lambda b, m, w: ["evaluate", "--map", m, "--reference", b["ref"], "-o",
                                                    os.path.join(w, "e")], 2, "NaN or infinite voxel",
         setup=_map("nan.mrc", _with_nan)),
    Case("evaluate-reference-zero", lambda b, m, w: ["evaluate", "--map", b["volume"], "--reference", m, "-o",
                                                     os.path.join(w, "e")], 2, "reference map equals 0",
         setup=_map("zero.mrc", np.zeros_like)),
    Case("evaluate-map-constant", lambda b, m, w: ["evaluate", "--map", m, "--reference", b["ref"], "-o",
                                                   os.path.join(w, "e")], 2, "constant map",
         setup=_map("const.mrc", lambda v: np.ones_like(v))),
    Case("evaluate-map-missing", lambda b, m, w: ["evaluate", "--map", os.path.join(w, "x.mrc"), "--reference",
                                                  b["ref"]], 2, "file not found"),
    Case("evaluate-map-garbage", lambda b, m, w: ["evaluate", "--map", m, "--reference", b["ref"], "-o",
                                                  os.path.join(w, "e")], 2, "not a valid MRC file",
         setup=_text("junk.mrc", os.urandom(2000))),
    Case("evaluate-map-not-cubic", lambda b, m, w: ["evaluate", "--map", m, "--reference", b["ref"], "-o",
                                                    os.path.join(w, "e")], 2, "cubic",
         setup=_map("slab.mrc", lambda v: v[:, :8])),
    Case("evaluate-json-folder", lambda b, m, w: ["evaluate", "--poses", b["poses"], "--true-poses", b["star"],
                                                  "--json", w], 2, "is a folder"),
    Case("evaluate-outdir-without-map", lambda b, m, w: ["evaluate", "--poses", b["poses"], "--true-poses",
                                                         b["star"], "-o", os.path.join(w, "e")], 2, "needs --map"),
    Case("evaluate-poses-lengths", lambda b, m, w: ["evaluate", "--poses", m, "--true-poses", b["star"]], 2,
         "has 10 particles but", setup=_short_poses),
    Case("evaluate-poses-missing-angles", lambda b, m, w: ["evaluate", "--poses", m, "--true-poses", b["star"]], 2,
         "has no poses", setup=_no_poses),
    Case("evaluate-full-disk-map", lambda b, m, w: ["evaluate", "--map", b["volume"], "--reference", b["ref"], "-o",
                                                    os.path.join(w, "e"), "--no-align"], 3, "No space left",
         fault="write:aligned_map.mrc:enospc"),
    Case("evaluate-full-disk-plot", lambda b, m, w: ["evaluate", "--map", b["volume"], "--reference", b["ref"], "-o",
                                                     os.path.join(w, "e"), "--no-align"], 3, "No space left",
         fault="write:fsc.png:enospc"),
    Case("evaluate-full-disk-json", lambda b, m, w: ["evaluate", "--map", b["volume"], "--reference", b["ref"], "-o",
                                                     os.path.join(w, "e"), "--json", os.path.join(w, "j", "e.json"), "--no-align"],
         3, "No space left", fault="write:e.json:enospc"),
    # -- demo (validation only) --
    Case("demo-minutes-0", lambda b, m, w: ["demo", "-o", os.path.join(w, "d"), "--minutes", "0"], 2,
         "--minutes must be positive"),
    Case("demo-epochs-0", lambda b, m, w: ["demo", "-o", os.path.join(w, "d"), "--epochs", "0"], 2,
         "--epochs must be positive"),
    Case("demo-few-particles", lambda b, m, w: ["demo", "-o", os.path.join(w, "d"), "-n", "50"], 2,
         "at least 100 particles"),
    Case("demo-previous", lambda b, m, w: ["demo", "-o", m], 2, "holds a previous demo",
         setup=_folder_with(["evaluation.json"])),
    # -- abinit: full disk and I/O errors while training (a new run leaves nothing behind) --
    Case("abinit-full-disk-checkpoint", A("--batch-size", "16"), 3, "No space left",
         fault="write:checkpoint.pt:enospc"),
    Case("abinit-full-disk-metrics", A("--batch-size", "16"), 3, "No space left", fault="write:metrics.csv:enospc"),
    Case("abinit-io-error-config", A("--batch-size", "16"), 3, "Input/output error", fault="write:config.yaml:eio"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_and_faults_fail_cleanly(base, tmp_path, capsys, monkeypatch, case):
    work = str(tmp_path / "work")
    os.makedirs(work)
    made = case.setup(base, work)
    argv = case.argv(base, made, work)
    if case.fault:
        monkeypatch.setenv("CRYOAI_TEST_FAULT", case.fault)
    if case.readonly:  # the tests may run as root, for whom chmod does not forbid writing
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: False if os.path.abspath(path) == work
                            else real_access(path, mode))
    before = snapshot(work, base["root"])
    code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cryoai ") and case.text in lines[0], lines[0]
    assert snapshot(work, base["root"]) == before


def test_the_corpus_is_large(base):
    assert len(CASES) >= 60


def test_a_bug_is_shown_as_a_bug(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRYOAI_TEST_FAULT", "train-step:raise")
    code = main(["abinit", base["star"], "-o", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "16",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "please report" in err
    assert not (tmp_path / "out").exists()


def test_a_diverging_loss_is_a_training_failure(base, tmp_path, capsys, monkeypatch):
    from cryoai_core.train.learner import CryoAILearner

    step = CryoAILearner.step

    def diverging(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        result.loss = float("nan")
        return result

    monkeypatch.setattr(CryoAILearner, "step", diverging)
    code = main(["abinit", base["star"], "-o", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "16",
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4 and len(err) == 1 and "the loss became nan at step 1" in err[0]
    assert not (tmp_path / "out").exists()


def test_an_honest_resume_accepts_a_new_budget(base, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(base["run"], run)
    assert main(["abinit", base["star"], "-o", run, "--epochs", "2", "--batch-size", "16", "--threads", "1",
                 "--num-workers", "0", "--checkpoint-minutes", "2", "--resume", "--no-progress"]) == 0
    with open(os.path.join(run, "metrics.csv")) as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [3, 6]


# ---- subprocess cases: SIGKILL at a checkpoint, signals during the export ----

def _cli(argv, env_extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra)
    return subprocess.Popen([sys.executable, "-m", "cryoai_core.cli"] + argv, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _leftover_temporaries(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_kill_9_at_a_checkpoint_loses_nothing(base, tmp_path):
    run, ready = str(tmp_path / "run"), str(tmp_path / "ready")
    argv = ["abinit", base["star"], "-o", run, "--epochs", "1", "--batch-size", "16", "--threads", "1",
            "--no-progress"]
    process = _cli(argv, {"CRYOAI_TEST_FAULT": "checkpoint-written:pause", "CRYOAI_TEST_FAULT_READY": ready})
    try:
        for _ in range(2400):  # wait (up to 120 s) for the hook to report the pause
            if os.path.exists(ready) or process.poll() is not None:
                break
            try:
                process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        assert os.path.exists(ready), process.communicate()[1]
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert os.path.exists(os.path.join(run, "checkpoint.pt"))
    assert main(argv + ["--resume"]) == 0
    assert _leftover_temporaries(run) == []
    with open(os.path.join(run, "metrics.csv")) as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [3]
    data, _ = read_mrc(os.path.join(run, "volume.mrc"))
    assert data.shape == (16, 16, 16) and np.isfinite(data).all()


def test_sigterm_during_the_export_finishes_it(base, tmp_path):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(base["run"], run)
    process = _cli(["abinit", base["star"], "-o", run, "--epochs", "1", "--batch-size", "16", "--threads", "1",
                    "--no-progress", "--resume"], {"CRYOAI_TEST_FAULT": "export-start:sigterm"})
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("cryoai abinit:")]
    assert "Traceback" not in err and len(lines) == 1 and "the outputs are complete" in lines[0]
    assert _leftover_temporaries(run) == []
    assert len(read_star(os.path.join(run, "particles.star"))) == 40
    data, _ = read_mrc(os.path.join(run, "volume.mrc"))
    assert data.shape == (16, 16, 16) and np.isfinite(data).all()


def test_a_second_signal_during_the_export_stops_with_the_previous_outputs_intact(base, tmp_path, capsys,
                                                                                  monkeypatch):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(base["run"], run)
    previous = snapshot(run)
    monkeypatch.setenv("CRYOAI_TEST_FAULT", "export-start:sigterm,export-written:sigint")
    code = main(["abinit", base["star"], "-o", run, "--epochs", "1", "--batch-size", "16", "--threads", "1",
                 "--no-progress", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and "the previous outputs are intact" in err[0]
    assert _leftover_temporaries(run) == []
    star = os.path.join(run, "particles.star")
    assert snapshot(run)[star] == previous[star]
    data, _ = read_mrc(os.path.join(run, "volume.mrc"))
    assert data.shape == (16, 16, 16) and np.isfinite(data).all()


def test_same_seed_and_threads_give_bit_identical_maps_and_poses(base, tmp_path):
    runs = []
    for name in ("a", "b"):
        run = str(tmp_path / name)
        assert main(["abinit", base["star"], "-o", run, "--epochs", "2", "--batch-size", "16", "--threads", "1",
                     "--seed", "7", "--no-progress"]) == 0
        runs.append(run)
    first, second = (read_mrc(os.path.join(run, "volume.mrc"))[0] for run in runs)
    assert np.array_equal(first, second)
    poses = [read_star(os.path.join(run, "particles.star")) for run in runs]
    assert np.array_equal(poses[0].euler_angles_degrees, poses[1].euler_angles_degrees)
    assert np.array_equal(poses[0].origins_angstrom, poses[1].origins_angstrom)
