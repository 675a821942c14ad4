"""Trainer outputs for users and queues: an early first checkpoint, a final metrics row, plain progress lines
(training, and the long passes over the particles after it)."""
import csv
import os

import pytest
import torch

from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import read_mrc
from cryoai_core.simulate import SimulationConfig, simulate
from cryoai_core.train.config import build
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train import progress
from cryoai_core.train.export import predict_and_score
from cryoai_core.train.progress import BatchLines, ProgressLines
from cryoai_core.train.trainer import Trainer

BUILTIN = os.path.join(os.path.dirname(__file__), "..", "cryoai_core", "data", "4ake_L64_px1.5.mrc")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    volume, voxel = read_mrc(BUILTIN)
    outdir = str(tmp_path_factory.mktemp("sim16"))
    config = SimulationConfig(num_particles=64, box=16, pixel_size_angstrom=6.0, snr=1.0, seed=3)
    return ParticleDataset(simulate(volume, voxel, config, outdir, progress=False))


def make_trainer(dataset, outdir, on_step=None, **overrides):
    values = dict(box=16, pixel_size_angstrom=6.0, input_box=16, input_pixel_size_angstrom=6.0, epochs=2,
                  batch_size=16, search_rotations=256, fouriernet_width=16, encoder_base_channels=4, seed=5)
    values.update(overrides)
    config = build(**values)
    torch.manual_seed(config.seed)
    return Trainer(CryoAILearner(config), dataset, str(outdir), (0.0, 1.0), progress_bar=False, on_step=on_step)


def test_the_first_checkpoint_comes_early_and_a_short_run_ends_with_a_metrics_row(dataset, tmp_path, capsys):
    seen = {}

    def record(trainer):
        seen[trainer.learner.steps] = os.path.exists(trainer.checkpoint_path)

    trainer = make_trainer(dataset, tmp_path, on_step=record, first_checkpoint_steps=3, checkpoint_minutes=60.0,
                           log_every=50, amortized_poses="encoder")
    trainer.run()
    # the bootstrap's safe points come every 10 steps, the paper's amortized phase is always safe: the first
    # checkpoint is due at step 3, written at the first safe point after it
    assert trainer.learner.steps == 8
    assert not seen[2] and seen[8]
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [8]
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("progress: ")]
    assert lines[0].startswith("progress: epoch 1/2 step 1 loss ")
    assert "done in" in lines[-1] and "step 8" in lines[-1]
    assert "\r" not in out and "\x1b" not in out


def test_progress_lines_come_every_30_seconds_and_at_phase_changes():
    now = [0.0]
    printed = []

    class Sink:
        def write(self, text):
            printed.append(text)

        def flush(self):
            pass

    lines = ProgressLines(epochs=4, stream=Sink(), clock=lambda: now[0])
    assert lines.update(1, 0, 1.0, "bootstrap", 4.0, 0.0, 1.0) is not None
    now[0] = 10.0
    assert lines.update(2, 0, 1.0, "bootstrap", 4.0, 0.1, 10.0) is None
    assert "phase amortized" in lines.update(3, 0, 1.0, "amortized", 4.0, 0.2, 12.0)
    now[0] = 35.0
    assert lines.update(4, 1, 1.0, "amortized", 5.0, 0.25, 35.0) is None
    now[0] = 60.0
    line = lines.update(5, 1, 0.5, "amortized", 5.0, 0.5, 60.0)
    assert line == "progress: epoch 2/4 step 5 loss 0.5 phase amortized radius 5.0 px | 50% elapsed 1.0 min ETA 1.0 min"


class _Sink:
    def __init__(self):
        self.printed = []

    def write(self, text):
        self.printed.append(text)

    def flush(self):
        pass


def test_a_pass_over_the_particles_is_quiet_when_short_and_reports_rate_and_eta_when_long():
    now = [0.0]
    sink = _Sink()
    quick = BatchLines("predict poses", 1000, stream=sink, clock=lambda: now[0])
    now[0] = 12.0
    assert quick.update(500) is None
    now[0] = 25.0
    assert quick.update(1000) is None
    assert sink.printed == []

    now[0] = 100.0
    slow = BatchLines("predict poses", 30000, stream=sink, clock=lambda: now[0])
    now[0] = 110.0
    assert slow.update(256) is None
    now[0] = 160.0
    assert slow.update(1200) == "progress: predict poses 1200/30000 (4%) | 20.0 per s elapsed 1.0 min ETA 24.0 min"
    now[0] = 170.0
    assert slow.update(1400) is None
    now[0] = 185.0
    assert slow.update(2000) is None
    now[0] = 200.0
    assert slow.update(30000) == "progress: predict poses 30000/30000 (100%) | 300.0 per s done in 1.7 min"
    assert len(sink.printed) == 4  # two lines, each followed by its newline


def test_pose_export_prints_progress_lines_on_stdout(dataset, monkeypatch, capsys):
    monkeypatch.setattr(progress, "PROGRESS_SECONDS", 0.0)
    learner = CryoAILearner(build(box=16, pixel_size_angstrom=6.0, input_box=16, input_pixel_size_angstrom=6.0,
                                  fouriernet_width=16, encoder_base_channels=4))
    with predict_and_score(learner, dataset, 1.0, batch_size=16, progress_bar=False, refine=False):
        pass
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("progress: ")]
    assert [line.split(" | ")[0] for line in lines] == [
        f"progress: predict poses {done}/64 ({100 * done // 64}%)" for done in (16, 32, 48, 64)]
    assert "done in" in lines[-1] and "ETA" in lines[0]


def test_a_long_pass_hands_freed_memory_back_every_so_many_batches(monkeypatch):
    released = []
    monkeypatch.setattr(progress, "release_freed_memory", lambda: released.append(True))
    starts = range(0, 1000 * 7, 7)
    assert list(progress.progress_batches(starts, "pass", bar=False, lines=False)) == list(starts)
    assert len(released) == 1000 // progress.RELEASE_EVERY_BATCHES
