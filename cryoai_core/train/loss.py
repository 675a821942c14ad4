"""Fourier-space L2 distances and the symmetrized loss (cryoAI paper, eq. 10).

Images and predictions are compared on a half-disk of Fourier points (see
:class:`cryoai_core.models.forward_model.HalfDisk`) with Hermitian weights, so that the distance equals the
real-space squared error of the band-limited images (Parseval), up to a constant factor.
"""
import torch


def weighted_distances(predicted: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-image distances ``(B,)``: ``Σ_k w_k |P_k − Y_k|² / Σ_k w_k`` for ``(B, N)`` complex inputs."""
    return ((predicted - targets).abs() ** 2 * weights).sum(dim=-1) / weights.sum()


def symmetrized_loss(distances_direct: torch.Tensor, distances_flipped: torch.Tensor) -> torch.Tensor:
    """The per-image minimum of the two paths (image and its 180° in-plane rotation).

    Args:
        distances_direct: ``(B,)`` distances of the images rendered at the poses predicted for them.
        distances_flipped: ``(B,)`` distances of the rotated copies at the poses predicted for the copies.

    Returns:
        The mean of the per-image minima (a scalar); gradients only reach the winning path.
    """
    return torch.minimum(distances_direct, distances_flipped).mean()
