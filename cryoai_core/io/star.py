"""RELION particle star files (3.0 and 3.1) <-> :class:`~cryoai_core.io.particles.ParticleTable`.

Reading accepts:

- RELION 3.0: one particle table (``data_`` or ``data_images``); origins ``rlnOriginX/Y`` in **pixels**;
  the pixel size from ``rlnDetectorPixelSize`` (µm) and ``rlnMagnification`` (``px = 1e4 * det / mag``)
  or ``rlnPixelSize``; CTF constants (voltage, Cs, amplitude contrast) per particle.
- RELION 3.1+: ``data_optics`` and ``data_particles``; ``rlnImagePixelSize``, ``rlnImageSize``,
  origins ``rlnOriginXAngst/YAngst`` in **Å**; optics values are merged per particle through
  ``rlnOpticsGroup`` (a value in the particle table takes precedence).

``rlnImageName`` is ``index@path`` with a 1-based index; relative paths are resolved from the star
file's folder (or an explicit ``root``; failing both, from the folder's two parents, the RELION project
layout ``Job/jobNNN/file.star``). Writing produces RELION 3.1 with a ``# version 30001`` line before each
table: without it RELION treats the file as 3.0 and tries to convert it (RELION issues #524, #707).
"""
import csv
import dataclasses
import logging
import os
from collections.abc import Mapping

import mrcfile
import numpy as np
import pandas as pd
from starfile.writer import StarWriter

from cryoai_core.io.atomic import atomic_open
from cryoai_core.io.mrc import common_box, locate_stack
from cryoai_core.io.particles import CTF_FIELDS, ParticleTable, uniform_pixel_size
from cryoai_core.io.star_parser import ImageNames, block_rows, read_blocks

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
_GEOMETRY_COLUMNS = ("rlnImageName", "rlnOpticsGroup", "rlnOpticsGroupName", "rlnImagePixelSize",
                     "rlnPixelSize", "rlnDetectorPixelSize", "rlnMagnification", "rlnImageSize",
                     "rlnImageDimensionality")
_PER_GROUP_GEOMETRY = ("rlnOpticsGroup", "rlnImagePixelSize", "rlnPixelSize", "rlnImageSize",
                       "rlnImageDimensionality")
STAR_VERSION_LINE = "# version 30001"
FLOAT_FORMAT = "%.6f"
STAR_CHUNK_ROWS = 10_000
"""Particles formatted at a time when writing a star file (memory stays flat in the number of particles)."""


def read_star(path: str, root: str | None = None) -> ParticleTable:
    """Read a RELION 3.0 or 3.1 particle star file.

    The particle table is parsed a chunk of rows at a time into compact columns
    (:mod:`cryoai_core.io.star_parser`), so memory grows by a few numbers per particle, not by its text.

    Args:
        path: the star file.
        root: folder that relative stack paths are relative to (default: the star file's folder).

    Returns:
        A table with absolute stack paths, CTF (``None`` when a required CTF column is missing; see
        :func:`require_ctf`), poses when ``rlnAngleRot/Tilt/Psi`` are present (origins in Å, 0 when
        absent) and every other particle column in ``extra_columns`` (text columns as
        ``pandas.Categorical``).

    Raises:
        FileNotFoundError: the star file or a stack it names is missing.
        ValueError: no particles, unreadable table, non-square / odd / mixed boxes, index out of
            range, truncated stack, several pixel sizes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"star file not found: {path}")
    particles, optics = _particle_tables(read_blocks(path, split_image_names=True), path)
    merged = MergedColumns(particles, optics, path)

    stack_files, stack_ids, image_indices = _image_locations(particles["rlnImageName"], path, root)
    box = common_box(stack_files, stack_ids, image_indices, path)
    if "rlnImageSize" in merged:
        sizes = np.unique(np.asarray(merged["rlnImageSize"]))
        if len(sizes) != 1 or int(sizes[0]) != box:
            raise ValueError(f"{path}: rlnImageSize {sizes.tolist()} does not match the stacks' box of {box} px")
    pixel_size = _pixel_size(merged, path, stack_files[0])
    ctf = ctf_from_columns(merged, path)
    angles, origins = poses_from_columns(merged, pixel_size, path)

    consumed = set(_GEOMETRY_COLUMNS)
    if ctf is not None:
        consumed.update(CTF_COLUMNS)
    if angles is not None:
        consumed.update(ANGLE_COLUMNS + ORIGIN_ANGSTROM_COLUMNS + ORIGIN_PIXEL_COLUMNS)
    extra = {name: values for name, values in particles.items() if name not in consumed}
    logger.info("%s: %d particles in %d stack(s), box %d, %.4g Å/px, CTF %s, poses %s", path, len(stack_ids),
                len(stack_files), box, pixel_size, "yes" if ctf is not None else "no",
                "yes" if angles is not None else "no")
    return ParticleTable(stack_files=stack_files, stack_ids=stack_ids, image_indices=image_indices,
                         pixel_size_angstrom=pixel_size, box=box, ctf=ctf, euler_angles_degrees=angles,
                         origins_angstrom=origins, extra_columns=extra, optics=_shared_optics(optics))


def require_ctf(table: ParticleTable, path: str) -> None:
    """Raise a ``ValueError`` naming the missing CTF columns when ``table`` (read from ``path``) has no CTF."""
    if table.ctf is not None:
        return
    present = set(table.extra_columns) | set(table.optics)
    missing = [name for name in REQUIRED_CTF_COLUMNS if name not in present]
    detail = f"missing column(s) {', '.join(missing)}" if missing else "its CTF columns are incomplete"
    raise ValueError(f"{path} has no CTF parameters: {detail}")


def write_star(path: str, table: ParticleTable, relative_to: str | None = None, poses=None) -> None:
    """Write ``table`` as a RELION 3.1 particle star file (``data_optics`` + ``data_particles``).

    Stack paths are written relative to ``relative_to`` (default: the star file's folder) when the stack
    lies inside that folder, absolute otherwise. One optics group is written per distinct
    (voltage, Cs, amplitude contrast); without CTF, one group carrying ``table.optics``'s values.

    Rows are formatted and written :data:`STAR_CHUNK_ROWS` at a time, so memory does not grow with the
    number of particles beyond the table itself. ``poses``, when given, is an iterable of
    ``(start, euler_angles_degrees (b, 3), origins_angstrom (b, 2))`` chunks, in order and covering every
    particle (e.g. predictions made while writing), optionally with a fourth item ``{column: (b,) values}``
    of per-particle columns to add or replace (e.g. a score); otherwise the table's own poses (if any) are
    written.
    """
    folder = os.path.abspath(relative_to) if relative_to else os.path.dirname(os.path.abspath(path))
    optics, constants = _optics_table(table)
    if poses is None:
        chunks = ((start, min(STAR_CHUNK_ROWS, len(table) - start), None, None, {})
                  for start in range(0, len(table), STAR_CHUNK_ROWS))
    else:
        chunks = ((chunk[0], len(chunk[1]), chunk[1], chunk[2], chunk[3] if len(chunk) > 3 else {})
                  for chunk in poses)
    with atomic_open(path, "w") as handle:
        for line in StarWriter({"optics": optics}, float_format=FLOAT_FORMAT).lines():
            if line.startswith("data_"):
                handle.write(STAR_VERSION_LINE + "\n\n")
            handle.write(line + "\n")
        handle.write(STAR_VERSION_LINE + "\n\n")
        written = 0
        for start, count, angles, origins, columns in chunks:
            if start != written:
                raise ValueError(f"{path}: pose chunks must follow each other (got particle {start} after {written})")
            frame = _particle_frame(table, folder, constants, start, start + count, angles, origins, columns)
            if written == 0:
                _write_loop_header(handle, frame)
            _write_rows(handle, frame)
            written += count
        if written != len(table):
            raise ValueError(f"{path}: poses were given for {written} of {len(table)} particles")
        if written == 0:
            _write_loop_header(handle, _particle_frame(table, folder, constants, 0, 0, None, None, {}))
        handle.write("\n")


def _particle_frame(table: ParticleTable, folder: str, constants, start: int, stop: int, angles,
                    origins, added: dict) -> pd.DataFrame:
    """The ``data_particles`` rows of particles ``start .. stop`` (with ``angles``/``origins`` and the
    ``added`` columns if given); ``constants``: the optics groups' CTF constants (:func:`_optics_table`)."""
    part = table.subset(np.arange(start, stop))
    if angles is not None:
        part = part.with_poses(angles, origins)
    if added:
        part = dataclasses.replace(part, extra_columns={**part.extra_columns, **added})
    count = len(part)
    columns = {"rlnImageName": _image_names(part, folder), "rlnOpticsGroup": _optics_groups(part, constants)}
    if part.ctf is not None:
        for index in (0, 1, 2, 6, 7):
            columns[CTF_COLUMNS[index]] = np.asarray(part.ctf[:, index], dtype=np.float64)
    if part.euler_angles_degrees is not None:
        angles = np.asarray(part.euler_angles_degrees, dtype=np.float64).reshape(-1, 3)
        origins = (np.zeros((count, 2)) if part.origins_angstrom is None
                   else np.asarray(part.origins_angstrom, dtype=np.float64).reshape(-1, 2))
        columns.update(zip(ANGLE_COLUMNS, angles.T))
        columns.update(zip(ORIGIN_ANGSTROM_COLUMNS, origins.T))
    skip = set(columns) | set(_GEOMETRY_COLUMNS)
    if part.euler_angles_degrees is not None:
        skip.update(ORIGIN_PIXEL_COLUMNS)
    for name, values in part.extra_columns.items():
        if name not in skip:
            columns[name] = np.asarray(values)
    return pd.DataFrame(columns)


def _write_loop_header(handle, frame: pd.DataFrame) -> None:
    handle.write("data_particles\n\nloop_\n")
    handle.write("".join(f"_{name} #{number}\n" for number, name in enumerate(frame.columns, 1)))


def _write_rows(handle, frame: pd.DataFrame) -> None:
    """Rows separated by tabs; text with a space (or empty) in double quotes, as the starfile package does."""
    for name in frame.columns:
        if frame[name].dtype == object:
            text = frame[name].astype(str)
            quoted = text.str.contains(" ", regex=False) | (text == "")
            frame[name] = text.where(~quoted, '"' + text + '"')
    frame.to_csv(handle, sep="\t", header=False, index=False, float_format=FLOAT_FORMAT, na_rep="<NA>",
                 quoting=csv.QUOTE_NONE)


def read_star_columns(path: str) -> pd.DataFrame:
    """The particle table of a star file with its optics values merged into every row; no image is opened.

    For metadata-only uses (pose or defocus distributions); :func:`read_star` reads a particle set.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"star file not found: {path}")
    particles, optics = _particle_tables(read_blocks(path), path)
    merged = MergedColumns(particles, optics, path)
    return pd.DataFrame({name: merged[name] for name in merged})


def read_star_poses(path: str, pixel_size_angstrom: float, extra: tuple = ()) -> tuple:
    """The poses of a particle star file, reading only the pose columns (and ``extra``), so that memory holds
    a few numbers per particle rather than a whole :class:`ParticleTable` (the gold-standard stage reads the
    poses it has just written this way).

    Returns ``(euler_angles_degrees (N, 3), origins_angstrom (N, 2), {name: (N,)})`` with the ``extra``
    columns that the file has. Origins in pixels (``rlnOriginX/Y``) are converted with
    ``pixel_size_angstrom``.

    Raises:
        FileNotFoundError: no such file. ValueError: no particles, or no poses.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"star file not found: {path}")
    wanted = {"rlnImageName", "rlnOpticsGroup", *ANGLE_COLUMNS, *ORIGIN_ANGSTROM_COLUMNS, *ORIGIN_PIXEL_COLUMNS,
              *extra}
    particles, optics = _particle_tables(read_blocks(path, split_image_names=True, columns=wanted), path)
    angles, origins = poses_from_columns(MergedColumns(particles, optics, path), pixel_size_angstrom, path)
    if angles is None:
        raise ValueError(f"{path} has no poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)")
    return angles, origins, {name: np.asarray(particles[name]) for name in extra if name in particles}


def _particle_tables(blocks: dict, path: str) -> tuple[dict, pd.DataFrame | None]:
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
            self.rows = groups.get_indexer(np.asarray(particles["rlnOpticsGroup"]))
            if (self.rows < 0).any():
                unknown = pd.unique(np.asarray(particles["rlnOpticsGroup"])[self.rows < 0])
                raise ValueError(f"{path}: particles refer to optics group(s) {sorted(unknown.tolist())} missing "
                                 "from data_optics")
        elif len(groups) == 1:
            self.rows = np.zeros(block_rows(particles), dtype=np.int64)
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

    def __iter__(self):
        return iter([*self.particles, *self._optics_names()])

    def __len__(self) -> int:
        return len(self.particles) + len(self._optics_names())


def _image_locations(names: ImageNames, path: str, root: str | None):
    """``(stack_files, stack_ids (N,) int32, image_indices (N,) int64 0-based)`` of a compact name column."""
    if names.malformed is not None:
        raise ValueError(f"{path}: rlnImageName {names.malformed!r} is not 'index@stack'")
    zero = np.flatnonzero(names.numbers < 1)
    if len(zero):
        stack = names.stacks[int(names.stack_codes[zero[0]])]
        raise ValueError(f"{path}: rlnImageName '{int(names.numbers[zero[0]])}@{stack}' has index 0; RELION image "
                         "indices start at 1")
    folder = os.path.dirname(os.path.abspath(path))
    resolved = [locate_stack(name, folder, root, search_parents=2) for name in names.stacks]
    stack_files = tuple(dict.fromkeys(resolved))
    position = {name: number for number, name in enumerate(stack_files)}
    remap = np.array([position[name] for name in resolved], dtype=np.int32)
    return stack_files, remap[names.stack_codes], names.numbers - 1


def _pixel_size(merged: Mapping, path: str, first_stack: str) -> float:
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


def ctf_from_columns(merged: Mapping, path: str) -> np.ndarray | None:
    """``(N, 8)`` CTF in :data:`CTF_FIELDS` order from merged star columns (a mapping such as a DataFrame or
    :class:`MergedColumns`), ``None`` if a required one is missing."""
    missing = [name for name in REQUIRED_CTF_COLUMNS if name not in merged]
    if missing:
        logger.info("%s has no CTF (missing %s)", path, ", ".join(missing))
        return None
    text = [name for name in CTF_COLUMNS if name in merged and _is_text(merged[name])]
    if text:
        raise ValueError(f"{path}: column(s) {', '.join(text)} hold non-numeric values")
    ctf = np.zeros((_rows(merged), len(CTF_FIELDS)))
    for index, name in enumerate(CTF_COLUMNS):
        if name in merged:
            ctf[:, index] = _floats(merged, name, path)
    bad = ~np.isfinite(ctf).all(axis=0)
    if bad.any():
        raise ValueError(f"{path}: column(s) {', '.join(np.array(CTF_COLUMNS)[bad])} hold non-numeric values")
    return ctf


def poses_from_columns(merged: Mapping, pixel_size: float, path: str = "star file"):
    """RELION ``(N, 3)`` Euler angles (degrees) and ``(N, 2)`` origins (Å) from merged star columns;
    ``(None, None)`` without angle columns, zero origins without origin columns."""
    if not set(ANGLE_COLUMNS) <= set(merged):
        return None, None
    angles = np.stack([_floats(merged, name, path) for name in ANGLE_COLUMNS], axis=1)
    if set(ORIGIN_ANGSTROM_COLUMNS) <= set(merged):
        origins = np.stack([_floats(merged, name, path) for name in ORIGIN_ANGSTROM_COLUMNS], axis=1)
    elif set(ORIGIN_PIXEL_COLUMNS) <= set(merged):
        origins = np.stack([_floats(merged, name, path) for name in ORIGIN_PIXEL_COLUMNS], axis=1) * pixel_size
    else:
        origins = np.zeros((_rows(merged), 2))
    return angles, origins


def _shared_optics(optics: pd.DataFrame | None) -> dict:
    """Optics values equal in every group (RELION names -> Python scalars), except the geometry."""
    if optics is None or len(optics) == 0:
        return {}
    shared = {}
    for name in optics.columns:
        values = optics[name].unique()
        if name not in _PER_GROUP_GEOMETRY and len(values) == 1:
            value = values[0]
            shared[name] = value.item() if isinstance(value, np.generic) else value
    return shared


def _optics_table(table: ParticleTable) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The ``data_optics`` table and its groups' CTF constants ``(G, 3)`` (voltage, Cs, amplitude contrast,
    sorted; ``None`` without CTF). The distinct constants are gathered :data:`STAR_CHUNK_ROWS` rows at a
    time, so that nothing of the size of the table is made."""
    if table.ctf is not None:
        seen = [np.unique(np.asarray(table.ctf[start:start + STAR_CHUNK_ROWS, 3:6], dtype=np.float64), axis=0)
                for start in range(0, len(table), STAR_CHUNK_ROWS)]
        constants = np.unique(np.concatenate(seen), axis=0) if seen else np.zeros((0, 3))
        ctf_values = dict(zip(OPTICS_CTF_COLUMNS, constants.T))
        count = len(constants)
    else:
        constants = None
        ctf_values = {name: [table.optics[name]] for name in OPTICS_CTF_COLUMNS if name in table.optics}
        count = 1
    name = table.optics.get("rlnOpticsGroupName")
    names = [name] if count == 1 and name else [f"opticsGroup{number}" for number in range(1, count + 1)]
    optics = {"rlnOpticsGroup": np.arange(1, count + 1), "rlnOpticsGroupName": names,
              "rlnImagePixelSize": [float(table.pixel_size_angstrom)] * count,
              "rlnImageSize": [int(table.box)] * count, "rlnImageDimensionality": [2] * count}
    optics.update(ctf_values)
    for key, value in table.optics.items():
        if key not in optics and key not in _GEOMETRY_COLUMNS and np.isscalar(value):
            optics[key] = [value] * count
    return pd.DataFrame(optics), constants


def _optics_groups(part: ParticleTable, constants) -> np.ndarray:
    """``(b,)`` 1-based optics group of each particle of ``part``: the row of ``constants`` that its CTF
    constants equal (all 1 without CTF)."""
    groups = np.ones(len(part), dtype=np.int64)
    if constants is not None and len(part):
        values = np.asarray(part.ctf[:, 3:6], dtype=np.float64)
        for number, row in enumerate(constants, 1):
            groups[(values == row).all(axis=1)] = number
    return groups


def _image_names(table: ParticleTable, folder: str) -> np.ndarray:
    written = []
    for stack in table.stack_files:
        stack = os.path.abspath(stack)
        shared = os.path.commonpath([stack, folder])
        written.append(stack if shared == os.path.dirname(shared) else os.path.relpath(stack, folder))
    numbers = pd.Series(np.asarray(table.image_indices, dtype=np.int64) + 1).map("{:06d}@".format)
    return (numbers + pd.Series(np.array(written, dtype=object)[table.stack_ids])).to_numpy()
