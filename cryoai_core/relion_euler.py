"""RELION Euler angles <-> rotation matrices, numpy only (the one implementation of the ZYZ convention).

The matrix ``A`` of the angles ``(rot, tilt, psi)`` in degrees is RELION's ``Euler_angles2matrix``
(docs/conventions.md, "Rotations and projection"): with ``ca, sa`` the cosine and sine of rot, ``cb, sb``
of tilt and ``cg, sg`` of psi,

    A = [[ cg cb ca - sg sa,   cg cb sa + sg ca,  -cg sb],
         [-sg cb ca - cg sa,  -sg cb sa + cg ca,   sg sb],
         [ sb ca,              sb sa,              cb   ]]

``A`` maps map coordinates to image coordinates and is the transpose of scipy's intrinsic ``'ZYZ'``
rotation of the angles. This module imports numpy only, so that the particle readers
(:mod:`cryoai_core.io`) and the Scipion plugin use it without torch; :mod:`cryoai_core.rotations` wraps it
for tensors.
"""
import numpy as np

DEGENERATE_SIN_TILT = 1e-9
"""Below this ``sin(tilt)`` only ``rot + psi`` (tilt 0) or ``psi - rot`` (tilt 180) is defined; rot is set to 0."""


def euler_to_matrix(angles_degrees) -> np.ndarray:
    """RELION matrices ``A`` ``(..., 3, 3)`` (float64) of Euler angles ``(..., 3)`` ``(rot, tilt, psi)`` in degrees."""
    angles = np.radians(np.asarray(angles_degrees, dtype=np.float64))
    ca, sa = np.cos(angles[..., 0]), np.sin(angles[..., 0])
    cb, sb = np.cos(angles[..., 1]), np.sin(angles[..., 1])
    cg, sg = np.cos(angles[..., 2]), np.sin(angles[..., 2])
    rows = [np.stack([cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb], axis=-1),
            np.stack([-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb], axis=-1),
            np.stack([sb * ca, sb * sa, cb], axis=-1)]
    return np.stack(rows, axis=-2)


def matrix_to_euler(matrices) -> np.ndarray:
    """RELION Euler angles ``(..., 3)`` in degrees of matrices ``A`` ``(..., 3, 3)``.

    From the matrix above, ``A[2] = (sb ca, sb sa, cb)`` and ``A[:, 2] = (-cg sb, sg sb, cb)``. The tilt
    lies in ``[0, 180]``, rot and psi in ``(-180, 180]``. At tilt 0 or 180 rot is set to 0 and psi carries
    the in-plane angle.
    """
    a = np.asarray(matrices, dtype=np.float64)
    sin_tilt = np.hypot(a[..., 0, 2], a[..., 1, 2])
    tilt = np.arctan2(sin_tilt, a[..., 2, 2])
    rot = np.arctan2(a[..., 2, 1], a[..., 2, 0])
    psi = np.arctan2(a[..., 1, 2], -a[..., 0, 2])
    degenerate = sin_tilt < DEGENERATE_SIN_TILT
    upright = a[..., 2, 2] > 0
    psi_degenerate = np.where(upright, np.arctan2(a[..., 0, 1], a[..., 0, 0]),
                              np.arctan2(a[..., 1, 0], -a[..., 0, 0]))
    rot = np.where(degenerate, 0.0, rot)
    psi = np.where(degenerate, psi_degenerate, psi)
    return np.degrees(np.stack([rot, tilt, psi], axis=-1))
