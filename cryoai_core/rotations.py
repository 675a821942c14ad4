"""Rotations: RELION Euler angles, the 6D representation, uniform sampling and distances (via ``roma``).

Conventions (written here once):

- A pose's rotation is RELION's matrix ``A`` of the Euler angles ``(rot, tilt, psi)`` in degrees (ZYZ,
  ``Euler_angles2matrix``, computed once in :mod:`cryoai_core.relion_euler`). ``A`` maps map
  coordinates to image coordinates: the particle image is ``image(x, y) = ∫ V(Aᵀ (x, y, z)) dz`` and
  its transform is the central slice ``V̂(Aᵀ (kx, ky, 0))``. The paper's ``R_i`` is therefore ``Aᵀ``.
  ``A`` equals scipy's / roma's extrinsic ``'zyz'`` rotation of the negated angles (the transpose of
  the intrinsic ``'ZYZ'`` rotation of the angles).
- The 6D representation holds the first two **columns** of the matrix (``roma.special_gramschmidt``).
- Mirroring a map by ``D = diag(1, 1, -1)`` turns the pose ``A`` of every projection into ``D A D``.
"""
import numpy as np
import roma
import torch

from cryoai_core import relion_euler

MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
"""``D = diag(1, 1, -1)``: the mirror ``z -> -z`` that relates the two hands of a map."""


def euler_to_matrix(angles_degrees) -> torch.Tensor:
    """RELION rotation matrices ``A`` from Euler angles (tensor wrapper of :mod:`cryoai_core.relion_euler`).

    Args:
        angles_degrees: ``(..., 3)`` ``(rot, tilt, psi)`` in degrees (tensor or array).

    Returns:
        ``(..., 3, 3)`` matrices on the input's device, in its floating dtype (float64 otherwise).
    """
    angles = torch.as_tensor(angles_degrees)
    dtype = angles.dtype if angles.is_floating_point() else torch.float64
    matrices = relion_euler.euler_to_matrix(angles.detach().cpu().double().numpy())
    return torch.from_numpy(matrices).to(device=angles.device, dtype=dtype)


def matrix_to_euler(matrices) -> torch.Tensor:
    """RELION Euler angles ``(rot, tilt, psi)`` in degrees, ``(..., 3)``, of matrices ``A`` ``(..., 3, 3)``.

    The tilt lies in ``[0, 180]``; rot and psi in ``(-180, 180]`` (see :mod:`cryoai_core.relion_euler`).
    """
    matrices = torch.as_tensor(matrices)
    dtype = matrices.dtype if matrices.is_floating_point() else torch.float64
    angles = relion_euler.matrix_to_euler(matrices.detach().cpu().double().numpy())
    return torch.from_numpy(angles).to(device=matrices.device, dtype=dtype)


def sixd_to_matrix(sixd: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` from ``(..., 6)`` vectors: two 3-vectors made the first two columns
    by Gram-Schmidt (``roma.special_gramschmidt``)."""
    columns = sixd.reshape(*sixd.shape[:-1], 2, 3).transpose(-1, -2)
    return roma.special_gramschmidt(columns, epsilon=1e-6)


def matrix_to_sixd(matrices: torch.Tensor) -> torch.Tensor:
    """The 6D representation ``(..., 6)`` (first column, then second column) of ``(..., 3, 3)`` matrices."""
    return matrices[..., :, :2].transpose(-1, -2).reshape(*matrices.shape[:-2], 6)


def random_rotations(count: int, generator: torch.Generator | None = None,
                     dtype=torch.float64) -> torch.Tensor:
    """``count`` rotation matrices ``(count, 3, 3)`` drawn uniformly (Haar measure) on SO(3)."""
    quaternions = torch.randn(count, 4, generator=generator, dtype=torch.float64)
    quaternions = quaternions / torch.linalg.vector_norm(quaternions, dim=-1, keepdim=True)
    return roma.unitquat_to_rotmat(quaternions).to(dtype)


def geodesic_angle(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Angle in radians of ``first @ secondᵀ``, shape ``(...,)``, for ``(..., 3, 3)`` inputs."""
    return roma.rotmat_geodesic_distance(first, second)


def squared_frobenius_to_degrees(squared_norm) -> np.ndarray:
    """Angle θ in degrees from ``||R1 - R2||_F² = 8 sin²(θ/2)``."""
    value = np.clip(np.asarray(squared_norm, dtype=np.float64) / 8.0, 0.0, 1.0)
    return np.degrees(2.0 * np.arcsin(np.sqrt(value)))


def compose_in_plane_180(matrices: torch.Tensor) -> torch.Tensor:
    """Pose of an image rotated by 180° in plane: ``A' = R_z(π) A`` (``psi -> psi + 180``)."""
    flip = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
                        dtype=matrices.dtype, device=matrices.device)
    return flip @ matrices


def compose_in_plane_quarter_turns(matrices: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Poses ``(B, 3, 3)`` of images rotated by ``turns`` ``(B,)`` quarter turns in plane
    (:func:`cryoai_core.fourier.rotate_quarter_turns_in_plane`): ``A' = R_z(turns · 90°) A``."""
    angles = turns.to(matrices.dtype) * (torch.pi / 2)
    return in_plane_rotations(angles) @ matrices


def in_plane_rotations(angles_radians: torch.Tensor) -> torch.Tensor:
    """Rotations ``(B, 3, 3)`` about z by ``angles_radians`` ``(B,)`` (from +x towards +y); their upper-left
    ``2 x 2`` block turns image vectors such as origins."""
    cos, sin = torch.cos(angles_radians).round(decimals=12), torch.sin(angles_radians).round(decimals=12)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    return torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=-1).reshape(-1, 3, 3)

