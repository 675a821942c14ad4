"""`cryoai abinit` / `cryoai predict-poses` end to end on a tiny simulated set, and their input checks."""
import argparse
import json
import os

import mrcfile
import numpy as np
import pytest

from cryoai_core.cli import main
from cryoai_core.cli.evaluate import evaluate_map, evaluate_poses
from cryoai_core.cli.predict_poses import add_args, validate_predict_poses
from cryoai_core.io.star import read_star
from cryoai_core.reconstruct import SUBSET_COLUMN
from cryoai_core.recentre import density_centre_px
from cryoai_core.train.checkpoint import read_checkpoint
from cryoai_core.train.config import HalfMapConfig
from cryoai_core.train.score import SCORE_COLUMN

RANDOM_POSES_MEDIAN_DEGREES = 132.0
"""Median geodesic error of uniformly random rotations after the best global alignment is about 130°."""


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("sim"))
    assert main(["simulate", "-o", outdir, "-n", "1000", "--box", "16", "--pixel-size", "6", "--shift-sigma", "3",
                 "--seed", "1", "--no-progress"]) == 0
    return outdir


@pytest.fixture(scope="module")
def trained(simulated, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("run"))
    star = os.path.join(simulated, "particles.star")
    assert main(["abinit", star, "-o", run, "--epochs", "12", "--batch-size", "64", "--threads", "1",
                 "--no-progress"]) == 0
    return run


def test_abinit_reconstructs_far_beyond_random_poses(simulated, trained):
    for name in ("volume.mrc", "particles.star", "checkpoint.pt", "config.yaml", "metrics.csv", "run.log",
                 "loss.png", "poses.png", "slices.png", "half1.mrc", "half2.mrc", "volume_backprojected.mrc",
                 "fsc_halves.png", "resolution.json"):
        assert os.path.getsize(os.path.join(trained, name)) > 0, name
    with open(os.path.join(trained, "resolution.json")) as handle:
        resolution = json.load(handle)
    assert sum(resolution["particles_per_half"]) == 1000 and resolution["fsc_threshold"] == 0.143
    assert 2 * 6.0 <= resolution["resolution_angstrom"] < 16 * 6.0
    with open(os.path.join(trained, "run.log")) as handle:
        assert "gold-standard resolution" in handle.read()
    with mrcfile.open(os.path.join(trained, "volume.mrc")) as handle:
        assert handle.data.shape == (16, 16, 16)
        assert handle.voxel_size.x == pytest.approx(6.0)
    report = evaluate_map(os.path.join(trained, "volume.mrc"), os.path.join(simulated, "reference.mrc"), trained)
    assert report["resolution"]["0.5"]["pixels"] < 3.5
    poses = evaluate_poses(os.path.join(trained, "particles.star"), os.path.join(simulated, "particles.star"))
    assert poses["median_angle_degrees"] < 0.5 * RANDOM_POSES_MEDIAN_DEGREES
    # The map's density is centred in its box, and the origins follow it.
    with mrcfile.open(os.path.join(trained, "volume.mrc")) as handle:
        centre = density_centre_px(handle.data)
    assert np.abs(centre).max() < 0.3
    table = read_star(os.path.join(trained, "particles.star"))
    truth = read_star(os.path.join(simulated, "particles.star"))
    assert len(table) == len(truth)
    np.testing.assert_allclose(table.ctf, truth.ctf)
    # The half maps' split travels with the poses (RELION's column), and their poses were refined apart.
    subsets = np.asarray(table.extra_columns[SUBSET_COLUMN])
    assert [int((subsets == 1).sum()), int((subsets == 2).sum())] == resolution["particles_per_half"]
    assert resolution["gold_standard_rounds"] == HalfMapConfig().rounds > 0


def test_predict_poses_reuses_the_trained_encoder(simulated, trained, tmp_path):
    output = str(tmp_path / "predicted.star")
    assert main(["predict-poses", "--checkpoint", os.path.join(trained, "checkpoint.pt"),
                 os.path.join(simulated, "particles.star"), "-o", output, "--no-progress"]) == 0
    predicted = read_star(output)
    reference = read_star(os.path.join(trained, "particles.star"))
    np.testing.assert_allclose(predicted.euler_angles_degrees, reference.euler_angles_degrees, atol=1e-3)
    np.testing.assert_allclose(predicted.origins_angstrom, reference.origins_angstrom, atol=1e-3)


def test_predict_poses_does_not_hold_the_training_pose_memory(simulated, trained, tmp_path):
    """The checkpoint keeps every training particle's best pose; prediction needs none of them (N x ~45 B)."""
    checkpoint = os.path.join(trained, "checkpoint.pt")
    assert read_checkpoint(checkpoint)["learner"]["memory"] is not None
    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--checkpoint", checkpoint, os.path.join(simulated, "particles.star"),
                              "-o", str(tmp_path / "predicted.star")])
    state = validate_predict_poses(args)[0]
    assert state["learner"]["memory"] is None
    assert state["encoder"] and state["decoder"]


def test_exported_star_has_a_finite_per_particle_score(trained):
    table = read_star(os.path.join(trained, "particles.star"))
    scores = np.asarray(table.extra_columns[SCORE_COLUMN], dtype=np.float64)
    assert scores.shape == (len(table),) and np.isfinite(scores).all()
    assert np.median(scores) > 0


def test_predict_poses_refine_does_not_worsen_the_encoder_poses(simulated, trained, tmp_path):
    truth = os.path.join(simulated, "particles.star")
    errors = {}
    for flag in ("--no-refine", "--refine"):
        output = str(tmp_path / f"predicted{flag}.star")
        assert main(["predict-poses", "--checkpoint", os.path.join(trained, "checkpoint.pt"), truth, "-o", output,
                     flag, "--no-progress"]) == 0
        errors[flag] = evaluate_poses(output, truth)["median_angle_degrees"]
        assert SCORE_COLUMN in read_star(output).extra_columns
    assert errors["--refine"] <= errors["--no-refine"] + 1.0


def test_a_finished_run_is_not_overwritten(simulated, trained, capsys):
    assert main(["abinit", os.path.join(simulated, "particles.star"), "-o", trained, "--epochs", "1"]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--box", "15"], "--box must be even"),
    (["--box", "64"], "at most the particle box"),
    (["--epochs", "-1"], "--epochs must be positive"),
    (["--batch-size", "1"], "--batch-size"),
    (["--resume"], "holds no checkpoint"),
    (["--device", "cuda:7"], "CUDA"),
])
def test_bad_options_are_one_line_errors(simulated, tmp_path, capsys, extra, message):
    code = main(["abinit", os.path.join(simulated, "particles.star"), "-o", str(tmp_path / "out"),
                 "--epochs", "1"] + extra)
    error = capsys.readouterr().err
    assert code == 2
    assert message in error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1


def test_particles_without_ctf_are_refused(tmp_path, capsys):
    data = str(tmp_path / "noctf")
    assert main(["simulate", "-o", data, "-n", "20", "--box", "16", "--pixel-size", "6", "--no-ctf",
                 "--no-progress"]) == 0
    assert main(["abinit", os.path.join(data, "particles.star"), "-o", str(tmp_path / "out"), "--epochs", "1"]) == 2
    assert "CTF" in capsys.readouterr().err


def test_nan_images_and_bad_output_folders_are_refused(simulated, tmp_path, capsys):
    data = str(tmp_path / "nan")
    assert main(["simulate", "-o", data, "-n", "20", "--box", "16", "--pixel-size", "6", "--no-progress"]) == 0
    with mrcfile.open(os.path.join(data, "particles.mrcs"), "r+") as handle:
        handle.data[3, 2, 2] = np.nan
    assert main(["abinit", os.path.join(data, "particles.star"), "-o", str(tmp_path / "out"), "--epochs", "1"]) == 2
    assert "NaN" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["abinit", os.path.join(simulated, "particles.star"), "-o", str(blocker / "run"),
                 "--epochs", "1"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_training_never_sees_the_true_poses(simulated, tmp_path, monkeypatch):
    from cryoai_core.io.dataset import ParticleDataset

    assert read_star(os.path.join(simulated, "particles.star")).euler_angles_degrees is not None
    tables, keys = [], set()
    build, batch = ParticleDataset.__init__, ParticleDataset.__getitems__

    def recording_init(self, table, *args, **kwargs):
        tables.append(table)
        build(self, table, *args, **kwargs)

    def recording_batch(self, indices):
        items = batch(self, indices)
        keys.update(items)
        return items

    monkeypatch.setattr(ParticleDataset, "__init__", recording_init)
    monkeypatch.setattr(ParticleDataset, "__getitems__", recording_batch)
    assert main(["abinit", os.path.join(simulated, "particles.star"), "-o", str(tmp_path / "run"), "--epochs",
                 "0.1", "--batch-size", "50", "--threads", "1", "--no-progress"]) == 0
    assert tables and all(t.euler_angles_degrees is None and t.origins_angstrom is None for t in tables)
    assert "image" in keys and not keys & {"euler_angles_degrees", "origins_angstrom"}


def test_particles_off_centre_on_average_are_centred_for_training_and_exported_at_their_own_origins(tmp_path):
    """Particles drawn 2 px off centre on average (12.5 % of a 16 px box, as in the EMPIAR-10180 table):
    training sees them moved by their estimated mean origin (kept in the checkpoint), and the exported origins
    are the particles' own, not the centred frame's."""
    import torch

    from cryoai_core.rotations import matrix_to_euler, random_rotations

    generator = torch.Generator().manual_seed(3)
    count, mean_origin = 400, np.array([2.0, -2.0])
    angles = matrix_to_euler(random_rotations(count, generator)).numpy()
    origins = mean_origin + 0.5 * torch.randn(count, 2, generator=generator, dtype=torch.float64).numpy()
    lines = ["data_particles", "loop_", "_rlnImageName", "_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi",
             "_rlnOriginX", "_rlnOriginY", "_rlnImageSize"]
    lines += [f"{index:06d}@unused.mrcs {a:.4f} {b:.4f} {c:.4f} {x:.4f} {y:.4f} 16"
              for index, ((a, b, c), (x, y)) in enumerate(zip(angles, origins), start=1)]
    table = tmp_path / "table.star"
    table.write_text("\n".join(lines) + "\n")
    sim, run = str(tmp_path / "sim"), str(tmp_path / "run")
    assert main(["simulate", "-o", sim, "-n", "600", "--box", "16", "--pixel-size", "6", "--poses-from", str(table),
                 "--seed", "2", "--no-progress"]) == 0
    assert main(["abinit", os.path.join(sim, "particles.star"), "-o", run, "--epochs", "4", "--batch-size", "64",
                 "--threads", "1", "--no-half-maps", "--no-progress"]) == 0
    state = torch.load(os.path.join(run, "checkpoint.pt"), map_location="cpu", weights_only=False)
    assert state["progress"]["particle_origin_px"] == pytest.approx(mean_origin.tolist())
    exported = read_star(os.path.join(run, "particles.star")).origins_angstrom / 6.0
    truth = read_star(os.path.join(sim, "particles.star")).origins_angstrom / 6.0
    np.testing.assert_allclose(np.median(exported, axis=0), np.median(truth, axis=0), atol=0.75)
