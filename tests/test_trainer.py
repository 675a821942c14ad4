"""Trainer: checkpoints resume a stopped run exactly; metrics and budget bookkeeping."""
import csv
import os

import pytest
import torch

from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import read_mrc
from cryoai_core.simulate import SimulationConfig, simulate
from cryoai_core.train.config import build
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.trainer import DivergenceWatch, Trainer, TrainingInterrupted

BUILTIN = os.path.join(os.path.dirname(__file__), "..", "cryoai_core", "data", "4ake_L64_px1.5.mrc")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    volume, voxel = read_mrc(BUILTIN)
    outdir = str(tmp_path_factory.mktemp("sim16"))
    config = SimulationConfig(num_particles=160, box=16, pixel_size_angstrom=6.0, shift_sigma_angstrom=3.0,
                              snr=1.0, seed=3)
    table = simulate(volume, voxel, config, outdir, progress=False)
    return ParticleDataset(table)


def make_trainer(dataset, outdir, on_step=None):
    config = build(box=16, pixel_size_angstrom=6.0, input_box=16, input_pixel_size_angstrom=6.0, epochs=2,
                   batch_size=16, search_rotations=256, fouriernet_width=16, encoder_base_channels=4,
                   log_every=5, bootstrap_max_fraction=0.5, seed=5)
    torch.manual_seed(config.seed)
    learner = CryoAILearner(config)
    return Trainer(learner, dataset, str(outdir), (0.0, 1.0), progress_bar=False, on_step=on_step)


def test_a_stopped_run_resumes_exactly(small_dataset, tmp_path):
    reference = make_trainer(small_dataset, tmp_path / "straight")
    reference.run()

    def stop_at_step_7(trainer):
        if trainer.learner.steps == 7:
            trainer.request_stop("test stop")

    interrupted = make_trainer(small_dataset, tmp_path / "stopped", on_step=stop_at_step_7)
    with pytest.raises(TrainingInterrupted):
        interrupted.run()
    # The stop waits for a safe point of the bootstrap search (every 10 steps) or happens at once after it.
    assert 7 <= interrupted.learner.steps <= 10
    resumed = make_trainer(small_dataset, tmp_path / "stopped")
    resumed.resume()
    assert resumed.learner.steps == interrupted.learner.steps
    resumed.run()

    assert resumed.learner.steps == reference.learner.steps == 20
    assert resumed.learner.phase == reference.learner.phase == "amortized"
    for name, value in reference.learner.state_dict().items():
        assert torch.equal(value, resumed.learner.state_dict()[name]), name
    with open(tmp_path / "stopped" / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert steps == [5, 10, 15, 20]


def test_progress_follows_the_epoch_budget(small_dataset, tmp_path):
    trainer = make_trainer(small_dataset, tmp_path)
    assert trainer.progress() == 0.0
    trainer.counters["images_seen"] = len(small_dataset)
    assert trainer.progress() == pytest.approx(0.5)


def test_divergence_watch_keeps_the_first_non_finite_loss_until_read():
    watch = DivergenceWatch()
    assert watch.first() is None
    for step, loss in enumerate([torch.tensor(1.0), torch.tensor(0.5), torch.tensor(float("inf")),
                                 torch.tensor(float("nan"))], start=1):
        watch.record(loss, step, "bootstrap" if step < 3 else "amortized")
    assert watch.first() == (float("inf"), 3, "amortized")
    floats = DivergenceWatch()
    floats.record(2.0, 1, "amortized")
    floats.record(float("nan"), 2, "amortized")
    value, step, phase = floats.first()
    assert value != value and step == 2 and phase == "amortized"


def test_a_step_leaves_its_loss_and_agreement_on_the_device(small_dataset, tmp_path):
    """The learner returns tensors; the trainer reads them at its own intervals (no wait per step on a GPU)."""
    learner = make_trainer(small_dataset, tmp_path).learner
    batch = small_dataset.__getitems__(list(range(8)))
    result = learner.step(batch["image"], batch["ctf"], 0.0, torch.Generator().manual_seed(0), indices=batch["index"])
    assert result.phase == "bootstrap"
    assert isinstance(result.loss, torch.Tensor) and result.loss.dim() == 0 and not result.loss.requires_grad
    assert isinstance(result.agreement_degrees, torch.Tensor)
    assert learner.agreement_degrees == pytest.approx(float(result.agreement_degrees))
