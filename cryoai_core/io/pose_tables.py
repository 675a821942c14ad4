"""Pose, shift and defocus tables of real data sets, read to give simulations real distributions.

Sources, chosen by extension:

- ``.star`` (RELION 3.0/3.1 particle file, read without opening its images): Euler angles
  ``rlnAngleRot/Tilt/Psi`` (RELION convention, :func:`cryoai_core.relion_euler.euler_to_matrix`), origins
  ``rlnOriginX/Y`` (px) or ``rlnOriginXAngst/YAngst`` (Å), the box ``rlnImageSize`` and the CTF columns.
- ``.cs`` (cryoSPARC): ``alignments3D/pose`` and ``alignments3D/shift`` (see :mod:`cryoai_core.io.cryosparc`),
  the box ``blob/shape`` and the ``ctf/*`` fields.
- ``.pkl`` (cryoDRGN): a pose file is a pickled pair ``(rotations (N, 3, 3), shifts (N, 2))`` or the
  rotations alone; the rotations are RELION's matrices ``A`` (cryoDRGN's ``R_from_relion``) and the shifts
  are RELION origins divided by the box side, same sign. A CTF file is an ``(N, 9)`` array
  ``[box, pixel size Å, defocus U Å, defocus V Å, defocus angle °, kV, Cs mm, amplitude contrast,
  phase shift °]``. Pickles can run code when loaded: only read files from a trusted source.

Shifts are kept as fractions of the box side, so that they keep their meaning (how far off centre the
particle lies in its box) at any box and pixel size.
"""
import dataclasses
import logging
import os
import pickle

import numpy as np

logger = logging.getLogger(__name__)

FORMATS = {".star": "RELION star", ".cs": "cryoSPARC", ".pkl": "cryoDRGN pickle"}
"""Supported extensions of pose and defocus tables and the format each stands for."""
CRYODRGN_CTF_COLUMNS = 9
"""Columns of a cryoDRGN CTF pkl: box, pixel size, defocus U, V, angle, kV, Cs, w, phase shift."""
ORTHONORMAL_TOLERANCE = 1e-3
"""Largest ``|AᵀA - I|`` entry accepted for a rotation matrix of a table."""


@dataclasses.dataclass(frozen=True)
class PoseTable:
    """``M`` real poses.

    Attributes:
        rotations: ``(M, 3, 3)`` float64 RELION matrices ``A``.
        shift_fractions: ``(M, 2)`` RELION origins ``(x, y)`` divided by the box side of the source.
        source: the file they were read from.
    """

    rotations: np.ndarray
    shift_fractions: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.rotations)


@dataclasses.dataclass(frozen=True)
class DefocusTable:
    """``M`` real defocus values.

    Attributes:
        defocus: ``(M, 4)`` float64: defocus U and V (Å), astigmatism angle and phase shift (degrees).
        source: the file they were read from.
    """

    defocus: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.defocus)


def read_pose_table(path: str) -> PoseTable:
    """Read the poses and shifts of a RELION star, cryoSPARC ``.cs`` or cryoDRGN pose pkl.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown extension, no poses in the file, unknown box, malformed or non-rotation
            matrices, shift and rotation counts that differ, non-finite values.
    """
    extension = _extension(path)
    if extension == ".star":
        rotations, shifts = _star_poses(path)
    elif extension == ".cs":
        rotations, shifts = _cs_poses(path)
    else:
        rotations, shifts = _pkl_poses(path)
    rotations = np.asarray(rotations, dtype=np.float64)
    shifts = np.asarray(shifts, dtype=np.float64)
    if len(rotations) == 0:
        raise ValueError(f"{path} holds no poses")
    if len(shifts) != len(rotations):
        raise ValueError(f"{path}: {len(rotations)} rotations but {len(shifts)} shifts")
    if not (np.isfinite(rotations).all() and np.isfinite(shifts).all()):
        raise ValueError(f"{path}: the poses hold NaN or infinite values")
    error = np.abs(np.swapaxes(rotations, -1, -2) @ rotations - np.eye(3)).max()
    if error > ORTHONORMAL_TOLERANCE or (np.linalg.det(rotations) < 0).any():
        raise ValueError(f"{path}: the pose matrices are not rotations (|AᵀA - I| up to {error:.3g} or det < 0)")
    logger.info("%s: %d poses, shift std %.3f of the box", path, len(rotations), float(shifts.std()))
    return PoseTable(rotations, shifts, os.path.abspath(path))


def read_defocus_table(path: str) -> DefocusTable:
    """Read the defocus of a RELION star, cryoSPARC ``.cs`` or cryoDRGN CTF pkl.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown extension, no CTF in the file, malformed array, non-positive or non-finite
            defocus.
    """
    extension = _extension(path)
    if extension in (".star", ".cs"):
        ctf = _star_ctf(path) if extension == ".star" else _cs_ctf(path)
        defocus = ctf[:, [0, 1, 2, 6]]
    else:
        array = _load_pickle(path)
        if isinstance(array, tuple):
            raise ValueError(f"{path} is a cryoDRGN pose pkl, not a CTF pkl")
        array = np.asarray(array)
        if array.ndim != 2 or array.shape[1] != CRYODRGN_CTF_COLUMNS or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"{path}: a cryoDRGN CTF pkl holds an (N, {CRYODRGN_CTF_COLUMNS}) array, "
                             f"got shape {array.shape}")
        defocus = array[:, [2, 3, 4, 8]]
    defocus = np.asarray(defocus, dtype=np.float64)
    if len(defocus) == 0:
        raise ValueError(f"{path} holds no particles")
    if not np.isfinite(defocus).all():
        raise ValueError(f"{path}: the defocus values hold NaN or infinite values")
    if (defocus[:, :2] <= 0).any():
        raise ValueError(f"{path}: the defocus values must be positive (underfocus, Å)")
    logger.info("%s: %d defocus values, median %.0f Å", path, len(defocus), float(np.median(defocus[:, :2])))
    return DefocusTable(defocus, os.path.abspath(path))


def _extension(path: str) -> str:
    extension = os.path.splitext(path)[1].lower()
    if extension not in FORMATS:
        known = ", ".join(f"{name} ({kind})" for name, kind in FORMATS.items())
        raise ValueError(f"{path}: unknown table type {extension or '(no extension)'!r}; expected {known}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"table not found: {path}")
    return extension


def _star_poses(path: str):
    from cryoai_core.io.star import read_star_columns
    from cryoai_core.io.star_columns import ANGLE_COLUMNS, ORIGIN_PIXEL_COLUMNS, poses_from_columns
    from cryoai_core.relion_euler import euler_to_matrix

    columns = read_star_columns(path)
    if not set(ANGLE_COLUMNS) <= set(columns.columns):
        raise ValueError(f"{path} has no poses (columns {', '.join(ANGLE_COLUMNS)})")
    box = _star_value(columns, ("rlnImageSize",))
    if box is None:
        raise ValueError(f"{path} gives no image size (rlnImageSize); its shifts cannot be rescaled")
    if set(ORIGIN_PIXEL_COLUMNS) <= set(columns.columns):
        angles, origins_px = poses_from_columns(columns, 1.0)
    else:
        pixel_size = _star_value(columns, ("rlnImagePixelSize", "rlnPixelSize"))
        if pixel_size is None:
            raise ValueError(f"{path} gives origins in Å but no pixel size (rlnImagePixelSize)")
        angles, origins = poses_from_columns(columns, pixel_size)
        origins_px = origins / pixel_size
    return euler_to_matrix(angles), origins_px / box


def _star_value(columns, names) -> float | None:
    for name in names:
        if name in columns.columns:
            values = np.unique(columns[name].to_numpy(dtype=np.float64))
            if len(values) != 1 or not values[0] > 0:
                raise ValueError(f"{name} must be one positive value, got {values[:5].tolist()}")
            return float(values[0])
    return None


def _star_ctf(path: str) -> np.ndarray:
    from cryoai_core.io.star import read_star_columns
    from cryoai_core.io.star_columns import ctf_from_columns

    ctf = ctf_from_columns(read_star_columns(path), path)
    if ctf is None:
        raise ValueError(f"{path} has no CTF parameters (rlnDefocusU, rlnDefocusV, ...)")
    return ctf


def _cs_poses(path: str):
    from cryoai_core.io.cryosparc import load_cs_records, poses_from_records

    records = load_cs_records(path)
    if "alignments3D/pose" not in records.dtype.names:
        raise ValueError(f"{path} has no poses (field alignments3D/pose)")
    if "blob/shape" not in records.dtype.names:
        raise ValueError(f"{path} gives no image size (blob/shape); its shifts cannot be rescaled")
    boxes = np.unique(np.asarray(records["blob/shape"]).reshape(len(records), -1))
    if len(boxes) != 1 or not boxes[0] > 0:
        raise ValueError(f"{path}: blob/shape must be one square size, got {boxes[:5].tolist()}")
    matrices, shifts_px = poses_from_records(records)
    return matrices, shifts_px / float(boxes[0])


def _cs_ctf(path: str) -> np.ndarray:
    from cryoai_core.io.cryosparc import ctf_from_records, load_cs_records

    ctf = ctf_from_records(load_cs_records(path), path)
    if ctf is None:
        raise ValueError(f"{path} has no CTF parameters (ctf/df1_A, ctf/df2_A, ...)")
    return ctf


def _pkl_poses(path: str):
    content = _load_pickle(path)
    if isinstance(content, (tuple, list)) and len(content) == 2:
        rotations, shifts = (np.asarray(part) for part in content)
    elif isinstance(content, np.ndarray) and content.ndim == 3:
        rotations = content
        shifts = np.zeros((len(content), 2))
    else:
        raise ValueError(f"{path} is not a cryoDRGN pose pkl: expected (rotations (N, 3, 3), shifts (N, 2)) "
                         "or rotations alone")
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"{path}: the rotations must have shape (N, 3, 3), got {rotations.shape}")
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise ValueError(f"{path}: the shifts must have shape (N, 2), got {shifts.shape}")
    return rotations, shifts


def _load_pickle(path: str):
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as error:
        raise ValueError(f"{path} cannot be read as a pickle: {error}") from None
