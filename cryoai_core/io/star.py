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
import logging
import os

import mrcfile
import numpy as np
import pandas as pd
import starfile
from starfile.writer import StarWriter

from cryoai_core.io.atomic import atomic_open
from cryoai_core.io.mrc import common_box, locate_stack
from cryoai_core.io.particles import CTF_FIELDS, ParticleTable, uniform_pixel_size

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
STAR_CHUNK_ROWS = 100_000
"""Particles formatted at a time when writing a star file (memory stays flat in the number of particles)."""


def read_star(path: str, root: str | None = None) -> ParticleTable:
    """Read a RELION 3.0 or 3.1 particle star file.

    Args:
        path: the star file.
        root: folder that relative stack paths are relative to (default: the star file's folder).

    Returns:
        A table with absolute stack paths, CTF (``None`` when a required CTF column is missing; see
        :func:`require_ctf`), poses when ``rlnAngleRot/Tilt/Psi`` are present (origins in Å, 0 when
        absent) and every other particle column in ``extra_columns``.

    Raises:
        FileNotFoundError: the star file or a stack it names is missing.
        ValueError: no particles, unreadable table, non-square / odd / mixed boxes, index out of
            range, truncated stack, several pixel sizes.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"star file not found: {path}")
    particles, optics = _particle_tables(_read_blocks(path), path)
    own_columns = list(particles.columns)
    merged = _merge_optics(particles, optics, path)

    stack_files, stack_ids, image_indices = _image_locations(merged["rlnImageName"], path, root)
    box = common_box(stack_files, stack_ids, image_indices, path)
    if "rlnImageSize" in merged.columns:
        sizes = np.unique(merged["rlnImageSize"].to_numpy())
        if len(sizes) != 1 or int(sizes[0]) != box:
            raise ValueError(f"{path}: rlnImageSize {sizes.tolist()} does not match the stacks' box of {box} px")
    pixel_size = _pixel_size(merged, path, stack_files[0])
    ctf = ctf_from_columns(merged, path)
    angles, origins = poses_from_columns(merged, pixel_size)

    consumed = set(_GEOMETRY_COLUMNS)
    if ctf is not None:
        consumed.update(CTF_COLUMNS)
    if angles is not None:
        consumed.update(ANGLE_COLUMNS + ORIGIN_ANGSTROM_COLUMNS + ORIGIN_PIXEL_COLUMNS)
    extra = {name: merged[name].to_numpy() for name in own_columns if name not in consumed}
    logger.info("%s: %d particles in %d stack(s), box %d, %.4g Å/px, CTF %s, poses %s", path, len(merged),
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
    particle (e.g. predictions made while writing); otherwise the table's own poses (if any) are written.
    """
    folder = os.path.abspath(relative_to) if relative_to else os.path.dirname(os.path.abspath(path))
    optics, groups = _optics_table(table)
    if poses is None:
        chunks = ((start, min(STAR_CHUNK_ROWS, len(table) - start), None, None)
                  for start in range(0, len(table), STAR_CHUNK_ROWS))
    else:
        chunks = ((start, len(angles), angles, origins) for start, angles, origins in poses)
    with atomic_open(path, "w") as handle:
        for line in StarWriter({"optics": optics}, float_format=FLOAT_FORMAT).lines():
            if line.startswith("data_"):
                handle.write(STAR_VERSION_LINE + "\n\n")
            handle.write(line + "\n")
        handle.write(STAR_VERSION_LINE + "\n\n")
        written = 0
        for start, count, angles, origins in chunks:
            if start != written:
                raise ValueError(f"{path}: pose chunks must follow each other (got particle {start} after {written})")
            frame = _particle_frame(table, folder, groups, start, start + count, angles, origins)
            if written == 0:
                _write_loop_header(handle, frame)
            _write_rows(handle, frame)
            written += count
        if written != len(table):
            raise ValueError(f"{path}: poses were given for {written} of {len(table)} particles")
        if written == 0:
            _write_loop_header(handle, _particle_frame(table, folder, groups, 0, 0, None, None))
        handle.write("\n")


def _particle_frame(table: ParticleTable, folder: str, groups: np.ndarray, start: int, stop: int, angles,
                    origins) -> pd.DataFrame:
    """The ``data_particles`` rows of particles ``start .. stop`` (with ``angles``/``origins`` if given)."""
    part = table.subset(np.arange(start, stop))
    if angles is not None:
        part = part.with_poses(angles, origins)
    count = len(part)
    columns = {"rlnImageName": _image_names(part, folder), "rlnOpticsGroup": groups[start:stop]}
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
    particles, optics = _particle_tables(_read_blocks(path), path)
    return _merge_optics(particles, optics, path)


def _read_blocks(path: str) -> dict:
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as error:  # starfile raises assorted parser errors for malformed text
        raise ValueError(f"{path} cannot be parsed as a STAR file: {error}") from None
    return {name: pd.DataFrame([block]) if isinstance(block, dict) else block for name, block in blocks.items()}


def _particle_tables(blocks: dict, path: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if "particles" in blocks:
        particles, optics = blocks["particles"], blocks.get("optics")
    else:
        named = [name for name, block in blocks.items() if "rlnImageName" in block.columns]
        preferred = [name for name in ("images", "") if name in named]
        if not named:
            if all(len(block) == 0 for block in blocks.values()):
                raise ValueError(f"{path} contains no particles")
            raise ValueError(f"{path} has no particle table (no rlnImageName column)")
        particles, optics = blocks[(preferred or named)[0]], blocks.get("optics")
    if len(particles) == 0:
        raise ValueError(f"{path} contains no particles")
    if "rlnImageName" not in particles.columns:
        raise ValueError(f"{path}: the particle table has no rlnImageName column")
    return particles.reset_index(drop=True), optics


def _merge_optics(particles: pd.DataFrame, optics: pd.DataFrame | None, path: str) -> pd.DataFrame:
    if optics is None or len(optics) == 0:
        return particles
    if "rlnOpticsGroup" not in optics.columns:
        raise ValueError(f"{path}: the optics table has no rlnOpticsGroup column")
    if optics["rlnOpticsGroup"].duplicated().any():
        raise ValueError(f"{path}: the optics table lists an optics group twice")
    table = optics.set_index("rlnOpticsGroup")
    if "rlnOpticsGroup" in particles.columns:
        group = particles["rlnOpticsGroup"]
    elif len(table) == 1:
        group = pd.Series(table.index[0], index=particles.index)
    else:
        raise ValueError(f"{path}: the particles have no rlnOpticsGroup but there are {len(table)} optics groups")
    unknown = sorted(set(group.unique()) - set(table.index))
    if unknown:
        raise ValueError(f"{path}: particles refer to optics group(s) {unknown} missing from data_optics")
    merged = particles.copy()
    for name in table.columns:
        if name not in merged.columns:
            merged[name] = group.map(table[name]).to_numpy()
    return merged


def _image_locations(names: pd.Series, path: str, root: str | None):
    names = names.astype(str)
    index_text = names.str.extract(r"^\s*(\d+)@", expand=False)
    stack_names = names.str.replace(r"^\s*\d+@", "", regex=True)
    indices = pd.to_numeric(index_text.fillna("1")).to_numpy(dtype=np.int64) - 1
    malformed = np.flatnonzero(names.str.contains("@").to_numpy() & index_text.isna().to_numpy())
    if len(malformed):
        raise ValueError(f"{path}: rlnImageName {names.iloc[malformed[0]]!r} is not 'index@stack'")
    if (indices < 0).any():
        bad = names.iloc[int(np.flatnonzero(indices < 0)[0])]
        raise ValueError(f"{path}: rlnImageName {bad!r} has index 0; RELION image indices start at 1")
    codes, uniques = pd.factorize(stack_names)
    folder = os.path.dirname(os.path.abspath(path))
    resolved = [locate_stack(name, folder, root, search_parents=2) for name in uniques]
    stack_files = tuple(dict.fromkeys(resolved))
    position = {name: number for number, name in enumerate(stack_files)}
    remap = np.array([position[name] for name in resolved], dtype=np.int32)
    return stack_files, remap[codes], indices


def _pixel_size(merged: pd.DataFrame, path: str, first_stack: str) -> float:
    if "rlnImagePixelSize" in merged.columns:
        values = merged["rlnImagePixelSize"].to_numpy(dtype=np.float64)
    elif "rlnPixelSize" in merged.columns:
        values = merged["rlnPixelSize"].to_numpy(dtype=np.float64)
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(merged.columns):
        values = 1e4 * merged["rlnDetectorPixelSize"].to_numpy(dtype=np.float64) \
            / merged["rlnMagnification"].to_numpy(dtype=np.float64)
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


def ctf_from_columns(merged: pd.DataFrame, path: str) -> np.ndarray | None:
    """``(N, 8)`` CTF in :data:`CTF_FIELDS` order from merged star columns, ``None`` if a required one is missing."""
    missing = [name for name in REQUIRED_CTF_COLUMNS if name not in merged.columns]
    if missing:
        logger.info("%s has no CTF (missing %s)", path, ", ".join(missing))
        return None
    ctf = np.zeros((len(merged), len(CTF_FIELDS)))
    for index, name in enumerate(CTF_COLUMNS):
        if name in merged.columns:
            ctf[:, index] = merged[name].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(ctf).all(axis=0)
    if bad.any():
        raise ValueError(f"{path}: column(s) {', '.join(np.array(CTF_COLUMNS)[bad])} hold non-numeric values")
    return ctf


def poses_from_columns(merged: pd.DataFrame, pixel_size: float):
    """RELION ``(N, 3)`` Euler angles (degrees) and ``(N, 2)`` origins (Å) from merged star columns;
    ``(None, None)`` without angle columns, zero origins without origin columns."""
    if not set(ANGLE_COLUMNS) <= set(merged.columns):
        return None, None
    angles = merged[list(ANGLE_COLUMNS)].to_numpy(dtype=np.float64)
    if set(ORIGIN_ANGSTROM_COLUMNS) <= set(merged.columns):
        origins = merged[list(ORIGIN_ANGSTROM_COLUMNS)].to_numpy(dtype=np.float64)
    elif set(ORIGIN_PIXEL_COLUMNS) <= set(merged.columns):
        origins = merged[list(ORIGIN_PIXEL_COLUMNS)].to_numpy(dtype=np.float64) * pixel_size
    else:
        origins = np.zeros((len(merged), 2))
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


def _optics_table(table: ParticleTable) -> tuple[pd.DataFrame, np.ndarray]:
    """The ``data_optics`` table and the ``(N,)`` 1-based optics group of each particle."""
    if table.ctf is not None:
        constants, inverse = np.unique(np.asarray(table.ctf[:, 3:6], dtype=np.float64), axis=0,
                                       return_inverse=True)
        groups = inverse.reshape(-1).astype(np.int64) + 1
        ctf_values = dict(zip(OPTICS_CTF_COLUMNS, constants.T))
    else:
        constants = np.zeros((1, 0))
        groups = np.ones(len(table), dtype=np.int64)
        ctf_values = {name: [table.optics[name]] for name in OPTICS_CTF_COLUMNS if name in table.optics}
    count = len(constants)
    name = table.optics.get("rlnOpticsGroupName")
    names = [name] if count == 1 and name else [f"opticsGroup{number}" for number in range(1, count + 1)]
    optics = {"rlnOpticsGroup": np.arange(1, count + 1), "rlnOpticsGroupName": names,
              "rlnImagePixelSize": [float(table.pixel_size_angstrom)] * count,
              "rlnImageSize": [int(table.box)] * count, "rlnImageDimensionality": [2] * count}
    optics.update(ctf_values)
    for key, value in table.optics.items():
        if key not in optics and key not in _GEOMETRY_COLUMNS and np.isscalar(value):
            optics[key] = [value] * count
    return pd.DataFrame(optics), groups


def _image_names(table: ParticleTable, folder: str) -> np.ndarray:
    written = []
    for stack in table.stack_files:
        stack = os.path.abspath(stack)
        shared = os.path.commonpath([stack, folder])
        written.append(stack if shared == os.path.dirname(shared) else os.path.relpath(stack, folder))
    numbers = pd.Series(np.asarray(table.image_indices, dtype=np.int64) + 1).map("{:06d}@".format)
    return (numbers + pd.Series(np.array(written, dtype=object)[table.stack_ids])).to_numpy()
