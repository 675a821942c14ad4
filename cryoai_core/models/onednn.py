"""Dense products ``x Wᵀ + b`` on the CPU through oneDNN, the library PyTorch already runs its CPU convolutions on.

On a CPU, PyTorch sends a float32 ``addmm`` to the BLAS it was built with (MKL on x86). For FourierNet's tall and
narrow products, ``(N, 96) x (96, 96)`` with ``N`` = 192 128 slice points per 64 px step, oneDNN's kernel is 2.5-3.5x
faster on the project's 2-core test machine (AMD EPYC; ``benchmarks/README.md``, thirteenth session), with the
same result up to float rounding. MKL stays faster where the long axis is summed over (a weight's gradient
``Gᵀ X``) or the output is 2 wide, so only the products that gain call :func:`linear`.

oneDNN is reached through ``torch.ops.mkldnn._linear_pointwise``, the operator that PyTorch's own compiler emits for
CPU linear layers. Where it is missing (a PyTorch built without oneDNN), fails or disagrees with
``torch.nn.functional.linear`` on a small product tried at import, or the tensors are not float32 CPU tensors,
:func:`linear` is ``torch.nn.functional.linear``.
"""
import logging

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def _onednn_linear():
    """The oneDNN linear operator of this PyTorch build, or ``None`` where it is missing or, on a small product
    tried once, fails or disagrees with ``torch.nn.functional.linear`` (a private operator may change)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        operator = torch.ops.mkldnn._linear_pointwise
        x = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 7.0
        weight, bias = torch.arange(6, dtype=torch.float32).reshape(2, 3) / 5.0, torch.tensor([0.5, -1.0])
        if torch.allclose(operator(x, weight, bias, "none", [], ""), F.linear(x, weight, bias), atol=1e-5):
            return operator
    except (AttributeError, RuntimeError, TypeError) as error:
        logger.debug("oneDNN linear unavailable: %s", error)
    logger.debug("dense products through torch.nn.functional.linear")
    return None


_LINEAR = _onednn_linear()


def uses_onednn(x: torch.Tensor) -> bool:
    """True when :func:`linear` on ``x`` runs through oneDNN."""
    return _LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x Wᵀ + b``: ``x (..., in)``, ``weight (out, in)``, ``bias (out,)`` -> ``(..., out)``.

    Not differentiable by autograd on the oneDNN path: call it on tensors that need no gradient, or inside an
    ``autograd.Function`` that writes its own backward."""
    if not (uses_onednn(x) and weight.dtype == x.dtype and weight.device == x.device):
        return F.linear(x, weight, bias)
    return _LINEAR(x, weight, bias, "none", [], "")
