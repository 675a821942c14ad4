"""The CUDA path: TF32 scoping everywhere; on a machine with CUDA, one training step and the encoder agree
with the CPU (the encoder runs in bf16 autocast there). Skipped where CUDA is absent."""
import pytest
import torch

from cryoai_core.cuda import encoder_autocast, tf32_convolutions, to_device
from cryoai_core.train.config import build
from cryoai_core.train.learner import CryoAILearner

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_tf32_is_allowed_for_convolutions_only_and_only_inside_the_block():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with tf32_convolutions(torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with tf32_convolutions(torch.device("cpu")):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_nothing_changes_on_the_cpu():
    tensor = torch.randn(3)
    assert to_device(tensor, torch.device("cpu")) is tensor
    with encoder_autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def tiny(device: str) -> CryoAILearner:
    torch.manual_seed(0)
    config = build(box=32, pixel_size_angstrom=3.0, input_box=32, input_pixel_size_angstrom=3.0, epochs=1,
                   batch_size=16, bootstrap=False, device=device)
    return CryoAILearner(config).to(device)


@needs_cuda
def test_one_step_on_cuda_agrees_with_the_cpu():
    images = torch.randn(16, 32, 32, generator=torch.Generator().manual_seed(1))
    ctf = torch.tensor([[15000.0, 14500.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0]]).repeat(16, 1)
    cpu, cuda = tiny("cpu"), tiny("cuda")
    loss_cpu = float(cpu.step(images, ctf, 0.5).loss)
    loss_cuda = float(cuda.step(to_device(images, torch.device("cuda")), ctf.cuda(), 0.5).loss)
    assert loss_cuda == pytest.approx(loss_cpu, rel=2e-2)
    with torch.no_grad():
        cpu.eval(), cuda.eval()
        rotations_cpu = cpu.encoder(images)[0]
        rotations_cuda = cuda.encoder(images.cuda())[0]
    assert rotations_cuda.dtype == torch.float32
    identity = torch.eye(3, device="cuda").expand_as(rotations_cuda)
    torch.testing.assert_close(rotations_cuda @ rotations_cuda.transpose(-1, -2), identity, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotations_cuda.cpu(), rotations_cpu, atol=5e-2, rtol=0)
