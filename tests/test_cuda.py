"""Reduced precision and device copies: TF32 scoping everywhere; the encoder's bf16 autocast on a CPU with native
bf16 (inference only); on a machine with CUDA, one training step and the encoder agree with the CPU (the
encoder runs in bf16 autocast there). The CUDA tests are skipped where CUDA is absent."""
import copy

import pytest
import torch

from cryoai_core import cuda as precision
from cryoai_core.cuda import cpu_has_native_bf16, encoder_autocast, tf32_convolutions, to_device
from cryoai_core.models.encoder import PoseEncoder
from cryoai_core.rotations import geodesic_angle
from cryoai_core.train.config import EncoderConfig, build
from cryoai_core.train.learner import CryoAILearner

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_tf32_is_allowed_for_convolutions_only_and_only_inside_the_block():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with tf32_convolutions(torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
    with tf32_convolutions(torch.device("cpu")):
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_cpu_training_stays_fp32_and_copies_are_no_ops(monkeypatch):
    tensor = torch.randn(3)
    assert to_device(tensor, torch.device("cpu")) is tensor
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with encoder_autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with encoder_autocast(torch.device("cpu"), inference=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with encoder_autocast(torch.device("cpu"), inference=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("flags, native", [({"avx512_bf16": True}, True), ({"amx_bf16": True}, True),
                                           ({"avx512_f": True, "avx512_bf16": False}, False), ({}, False)])
def test_native_bf16_is_read_from_the_cpu_capabilities(monkeypatch, flags, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    assert cpu_has_native_bf16() is native


def test_the_encoder_uses_bf16_on_the_cpu_only_for_inference(monkeypatch):
    """Train mode is the same fp32 arithmetic with or without native bf16; in eval mode the bf16 encoder's
    rotations stay orthonormal fp32 and within a fraction of a degree of the fp32 ones."""
    torch.manual_seed(4)
    encoder = PoseEncoder(EncoderConfig(), 64, max_shift_angstrom=20.0)
    images = torch.randn(32, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        encoder.train()(images)  # batch-norm statistics of the kind a trained encoder has
    state = copy.deepcopy(encoder.state_dict())
    outputs = {}
    for native in (False, True):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        for mode in ("train", "eval"):
            encoder.load_state_dict(state)
            with torch.no_grad():
                outputs[mode, native] = encoder.train(mode == "train")(images)
    for fp32, candidate in zip(outputs["train", False], outputs["train", True]):
        torch.testing.assert_close(candidate, fp32, atol=0, rtol=0)
    rotations, origins, _ = outputs["eval", True]
    assert rotations.dtype == origins.dtype == torch.float32
    torch.testing.assert_close(rotations @ rotations.transpose(-1, -2), torch.eye(3).expand(32, 3, 3),
                               atol=1e-5, rtol=0)
    angles = torch.rad2deg(geodesic_angle(rotations.double(), outputs["eval", False][0].double()))
    assert 0 < angles.max() < 1.0
    torch.testing.assert_close(origins, outputs["eval", False][1], atol=0.05, rtol=0)


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
