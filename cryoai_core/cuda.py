"""Reduced precision where it is safe, and host-to-device copies, in one place.

* The pose encoder (convolutions, batch norm, fully connected heads) runs under bf16 autocast on CUDA
  (training and inference), and on a CPU that multiplies bf16 natively (AVX512-BF16 or AMX-BF16) for
  inference only (the encoder in eval mode: ``predict-poses`` and the export's pose predictions). Its
  Fourier filter bank and per-image normalisation before it, and the Gram-Schmidt of its 6D output after
  it, stay in fp32 (see ``models/encoder.py``). CPU training stays fp32 throughout: the realistic suite's
  figures were measured that way.
* TF32 is allowed for cuDNN convolutions (the encoder) during training only, and matrix products keep
  full fp32: FourierNet's first sine layers multiply by ω₀ = 30-40, and the pose search's scores are
  differences of large sums, both of which a 10-bit mantissa would visibly perturb.
* Batches are copied from pinned host memory without blocking the host.
"""
import contextlib

import torch

ENCODER_AUTOCAST_DTYPE = torch.bfloat16
"""Autocast type of the encoder (see the module's docstring for where it applies)."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16). Without them oneDNN
    emulates bf16 convolutions, which is slower than fp32, so the encoder keeps fp32 there."""
    query = getattr(torch.cpu, "get_capabilities", None)
    if query is None:  # torch releases before the query existed: keep fp32
        return False
    capabilities = query()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def encoder_dtype(device: torch.device, inference: bool = False) -> torch.dtype:
    """The type the encoder computes in: :data:`ENCODER_AUTOCAST_DTYPE` on CUDA, and on a CPU with native bf16
    when ``inference`` (the encoder in eval mode); float32 otherwise."""
    if device.type == "cuda" or (device.type == "cpu" and inference and cpu_has_native_bf16()):
        return ENCODER_AUTOCAST_DTYPE
    return torch.float32


def encoder_autocast(device: torch.device, inference: bool = False):
    """Context that runs the encoder in :func:`encoder_dtype` (a no-op where that is float32)."""
    dtype = encoder_dtype(device, inference)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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
