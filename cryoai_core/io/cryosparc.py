"""cryoSPARC particle files (``.cs``) -> :class:`~cryoai_core.io.particles.ParticleTable`.

A ``.cs`` file is a numpy structured array saved with ``np.save`` (one record per particle). Fields
read here:

- ``blob/path`` (bytes, relative to the cryoSPARC project folder; a leading ``>`` is dropped, as
  cryoDRGN's ``CsSource`` does), ``blob/idx`` (**0-based** image index), ``blob/shape`` ``(ny, nx)``,
  ``blob/psize_A`` (Å per pixel of the stored images).
- CTF: ``ctf/df1_A`` and ``ctf/df2_A`` (RELION defocus U and V, Å), ``ctf/df_angle_rad`` (RELION
  defocus angle, in radians), ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``,
  ``ctf/phase_shift_rad`` (radians; 0 if absent), ``ctf/bfactor`` (0 if absent).
- Poses (homogeneous / non-uniform refinement): ``alignments3D/pose`` and ``alignments3D/shift``.

Pose convention (pinned by ``tests/test_io_cryosparc.py``): ``alignments3D/pose`` is a rotation vector
``v`` (axis times angle, radians). With ``R(v)`` the usual right-handed Rodrigues matrix
``I + sin θ K + (1 - cos θ) K²`` (scipy's ``Rotation.from_rotvec``), RELION's matrix of the particle is
``A = R(v)ᵀ``, and ``alignments3D/shift`` (pixels of ``blob/psize_A``) equals RELION's
``(rlnOriginX, rlnOriginY)`` in pixels, same sign. Sources: pyem ``pyem/metadata/cryosparc2.py``
(csparc2star copies ``alignments3D/shift`` to the RELION origins unchanged and converts the pose with
``geom.expmap``, which returns the transposed Rodrigues matrix, then ``rot2euler``, RELION's
decomposition) and cryoDRGN ``commands/parse_pose_csparc.py`` (``expmap`` of the pose, then transposed,
gives the same matrix its ``parse_pose_star`` builds from RELION angles; shifts are used as RELION
origins in pixels). Heterogeneous refinement and ab initio jobs align at a smaller internal box, and
their shifts need rescaling (cryoDRGN doubles them for heterogeneous refinement); only
``alignments3D`` of refinement jobs is read here.
"""
import logging
import os

import numpy as np

from cryoai_core.io.mrc import common_box, locate_stack
from cryoai_core.io.ctf_table import CtfTable, compact_column
from cryoai_core.io.particles import ParticleTable, uniform_pixel_size
from cryoai_core.relion_euler import matrix_to_euler

logger = logging.getLogger(__name__)

CTF_FIELD_SOURCES = (("ctf/df1_A", 1.0), ("ctf/df2_A", 1.0), ("ctf/df_angle_rad", 180.0 / np.pi),
                     ("ctf/accel_kv", 1.0), ("ctf/cs_mm", 1.0), ("ctf/amp_contrast", 1.0),
                     ("ctf/phase_shift_rad", 180.0 / np.pi), ("ctf/bfactor", 1.0))
"""``.cs`` field and unit factor of each :data:`CTF_FIELDS` column (radians become degrees)."""
OPTIONAL_CTF_FIELDS = ("ctf/phase_shift_rad", "ctf/bfactor")


def read_cs(path: str, root: str | None = None) -> ParticleTable:
    """Read a cryoSPARC particle ``.cs`` file.

    Args:
        path: the ``.cs`` file.
        root: the cryoSPARC project folder that ``blob/path`` is relative to. By default the ``.cs``
            file's folder, then its parents up to three levels (a job folder ``Jnn/`` or an export
            folder ``exports/groups/name/`` inside the project).

    Returns:
        A table with the CTF (``None`` if a CTF field is missing), and poses in RELION's convention when
        ``alignments3D/pose`` is present. The pixel size is ``blob/psize_A``.
    """
    records = load_cs_records(path)
    fields = records.dtype.names or ()
    missing = [name for name in ("blob/path", "blob/idx") if name not in fields]
    if missing:
        raise ValueError(f"{path} is not a cryoSPARC particle file: missing field(s) {', '.join(missing)}")

    names = np.char.lstrip(np.char.strip(records["blob/path"].astype(str)), ">")
    uniques, codes = np.unique(names, return_inverse=True)
    folder = os.path.dirname(os.path.abspath(path))
    resolved = [locate_stack(str(name), folder, root, search_parents=3) for name in uniques]
    stack_files = tuple(dict.fromkeys(resolved))
    position = {name: number for number, name in enumerate(stack_files)}
    stack_ids = np.array([position[name] for name in resolved], dtype=np.int32)[codes.reshape(-1)]
    image_indices = np.asarray(records["blob/idx"], dtype=np.int64)
    if (image_indices < 0).any():
        raise ValueError(f"{path}: blob/idx holds negative image indices")
    box = common_box(stack_files, stack_ids, image_indices, path)
    if "blob/shape" in fields:
        shapes = np.unique(np.asarray(records["blob/shape"]).reshape(len(records), -1), axis=0)
        if len(shapes) != 1 or tuple(int(v) for v in shapes[0]) != (box, box):
            raise ValueError(f"{path}: blob/shape {shapes.tolist()} does not match the stacks' {box}x{box} images")

    pixel_size = _pixel_size(records, path)
    ctf = ctf_from_records(records, path)
    angles = origins = None
    if "alignments3D/pose" in fields:
        matrices, shifts_px = poses_from_records(records)
        angles = matrix_to_euler(matrices)
        origins = shifts_px * pixel_size
    logger.info("%s: %d particles in %d stack(s), box %d, %.4g Å/px, CTF %s, poses %s", path, len(records),
                len(stack_files), box, pixel_size, "yes" if ctf is not None else "no",
                "yes" if angles is not None else "no")
    return ParticleTable(stack_files=stack_files, stack_ids=stack_ids, image_indices=image_indices,
                         pixel_size_angstrom=pixel_size, box=box, ctf=ctf, euler_angles_degrees=angles,
                         origins_angstrom=origins)


def load_cs_records(path: str) -> np.ndarray:
    """The ``(N,)`` structured array of a ``.cs`` file; ``ValueError`` if it is not one or is empty."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cryoSPARC file not found: {path}")
    try:
        records = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path} is not a cryoSPARC .cs file (numpy record array): {error}") from None
    if not records.dtype.names:
        raise ValueError(f"{path} is not a cryoSPARC .cs file (no named fields)")
    if records.ndim != 1 or len(records) == 0:
        raise ValueError(f"{path} contains no particles")
    return records


def poses_from_records(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RELION matrices ``A`` ``(N, 3, 3)`` and origins in pixels ``(N, 2)`` (zero without
    ``alignments3D/shift``) from the ``alignments3D`` fields of ``.cs`` records (see the module docstring)."""
    rotvecs = np.asarray(records["alignments3D/pose"], dtype=np.float64).reshape(-1, 3)
    matrices = np.swapaxes(rodrigues(rotvecs), -1, -2)
    shifts = np.zeros((len(records), 2))
    if "alignments3D/shift" in records.dtype.names:
        shifts = np.asarray(records["alignments3D/shift"], dtype=np.float64).reshape(-1, 2)
    return matrices, shifts


def rodrigues(rotation_vectors: np.ndarray) -> np.ndarray:
    """Rotation matrices ``I + sin θ K + (1 - cos θ) K²`` of rotation vectors ``(..., 3)`` -> ``(..., 3, 3)``.

    ``θ = |v|`` and ``K`` is the cross-product matrix of the unit axis ``v / θ`` (right-handed).
    """
    vectors = np.asarray(rotation_vectors, dtype=np.float64)
    angle = np.linalg.norm(vectors, axis=-1)[..., None, None]
    axis = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-300)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = np.zeros_like(x)
    cross = np.stack([np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1),
                      np.stack([-y, x, zero], -1)], -2)
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)


def _pixel_size(records: np.ndarray, path: str) -> float:
    if "blob/psize_A" not in (records.dtype.names or ()):
        raise ValueError(f"{path} has no blob/psize_A field (pixel size)")
    return uniform_pixel_size(records["blob/psize_A"], f"{path} (blob/psize_A)")


def ctf_from_records(records: np.ndarray, path: str) -> CtfTable | None:
    """``(N, 8)`` CTF in :data:`CTF_FIELDS` order (a compact :class:`CtfTable`)
    from ``.cs`` records, ``None`` if a required field is missing."""
    fields = records.dtype.names
    missing = [name for name, _ in CTF_FIELD_SOURCES if name not in fields and name not in OPTIONAL_CTF_FIELDS]
    if missing:
        logger.info("%s has no CTF (missing %s)", path, ", ".join(missing))
        return None
    columns = []
    for name, factor in CTF_FIELD_SOURCES:
        if name not in fields:
            columns.append(0.0)
            continue
        column = np.asarray(records[name], dtype=np.float64).reshape(-1) * factor
        if not np.isfinite(column).all():
            raise ValueError(f"{path}: the CTF fields hold NaN or infinite values ({name})")
        columns.append(compact_column(column))
    return CtfTable(columns, len(records))
