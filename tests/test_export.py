"""Streamed export: poses spilled to a temporary file, scored over every particle, written in chunks."""
import logging
import os

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.star import read_star, write_star
from cryoai_core.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from cryoai_core.train import export
from cryoai_core.train.config import build
from cryoai_core.train.export import ScoredPoses
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.score import SCORE_COLUMN, log_likelihood_ratios
from test_io_star import make_stack


def test_spilled_poses_come_back_in_order_with_scores_over_every_particle(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(export, "POSE_PLOT_MAX", 4)
    count = 10
    generator = torch.Generator().manual_seed(0)
    rotations, encoded = random_rotations(count, generator), random_rotations(count, generator)
    origins = torch.randn(count, 2, generator=generator, dtype=torch.float64)
    distances, energies = torch.rand(count, generator=generator), 2 + torch.rand(count, generator=generator)
    with ScoredPoses(count, str(tmp_path)) as poses:
        for start in (0, 3, 7):  # uneven batches
            stop = {0: 3, 3: 7, 7: 10}[start]
            poses.add(start, rotations[start:stop], origins[start:stop], encoded[start:stop],
                      distances[start:stop], energies[start:stop])
        poses.total_weight = 50.0
        assert os.listdir(tmp_path) == []  # the spill file has no name
        chunks = list(poses.chunks(rows=4))
        again = list(poses.chunks(rows=4))
        with caplog.at_level(logging.INFO, logger=export.__name__):
            poses.log()
    assert poses.spill.closed
    assert [chunk[0] for chunk in chunks] == [0, 4, 8]
    angles = np.concatenate([chunk[1] for chunk in chunks])
    np.testing.assert_allclose(euler_to_matrix(torch.from_numpy(angles)), rotations, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([chunk[2] for chunk in chunks]), origins.numpy())
    np.testing.assert_array_equal(np.concatenate([c[1] for c in again]), angles)
    scores = np.concatenate([chunk[3][SCORE_COLUMN] for chunk in chunks])
    np.testing.assert_allclose(scores, log_likelihood_ratios(distances.numpy(), energies.numpy(), 50.0), rtol=1e-6)
    assert f"score (nats) median {np.median(scores):.1f}, 5th percentile {np.percentile(scores, 5):.1f}" in caplog.text
    moved = np.degrees(np.arccos(np.clip((np.einsum("nij,nij->n", rotations.numpy(), encoded.numpy()) - 1) / 2, -1, 1)))
    np.testing.assert_allclose(poses.moved_degrees, moved, atol=1e-3)
    shown = torch.cat(poses.shown_rotations)
    torch.testing.assert_close(shown, rotations[::3].float())  # every 3rd: at most 4 of 10


def test_chunks_with_added_columns_are_written_and_must_cover_every_particle(tmp_path):
    stack = make_stack(tmp_path / "s.mrcs", 5)
    table = ParticleTable(stack_files=(stack,), stack_ids=np.zeros(5, np.int32), image_indices=np.arange(5),
                          pixel_size_angstrom=2.0, box=16, extra_columns={"rlnClassNumber": np.arange(5) + 1})
    angles = matrix_to_euler(random_rotations(5, torch.Generator().manual_seed(1)).double()).numpy()
    origins = np.arange(10.0).reshape(5, 2)
    chunks = [(0, angles[:2], origins[:2], {SCORE_COLUMN: np.array([1.5, 2.5])}),
              (2, angles[2:], origins[2:], {SCORE_COLUMN: np.array([3.5, 4.5, 5.5])})]
    path = str(tmp_path / "out.star")
    write_star(path, table, poses=iter(chunks))
    particles = starfile.read(path, always_dict=True)["particles"]
    assert particles[SCORE_COLUMN].tolist() == [1.5, 2.5, 3.5, 4.5, 5.5]
    back = read_star(path)
    np.testing.assert_allclose(back.euler_angles_degrees, angles, atol=1e-5)
    np.testing.assert_array_equal(back.extra_columns["rlnClassNumber"], [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="poses were given for 2 of 5 particles"):
        write_star(str(tmp_path / "short.star"), table, poses=iter(chunks[:1]))
    assert not os.path.exists(tmp_path / "short.star")


def test_every_prediction_pass_judges_poses_with_the_decoder_as_it_is_now(tmp_path):
    """A map cached before the networks changed (during training, or before a checkpoint was loaded) is
    dropped when a prediction pass starts: the poses equal those of a learner that never cached one."""
    count, box = 32, 16
    path = str(tmp_path / "random.mrcs")
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.random.default_rng(0).standard_normal((count, box, box)).astype(np.float32))
        mrc.set_image_stack()
    table = ParticleTable(stack_files=(path,), stack_ids=np.zeros(count, np.int32), image_indices=np.arange(count),
                          pixel_size_angstrom=2.0, box=box)
    dataset = ParticleDataset(table)
    config = build(box=box, pixel_size_angstrom=2.0, input_box=box, input_pixel_size_angstrom=2.0, epochs=1,
                   batch_size=8, search_rotations=64, fouriernet_width=16, encoder_base_channels=4)
    torch.manual_seed(0)
    learner = CryoAILearner(config)
    torch.manual_seed(1)
    fresh = CryoAILearner(config)
    for stale_pass in (lambda: export.predict_all_poses(learner, dataset, 1.0, batch_size=8, progress_bar=False)[2],
                       lambda: _scored_rotations(learner, dataset)):
        learner.load_state_dict(CryoAILearner(config).state_dict())
        learner.cached_map(learner.disk(config.nyquist_radius_px))
        learner.load_state_dict(fresh.state_dict())
        fresh.forget_cached_map()
        expected = export.predict_all_poses(fresh, dataset, 1.0, batch_size=8, progress_bar=False)[2]
        torch.testing.assert_close(stale_pass(), expected)


def _scored_rotations(learner, dataset) -> torch.Tensor:
    with export.predict_and_score(learner, dataset, 1.0, batch_size=8, progress_bar=False, refine=False) as poses:
        angles = np.concatenate([chunk[1] for chunk in poses.chunks()])
    return euler_to_matrix(torch.from_numpy(angles)).float()
