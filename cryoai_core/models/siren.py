"""SIREN: a multilayer perceptron with sine activations (Sitzmann et al., NeurIPS 2020).

Every hidden layer computes ``sin(ω0 (W x + b))``; the last layer is linear. Initialisation follows the
SIREN paper: the first layer's weights are uniform in ``±1/n_in``, the others in ``±sqrt(6/n_in)/ω0``, so
that pre-activations stay unit-scale at any depth.
"""
import math

import torch
from torch import nn

from cryoai_core.models.onednn import linear


class SineLayer(nn.Module):
    """``sin(ω0 (W x + b))``; ``(..., in_features) -> (..., out_features)``."""

    def __init__(self, in_features: int, out_features: int, omega_0: float, first: bool):
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if first else math.sqrt(6.0 / in_features) / omega_0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            self.linear.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = _Sine.apply(x.reshape(-1, x.shape[-1]), self.linear.weight, self.linear.bias, self.omega_0)
        return flat.reshape(*x.shape[:-1], flat.shape[-1])


class _Sine(torch.autograd.Function):
    """``sin(ω0 (b + x Wᵀ))`` for ``x`` ``(N, in)``, with a backward pass that makes one product per point.

    Autograd's own backward of the same expression multiplies the ``(N, out)`` gradient by ``ω0`` twice (once
    for ``x``, once for ``b``) and by ``cos`` once, each a pass over ``N x out`` values; here ``ω0`` goes into
    the small ``(out, in)`` weight or the reduced sums instead, and ``cos`` times the gradient is one pass. The
    products with the weight go through :func:`~cryoai_core.models.onednn.linear` (oneDNN on a CPU).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, omega_0):
        pre = linear(x, omega_0 * weight, omega_0 * bias)                             # ω0 (b + x Wᵀ)
        ctx.save_for_backward(x, weight, pre)
        ctx.omega_0 = omega_0
        return torch.sin(pre)

    @staticmethod
    def backward(ctx, grad):
        x, weight, pre = ctx.saved_tensors
        omega_0 = ctx.omega_0
        slope = torch.cos(pre).mul_(grad)
        grad_x = linear(slope, (omega_0 * weight).t().contiguous()) if ctx.needs_input_grad[0] else None
        # Xᵀ G rather than Gᵀ X: twice as fast for the first layer (3 inputs), the same for the others.
        grad_weight = (x.t() @ slope).mul_(omega_0).t().contiguous() if ctx.needs_input_grad[1] else None
        grad_bias = slope.sum(dim=0).mul_(omega_0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


class Siren(nn.Module):
    """SIREN with ``hidden_layers`` sine layers after the first one and a linear output layer.

    Args:
        in_features: input dimension (3 for Fourier coordinates).
        hidden_features: width of every hidden layer.
        hidden_layers: number of hidden sine layers after the first sine layer.
        out_features: output dimension.
        first_omega_0: frequency factor of the first layer.
        hidden_omega_0: frequency factor of the other sine layers.
    """

    def __init__(self, in_features: int, hidden_features: int, hidden_layers: int, out_features: int,
                 first_omega_0: float = 30.0, hidden_omega_0: float = 30.0):
        super().__init__()
        layers = [SineLayer(in_features, hidden_features, first_omega_0, first=True)]
        layers += [SineLayer(hidden_features, hidden_features, hidden_omega_0, first=False)
                   for _ in range(hidden_layers)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden_features, out_features)
        bound = math.sqrt(6.0 / hidden_features) / hidden_omega_0
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) -> (..., out_features)``."""
        return self.head(self.body(x))
