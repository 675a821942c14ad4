"""What changes on a CUDA device, in one place: reduced precision where it is safe, and host-to-device copies.

* The pose encoder (convolutions, batch norm, fully connected heads) runs under bf16 autocast; its
  Fourier filter bank and per-image normalisation before it, and the Gram-Schmidt of its 6D output
  after it, stay in fp32 (see ``models/encoder.py``).
* TF32 is allowed for cuDNN convolutions (the encoder) during training only, and matrix products keep
  full fp32: FourierNet's first sine layers multiply by ω₀ = 30-40, and the pose search's scores are
  differences of large sums, both of which a 10-bit mantissa would visibly perturb.
* Batches are copied from pinned host memory without blocking the host.
Nothing here has an effect on the CPU.
"""
import contextlib

import torch

ENCODER_AUTOCAST_DTYPE = torch.bfloat16
"""Autocast type of the encoder on CUDA."""


def encoder_autocast(device: torch.device):
    """Context that runs the encoder in :data:`ENCODER_AUTOCAST_DTYPE` on CUDA (a no-op elsewhere)."""
    return torch.autocast("cuda", dtype=ENCODER_AUTOCAST_DTYPE, enabled=device.type == "cuda")


@contextlib.contextmanager
def tf32_convolutions(device: torch.device):
    """TF32 for cuDNN convolutions and none for matrix products while the block runs on CUDA; the previous
    settings are restored afterwards (a no-op for other devices)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: through pinned memory and a non-blocking copy for CUDA."""
    if device.type != "cuda":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)
