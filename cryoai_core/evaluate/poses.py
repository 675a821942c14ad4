"""Pose accuracy against ground truth, as in the cryoAI paper: one global rotation (and hand), then errors.

A reconstruction is only defined up to a rotation and a hand, so predicted poses are compared with the
true ones after one global alignment. With RELION matrices ``A`` (projection = rotate the map by ``A``,
then integrate along z; see :mod:`cryoai_core.rotations`):

- if the predicted map is the true one rotated, ``V_pred(y) = V_true(G y)``, then a particle with true
  pose ``T_i`` has predicted pose ``A_i = T_i G``: the global rotation multiplies on the **right**;
- if the predicted map has the other hand, ``V_pred(y) = V_true(G D y)`` with ``D = diag(1, 1, −1)``,
  then ``D A_i D = T_i G`` (no in-plane flip is involved: the projection along z of ``V(D x)`` with pose
  ``D A D`` is the projection of ``V`` with pose ``A``).

``G`` is thus the rotation :func:`cryoai_core.evaluate.alignment.align_volumes` returns for the predicted
map against the true one. It is fitted by orthogonal Procrustes (``roma.special_procrustes`` of
``Σ T_iᵀ A_i``), then re-fitted a few times on the best half of the particles so that outliers do not
pull it; both hands are tried and the one with the smaller median error is kept.

Shifts: the rotation and the mirror keep the box centre, but a map learned ab initio may also be
translated against the truth (``V_pred(y) = V_true(G Dᵐ y + t)``, ``t`` the translation of ``align_volumes``,
voxels). A particle with true origin ``o_i`` then has the origin ``o_i − (T_i t)_xy`` against the predicted
map, in either hand (see :mod:`cryoai_core.recentre`). The raw errors compare the origins as they are; ``t``
is also fitted to the origins by least squares (:func:`fit_map_translation`, on the particles within 20°),
and the errors left once it is taken out measure the shifts themselves, whatever the map's position.
"""
import logging

import numpy as np
import roma
import torch

from cryoai_core.rotations import MIRROR, geodesic_angle

logger = logging.getLogger(__name__)

ANGLE_THRESHOLDS_DEGREES = (5.0, 10.0, 20.0)
"""Angles for the reported fractions of particles within a given geodesic error."""
TRANSLATION_FIT_DEGREES = 20.0
"""Particles whose rotation is within this error fit the map's translation (:func:`fit_map_translation`)."""


def _as_rotations(matrices, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(matrices, dtype=np.float64))
    if tensor.ndim != 3 or tensor.shape[1:] != (3, 3):
        raise ValueError(f"{name} must have shape (N, 3, 3), got {tuple(tensor.shape)}")
    return tensor


def fit_global_rotation(pred_rotations: torch.Tensor, true_rotations: torch.Tensor, iterations: int = 3,
                        inlier_fraction: float = 0.5) -> torch.Tensor:
    """Rotation ``G`` ``(3, 3)`` minimizing ``Σ ||A_i − T_i G||²_F``, re-fitted on the best particles.

    Args:
        pred_rotations: ``(N, 3, 3)`` predicted ``A_i``.
        true_rotations: ``(N, 3, 3)`` true ``T_i``.
        iterations: re-fits on the ``inlier_fraction`` of particles with the smallest error.
        inlier_fraction: share of particles kept in each re-fit.
    """
    products = true_rotations.transpose(-1, -2) @ pred_rotations
    rotation = roma.special_procrustes(products.sum(dim=0))
    keep = max(3, int(round(inlier_fraction * len(products))))
    for _ in range(iterations):
        errors = ((products - rotation).square()).sum(dim=(-2, -1))
        best = torch.argsort(errors)[:keep]
        rotation = roma.special_procrustes(products[best].sum(dim=0))
    return rotation


def _errors(pred_rotations, true_rotations, rotation):
    aligned = pred_rotations @ rotation.transpose(-1, -2)
    squared_frobenius = (aligned - true_rotations).square().sum(dim=(-2, -1))
    angles = torch.rad2deg(geodesic_angle(aligned, true_rotations))
    return squared_frobenius.numpy(), angles.numpy()


def pose_errors(pred_rotations, true_rotations, pred_shifts_px=None, true_shifts_px=None,
                try_mirror: bool = True) -> dict:
    """The paper's pose metrics after the best global rotation and hand.

    Args:
        pred_rotations: ``(N, 3, 3)`` predicted RELION matrices ``A_i``.
        true_rotations: ``(N, 3, 3)`` true matrices ``T_i`` of the same particles, in the same order.
        pred_shifts_px, true_shifts_px: optional ``(N, 2)`` shifts (RELION origins ``(x, y)``) in pixels.
        try_mirror: also try the opposite hand (``A_i -> D A_i D``).

    Returns:
        A dict of plain Python values: ``num_particles``; ``hand`` (``"original"`` or ``"mirrored"``);
        ``global_rotation`` (``G`` as nested lists, ``A_i ≈ T_i G`` after the hand change);
        ``median_squared_frobenius`` and ``mean_squared_frobenius`` of ``||A_i Gᵀ − T_i||²_F``;
        ``median_angle_degrees`` / ``mean_angle_degrees`` (geodesic); ``fraction_within_{5,10,20}_degrees``;
        and with shifts, ``shift_mse_px2`` (mean squared L2 error, px²), ``median_shift_error_px``,
        ``map_translation_px`` (:func:`fit_map_translation`) and ``median_shift_error_map_translated_px`` (the
        median error once that translation is taken out).
    """
    pred = _as_rotations(pred_rotations, "predicted rotations")
    true = _as_rotations(true_rotations, "true rotations")
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predicted poses for {len(true)} true poses")
    if len(pred) < 3:
        raise ValueError(f"need at least 3 particles to align poses, got {len(pred)}")
    mirror = MIRROR.to(pred.dtype)
    hands = [("original", pred)]
    if try_mirror:
        hands.append(("mirrored", mirror @ pred @ mirror))
    best = None
    for hand, candidate in hands:
        rotation = fit_global_rotation(candidate, true)
        squared_frobenius, angles = _errors(candidate, true, rotation)
        median = float(np.median(squared_frobenius))
        logger.info("hand %s: median squared Frobenius error %.4f", hand, median)
        if best is None or median < best[0]:
            best = (median, hand, rotation, squared_frobenius, angles)
    median, hand, rotation, squared_frobenius, angles = best
    report = {
        "num_particles": len(pred),
        "hand": hand,
        "global_rotation": rotation.tolist(),
        "median_squared_frobenius": median,
        "mean_squared_frobenius": float(np.mean(squared_frobenius)),
        "median_angle_degrees": float(np.median(angles)),
        "mean_angle_degrees": float(np.mean(angles)),
    }
    for threshold in ANGLE_THRESHOLDS_DEGREES:
        report[f"fraction_within_{threshold:g}_degrees"] = float(np.mean(angles <= threshold))
    if (pred_shifts_px is None) != (true_shifts_px is None):
        raise ValueError("give both predicted and true shifts, or neither")
    if pred_shifts_px is not None:
        report.update(shift_errors(pred_shifts_px, true_shifts_px))
        close = angles <= TRANSLATION_FIT_DEGREES
        selected = close if close.sum() >= 3 else np.ones_like(close)
        true_matrices = true.numpy()
        translation = fit_map_translation(true_matrices[selected], np.asarray(pred_shifts_px)[selected],
                                          np.asarray(true_shifts_px)[selected])
        moved = np.asarray(true_shifts_px, dtype=np.float64) - (true_matrices @ translation)[:, :2]
        report["map_translation_px"] = translation.tolist()
        report["median_shift_error_map_translated_px"] = shift_errors(pred_shifts_px, moved)["median_shift_error_px"]
    return report


def fit_map_translation(true_rotations, pred_shifts_px, true_shifts_px) -> np.ndarray:
    """Least-squares translation ``t`` ``(3,)`` voxels ``(x, y, z)`` of the predicted map against the true one
    (the ``shift_px`` of :func:`~cryoai_core.evaluate.alignment.align_volumes`) that the origins imply:
    ``o_pred − o_true ≈ −(T t)_xy`` over the particles given.

    Args:
        true_rotations: ``(N, 3, 3)`` true RELION matrices ``T_i``.
        pred_shifts_px, true_shifts_px: ``(N, 2)`` RELION origins in pixels.
    """
    matrices = np.asarray(true_rotations, dtype=np.float64)[:, :2, :].reshape(-1, 3)
    differences = (np.asarray(pred_shifts_px, dtype=np.float64) - np.asarray(true_shifts_px)).reshape(-1)
    return np.linalg.lstsq(-matrices, differences, rcond=None)[0]


def shift_errors(pred_shifts_px, true_shifts_px) -> dict:
    """Errors of ``(N, 2)`` shifts in pixels.

    Returns ``shift_mse_px2`` (mean of ``||s_pred − s_true||²``, px², the paper's metric) and
    ``median_shift_error_px`` (median of ``||s_pred − s_true||``).
    """
    pred = np.asarray(pred_shifts_px, dtype=np.float64)
    true = np.asarray(true_shifts_px, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"shifts must both have shape (N, 2), got {pred.shape} and {true.shape}")
    squared = np.sum((pred - true) ** 2, axis=1)
    return {"shift_mse_px2": float(np.mean(squared)),
            "median_shift_error_px": float(np.median(np.sqrt(squared)))}
