"""Per-particle score: how much better the map at the particle's pose explains the image than noise alone.

With white Gaussian noise of variance ``σ²`` per Fourier coefficient, the log-likelihood ratio of the
model "image = rendered map at the pose + noise" against "image = noise" is (Parseval, on the loss's
half-disk with Hermitian weights ``w``)::

    LLR = Σ_k w (|Y_k|² − |Y_k − P_k|²) / (2 σ²) = Σ_k w · (energy − distance) / (2 σ²)

in nats, where ``distance`` is the loss's per-image distance (:func:`cryoai_core.train.loss.weighted_distances`)
and ``energy`` the distance to an empty prediction. ``σ²`` is estimated once per data set as the median
distance (most images are particles that the map explains down to the noise). Particles score high
(tens of nats at SNR 0.1, 32 px); empty ice and false picks score near zero or below, so the score can be
thresholded or used with Scipion's subset tools to drop junk.

The same gain ``energy − distance`` (the image power that the map explains at the pose) weights the
images of a training batch when ``TrainConfig.junk_weighting`` is set (:func:`junk_weights`), so that
pure-noise images stop pulling the map.
"""
import numpy as np
import torch

SCORE_COLUMN = "rlnCryoaiScore"
"""Column of the exported particles.star holding the score (RELION keeps unknown ``rln`` columns)."""


def noise_variance(distances) -> float:
    """Per-coefficient noise power estimate: the median of the per-image distances ``(N,)`` (no float64 copy of
    a float32 array: the median's own copy is the only one)."""
    distances = np.asarray(distances)
    if distances.size == 0:
        raise ValueError("no distances to estimate the noise from")
    return float(max(float(np.median(distances)), np.finfo(np.float64).tiny))


def scores_from_gains(gains, total_weight: float, variance: float) -> np.ndarray:
    """Scores ``(N,)`` in nats (float64) from per-image gains ``energy − distance`` ``(N,)`` in loss units."""
    return np.asarray(gains, dtype=np.float64) * (float(total_weight) / (2.0 * float(variance)))


def log_likelihood_ratios(distances, energies, total_weight: float, variance: float | None = None) -> np.ndarray:
    """Scores ``(N,)`` in nats from per-image distances and energies ``(N,)`` (loss units, averaged over the
    ``total_weight = Σ w`` weighted Fourier points); ``variance`` defaults to :func:`noise_variance`."""
    distances = np.asarray(distances, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    if distances.shape != energies.shape:
        raise ValueError(f"distances {distances.shape} and energies {energies.shape} differ in shape")
    variance = noise_variance(distances) if variance is None else float(variance)
    return scores_from_gains(energies - distances, total_weight, variance)


def junk_weights(distances: torch.Tensor, energies: torch.Tensor, fraction: float,
                 gather=None) -> torch.Tensor:
    """Per-image weights ``(B,)`` in ``[0, 1]`` for a batch's distances and energies ``(B,)``.

    ``gain = energy − distance`` is about the particle's signal power for a particle at its pose and about 0
    (or below) for a pure-noise image. ``w = clamp(gain / (fraction · median gain), 0, 1)``: images that the map
    explains at least ``fraction`` as well as the batch's median image keep their full weight. While the
    map explains nothing (median gain ≤ 0), every weight is 1. ``gather`` concatenates a per-image tensor over
    the ranks of a distributed run, so that the median is the global batch's, not this rank's shard's.
    """
    gains = (energies - distances).detach()
    everyone = gains if gather is None else gather(gains)
    scale = fraction * everyone.median()
    weights = (gains / scale.clamp_min(torch.finfo(gains.dtype).tiny)).clamp(0.0, 1.0)
    return torch.where(scale > 0, weights, torch.ones_like(gains))  # no host sync inside a training step


def junk_weighted_loss(distances: torch.Tensor, energies: torch.Tensor, fraction: float,
                       gather=None) -> torch.Tensor:
    """The map's loss with :func:`junk_weights`: ``Σ w·d / Σ w`` over the global batch.

    With ``gather`` (distributed run), each rank returns ``world · Σ_rank w·d / Σ_all w``, so that the mean
    over ranks that DDP takes of the gradients (and the mean of the logged losses) is the global batch's
    weighted mean, as one process with the whole batch computes it.
    """
    weights = junk_weights(distances, energies, fraction, gather)
    everyone = weights if gather is None else gather(weights)
    world = everyone.shape[0] / max(weights.shape[0], 1)
    return (weights * distances).sum() * world / everyone.sum()
