"""RELION star columns -> particle quantities: the column names, optics values merged per particle, and
the CTF, poses and pixel size that the columns give (units: Å, kV, mm, degrees, as RELION writes them).

RELION 3.1+ keeps per-group values (voltage, Cs, amplitude contrast, pixel size) in ``data_optics`` and
links each particle through ``rlnOpticsGroup``; RELION 3.0 writes them per particle. :class:`MergedColumns`
gives both the same face: a mapping from column name to an ``(N,)`` array.
"""
import logging
from collections.abc import Mapping

import mrcfile
import numpy as np
import pandas as pd

from cryoai_core.io.ctf_table import CtfTable, compact_column
from cryoai_core.io.particles import uniform_pixel_size
from cryoai_core.io.star_parser import block_rows

logger = logging.getLogger(__name__)

CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
               "rlnAmplitudeContrast", "rlnPhaseShift", "rlnCtfBfactor")
"""RELION names of the :data:`CTF_FIELDS` columns, in the same order."""
REQUIRED_CTF_COLUMNS = CTF_COLUMNS[:6]
"""CTF columns without which a star file has no CTF (phase shift and B-factor default to 0)."""
OPTICS_CTF_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_ANGSTROM_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")
ORIGIN_PIXEL_COLUMNS = ("rlnOriginX", "rlnOriginY")
GEOMETRY_COLUMNS = ("rlnImageName", "rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize",
                     "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageSize",
                     "rlnImageDimensionality")
PER_GROUP_GEOMETRY = ("rlnOpticsGroup", "rlnImagePixelSize", "rlnPixelSize", "rlnImageSize",
                       "rlnImageDimensionality")


def particle_tables(blocks: dict, path: str) -> tuple[dict, pd.DataFrame | None]:
    """The particle block (``{column: values}``) and the optics table (``None`` if absent)."""
    if "particles" in blocks:
        particles = blocks["particles"]
    else:
        named = [name for name, block in blocks.items() if "rlnImageName" in block]
        preferred = [name for name in ("images", "") if name in named]
        if not named:
            if all(block_rows(block) == 0 for block in blocks.values()):
                raise ValueError(f"{path} contains no particles")
            raise ValueError(f"{path} has no particle table (no rlnImageName column)")
        particles = blocks[(preferred or named)[0]]
    if block_rows(particles) == 0:
        raise ValueError(f"{path} contains no particles")
    if "rlnImageName" not in particles:
        raise ValueError(f"{path}: the particle table has no rlnImageName column")
    optics = blocks.get("optics")
    optics = None if optics is None else pd.DataFrame({name: np.asarray(values) for name, values in optics.items()})
    return particles, optics


class MergedColumns(Mapping):
    """Per-particle columns: the particle table's own and, for names it lacks, its optics group's value.

    Optics values are spread over the particles only when a column is asked for (``merged[name]``, an
    ``(N,)`` array), so nothing is held per particle beyond the particle table itself.
    """

    def __init__(self, particles: dict, optics: pd.DataFrame | None, path: str):
        self.particles, self.optics, self.rows = particles, None, None
        if optics is None or len(optics) == 0:
            return
        if "rlnOpticsGroup" not in optics.columns:
            raise ValueError(f"{path}: the optics table has no rlnOpticsGroup column")
        if optics["rlnOpticsGroup"].duplicated().any():
            raise ValueError(f"{path}: the optics table lists an optics group twice")
        groups = pd.Index(optics["rlnOpticsGroup"])
        if "rlnOpticsGroup" in particles:
            self.rows = groups.get_indexer(np.asarray(particles["rlnOpticsGroup"])).astype(np.int32)
            if (self.rows < 0).any():
                unknown = pd.unique(np.asarray(particles["rlnOpticsGroup"])[self.rows < 0])
                raise ValueError(f"{path}: particles refer to optics group(s) {sorted(unknown.tolist())} missing "
                                 "from data_optics")
        elif len(groups) == 1:
            self.rows = np.zeros(block_rows(particles), dtype=np.int32)
        else:
            raise ValueError(f"{path}: the particles have no rlnOpticsGroup but there are {len(groups)} optics "
                             "groups")
        self.optics = optics

    def _optics_names(self) -> list:
        return [] if self.optics is None else [name for name in self.optics.columns if name not in self.particles]

    def __getitem__(self, name: str):
        if name in self.particles:
            return self.particles[name]
        if name in self._optics_names():
            return self.optics[name].to_numpy()[self.rows]
        raise KeyError(name)

    def release(self, name: str) -> None:
        """Drop the particle column ``name`` (if any) once it has been converted, so that its memory goes."""
        self.particles.pop(name, None)

    def __iter__(self):
        return iter([*self.particles, *self._optics_names()])

    def __len__(self) -> int:
        return len(self.particles) + len(self._optics_names())


def pixel_size_from_columns(merged: Mapping, path: str, first_stack: str) -> float:
    if "rlnImagePixelSize" in merged:
        values = _floats(merged, "rlnImagePixelSize", path)
    elif "rlnPixelSize" in merged:
        values = _floats(merged, "rlnPixelSize", path)
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(merged):
        values = 1e4 * _floats(merged, "rlnDetectorPixelSize", path) / _floats(merged, "rlnMagnification", path)
    else:
        with mrcfile.open(first_stack, mode="r", header_only=True, permissive=True) as mrc:
            header_size = float(mrc.voxel_size.x)
        if not header_size > 0:
            raise ValueError(f"{path} gives no pixel size (rlnImagePixelSize, rlnPixelSize or "
                             "rlnDetectorPixelSize + rlnMagnification) and the stack header has none")
        logger.warning("%s gives no pixel size; using %.4g Å from the header of %s", path, header_size,
                       first_stack)
        return header_size
    return uniform_pixel_size(values, path)


def _floats(merged: Mapping, name: str, path: str) -> np.ndarray:
    """Column ``name`` as float64 ``(N,)``; a text column is an error naming it."""
    if _is_text(merged[name]):
        raise ValueError(f"{path}: column {name} holds non-numeric values")
    return np.asarray(merged[name], dtype=np.float64)


def _is_text(values) -> bool:
    return not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)


def _rows(merged: Mapping) -> int:
    return len(merged[next(iter(merged))])


def _release(merged: Mapping, name: str, release: bool) -> None:
    if release and isinstance(merged, MergedColumns):
        merged.release(name)


def ctf_from_columns(merged: Mapping, path: str, release: bool = False) -> CtfTable | None:
    """``(N, 8)`` CTF in :data:`CTF_FIELDS` order, as a compact :class:`CtfTable`, from merged star columns
    (a mapping such as a DataFrame or :class:`MergedColumns`), ``None`` if a required one is missing. With
    ``release``, each column of a :class:`MergedColumns` is dropped as soon as it is copied (the table and
    its columns never coexist); a column of equal values is kept as one number."""
    missing = [name for name in REQUIRED_CTF_COLUMNS if name not in merged]
    if missing:
        logger.info("%s has no CTF (missing %s)", path, ", ".join(missing))
        return None
    text = [name for name in CTF_COLUMNS if name in merged and _is_text(merged[name])]
    if text:
        raise ValueError(f"{path}: column(s) {', '.join(text)} hold non-numeric values")
    columns, bad = [], []
    for name in CTF_COLUMNS:
        if name not in merged:
            columns.append(0.0)
            continue
        column = merged[name]
        if not np.isfinite(column).all():
            bad.append(name)
        columns.append(compact_column(column))
        _release(merged, name, release)
    if bad:
        raise ValueError(f"{path}: column(s) {', '.join(bad)} hold non-numeric values")
    return CtfTable(columns, _rows(merged))


def poses_from_columns(merged: Mapping, pixel_size: float, path: str = "star file", release: bool = False):
    """RELION ``(N, 3)`` Euler angles (degrees) and ``(N, 2)`` origins (Å) from merged star columns;
    ``(None, None)`` without angle columns, zero origins without origin columns. With ``release``, the pose
    columns of a :class:`MergedColumns` are dropped as they are copied (origins in pixels too, when the
    origins in Å are used)."""
    if not set(ANGLE_COLUMNS) <= set(merged):
        return None, None
    if set(ORIGIN_ANGSTROM_COLUMNS) <= set(merged):
        origin_columns, scale = ORIGIN_ANGSTROM_COLUMNS, 1.0
    elif set(ORIGIN_PIXEL_COLUMNS) <= set(merged):
        origin_columns, scale = ORIGIN_PIXEL_COLUMNS, pixel_size
    else:
        origin_columns, scale = (), 1.0
    angles = np.zeros((_rows(merged), 3))
    origins = np.zeros((_rows(merged), 2))
    for target, names in ((angles, ANGLE_COLUMNS), (origins, origin_columns)):
        for index, name in enumerate(names):
            target[:, index] = _floats(merged, name, path)
            _release(merged, name, release)
    origins *= scale
    for name in ORIGIN_ANGSTROM_COLUMNS + ORIGIN_PIXEL_COLUMNS:
        _release(merged, name, release)
    return angles, origins


def shared_optics(optics: pd.DataFrame | None) -> dict:
    """Optics values equal in every group (RELION names -> Python scalars), except the geometry."""
    if optics is None or len(optics) == 0:
        return {}
    shared = {}
    for name in optics.columns:
        values = optics[name].unique()
        if name not in PER_GROUP_GEOMETRY and len(values) == 1:
            value = values[0]
            shared[name] = value.item() if isinstance(value, np.generic) else value
    return shared
