"""Pose error against ground truth, up to the global rotation and hand an ab initio map is free to take.

A map reconstructed as ``V'(y) = V(M y)`` explains particle ``i`` with ``A'_i = A_i M``; its mirror image
with ``D A_i M D`` (``D = diag(1, 1, -1)``). ``M`` is fitted by orthogonal Procrustes for both hands and
the hand with the smaller median error wins. numpy and scipy only.
"""
import numpy as np
from scipy.spatial.transform import Rotation

MIRROR = np.diag([1.0, 1.0, -1.0])


def angleDegrees(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Rotation angle ``(N,)`` in degrees between matrices ``(N, 3, 3)``."""
    cosines = (np.einsum("nij,nij->n", first, second) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))


def _nearestRotation(matrix: np.ndarray) -> np.ndarray:
    left, _, right = np.linalg.svd(matrix)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(left @ right))])
    return left @ fix @ right


def alignedMedianErrorDegrees(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Median angle (degrees) between predicted and true matrices ``A`` ``(N, 3, 3)`` after the best global
    rotation, trying both hands."""
    best = np.inf
    for hand in (np.eye(3), MIRROR):
        handed = hand @ truth @ hand
        rotation = _nearestRotation(np.einsum("nji,njk->ik", handed, predicted))
        best = min(best, float(np.median(angleDegrees(predicted, handed @ rotation))))
    return best


def randomBaselineDegrees(truth: np.ndarray, seed: int = 0, repeats: int = 5) -> float:
    """:func:`alignedMedianErrorDegrees` of uniformly random predictions (mean over ``repeats`` draws)."""
    errors = [alignedMedianErrorDegrees(Rotation.random(len(truth), random_state=seed + k).as_matrix(), truth)
              for k in range(repeats)]
    return float(np.mean(errors))
