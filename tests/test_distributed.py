"""Distributed training (torch.distributed, gloo on the CPU): two ranks equal one process, checkpoints
move between rank counts, batch norm covers the global batch, and the launcher's command line."""
import argparse
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from cryoai_core.cli import abinit, main
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.readers import read_particles
from cryoai_core.train.distributed import AllReduceBatchNorm, Cluster, with_global_batch_norm
from cryoai_core.train.export import predict_all_poses
from cryoai_core.train.launch import command_line, parse_gpus, relaunch
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from ddp_worker import PREDICT_BATCH, tiny_config  # noqa: E402


def environment() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def run_worker(star: str, outdir: str, ranks: int, *extra) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks > 1 else [sys.executable]
    result = subprocess.run([*launcher, os.path.join(HERE, "ddp_worker.py"), star, outdir, *extra],
                            env=environment(), capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(outdir) -> list:
    with open(os.path.join(outdir, "metrics.csv")) as handle:
        return [(row["phase"], float(row["loss"])) for row in csv.DictReader(handle)]


def agreements(outdir) -> list:
    """Per-step median angle (degrees) between the encoder's poses and the poses it learns."""
    with open(os.path.join(outdir, "metrics.csv")) as handle:
        return [float(row["agreement_degrees"]) for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def star(tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("sim"))
    assert main(["simulate", "-o", outdir, "-n", "250", "--box", "16", "--pixel-size", "6", "--shift-sigma", "3",
                 "--seed", "2", "--no-progress"]) == 0
    return os.path.join(outdir, "particles.star")


@pytest.fixture()
def single_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_two_ranks_train_like_one_process_and_share_the_prediction(star, tmp_path):
    """Global batch 32 on 2 ranks (16 each) gives the per-step losses of 1 process with batch 32."""
    run_worker(star, str(tmp_path / "one"), 1)
    run_worker(star, str(tmp_path / "two"), 2)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 8  # 250 particles: 7 batches of 32 and one of 26 (13 per rank)
    assert [phase for phase, _ in one] == [phase for phase, _ in two]
    assert {"bootstrap", "amortized"} == {phase for phase, _ in one}
    np.testing.assert_allclose([loss for _, loss in two], [loss for _, loss in one], rtol=1e-4)
    # The encoder sees the same random quarter turns: each rank keeps its shard of the global batch's draw.
    np.testing.assert_allclose(agreements(tmp_path / "two"), agreements(tmp_path / "one"), atol=0.05)

    # The sharded prediction equals one process's prediction from the same weights.
    shared = torch.load(tmp_path / "two" / "poses.pt")
    assert shared["starts"] == list(range(0, 250, 2 * PREDICT_BATCH))
    state = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)
    learner = CryoAILearner(tiny_config())
    learner.encoder.load_state_dict(state["encoder"])
    learner.decoder.load_state_dict(state["decoder"])
    _, origins, rotations = predict_all_poses(learner, ParticleDataset(read_particles(star)), 1.0,
                                              batch_size=PREDICT_BATCH, progress_bar=False)
    torch.testing.assert_close(shared["rotations"], rotations, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared["origins"].double(), torch.from_numpy(origins), atol=1e-4, rtol=0)


def test_a_checkpoint_written_by_two_ranks_resumes_in_one_process(star, tmp_path):
    run_worker(star, str(tmp_path), 2, "--no-bootstrap")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["progress"]["images_seen"] == 250 and state["learner"]["steps"] == 8
    assert not any(name.startswith("module.") for name in state["encoder"])
    torch.manual_seed(0)
    learner = CryoAILearner(tiny_config(bootstrap=False, epochs=2.0))
    trainer = Trainer(learner, ParticleDataset(read_particles(star)), str(tmp_path), (0.0, 1.0), progress_bar=False)
    trainer.resume()
    torch.testing.assert_close(learner.decoder.state_dict(), state["decoder"])
    trainer.run()
    assert learner.steps == 16 and trainer.counters["images_seen"] == 500
    assert [phase for phase, _ in losses(tmp_path)] == ["amortized"] * 16


def test_the_cli_runs_under_the_launcher_and_rank_0_alone_writes(star, tmp_path, monkeypatch):
    """``relaunch`` is what ``--gpus 0,1`` calls; on the CPU the same launch runs gloo ranks."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT)
    run = str(tmp_path / "run")
    assert relaunch(["abinit", star, "-o", run, "--epochs", "1", "--batch-size", "50", "--device", "cpu",
                     "--threads", "1", "--no-progress", "--no-half-maps"], 2) == 0
    for name in ("volume.mrc", "particles.star", "checkpoint.pt", "config.yaml", "run.log"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    assert len(read_particles(os.path.join(run, "particles.star"))) == 250
    assert main(["abinit", star, "-o", run, "--resume", "--epochs", "2", "--batch-size", "50", "--device", "cpu",
                 "--threads", "1", "--no-progress", "--no-half-maps"]) == 0
    assert torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)["progress"]["images_seen"] == 500


@pytest.mark.parametrize("shape", [(6, 3, 5, 5), (8, 4)])
def test_all_reduce_batch_norm_equals_batch_norm_on_one_rank(single_rank_group, shape):
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(shape[1]) if len(shape) == 4 else torch.nn.BatchNorm1d(shape[1]))
    with torch.no_grad():
        plain[0].weight.uniform_(0.5, 1.5)
        plain[0].bias.uniform_(-0.5, 0.5)
    reference = {name: value.clone() for name, value in plain.state_dict().items()}
    inputs = torch.randn(shape) * 3 + 1
    expected = plain(inputs.clone().requires_grad_())
    expected.square().sum().backward()
    expected_grads = [parameter.grad.clone() for parameter in plain.parameters()]
    expected_stats = {name: value.clone() for name, value in plain.state_dict().items()}

    plain.load_state_dict(reference)
    for parameter in plain.parameters():
        parameter.grad = None
    converted = with_global_batch_norm(plain, cuda=False)
    assert isinstance(converted[0], AllReduceBatchNorm)
    x = inputs.clone().requires_grad_()
    output = converted(x)
    output.square().sum().backward()
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5)
    for parameter, grad in zip(converted.parameters(), expected_grads):
        torch.testing.assert_close(parameter.grad, grad, atol=1e-4, rtol=1e-4)
    for name, value in converted.state_dict().items():
        torch.testing.assert_close(value, expected_stats[name], atol=1e-5, rtol=1e-5)
    converted.eval()
    plain_eval = torch.nn.BatchNorm2d(shape[1]) if len(shape) == 4 else torch.nn.BatchNorm1d(shape[1])
    plain_eval.load_state_dict(converted[0].state_dict())
    plain_eval.eval()
    torch.testing.assert_close(converted(inputs), plain_eval(inputs))


def test_batches_are_trimmed_and_split_evenly():
    cluster = Cluster(rank=1, world_size=3)
    batch = list(range(10))
    assert cluster.usable(batch) == list(range(9))
    assert cluster.shard(cluster.usable(batch)) == [3, 4, 5]
    assert Cluster().shard(batch) == batch and Cluster().usable(batch) == batch


def test_the_launcher_reproduces_the_command_line():
    parser = argparse.ArgumentParser()
    abinit.add_args(parser)
    argv = ["p.star", "-o", "out", "--epochs", "2.5", "--batch-size", "64", "--gpus", "0,1", "--resume",
            "--no-progress"]
    args = parser.parse_args(argv)
    rebuilt = command_line("abinit", abinit.add_args, args)
    assert rebuilt[0] == "abinit"
    assert vars(parser.parse_args(rebuilt[1:])) == vars(args)
    assert parse_gpus("0,1, 3") == [0, 1, 3] and parse_gpus(None) == []
    for bad in ("0,a", "1,1"):
        with pytest.raises(ValueError):
            parse_gpus(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_gpus_without_cuda_is_one_clear_error(star, tmp_path, capsys):
    assert main(["abinit", star, "-o", str(tmp_path), "--gpus", "0,1", "--epochs", "1"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
