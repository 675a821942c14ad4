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

import numpy as np
import pandas as pd
from starfile.writer import StarWriter

from cryoai_core.io.atomic import atomic_open
from cryoai_core.io.mrc import common_box, locate_stack
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.star_columns import (
    ANGLE_COLUMNS, CTF_COLUMNS, GEOMETRY_COLUMNS, OPTICS_CTF_COLUMNS, ORIGIN_ANGSTROM_COLUMNS, ORIGIN_PIXEL_COLUMNS,
    REQUIRED_CTF_COLUMNS, MergedColumns, ctf_from_columns, particle_tables, pixel_size_from_columns,
    poses_from_columns, shared_optics)
from cryoai_core.io.star_parser import ImageNames, read_blocks

logger = logging.getLogger(__name__)

STAR_VERSION_LINE = "# version 30001"
FLOAT_FORMAT = "%.6f"
STAR_CHUNK_ROWS = 10_000
"""Particles formatted at a time when writing a star file (memory stays flat in the number of particles)."""


def read_star(path: str, root: str | None = None, poses: bool = True) -> ParticleTable:
    """Read a RELION 3.0 or 3.1 particle star file.

    The particle table is parsed a chunk of rows at a time into compact columns
    (:mod:`cryoai_core.io.star_parser`), so memory grows by a few numbers per particle, not by its text;
    each column is released as soon as it has been turned into the table's arrays.

    Args:
        path: the star file.
        root: folder that relative stack paths are relative to (default: the star file's folder).
        poses: read the angle and origin columns; ``False`` skips them (a table without poses, as ab initio
            and pose prediction need: their memory is spared).

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
    skipped = () if poses else ANGLE_COLUMNS + ORIGIN_ANGSTROM_COLUMNS + ORIGIN_PIXEL_COLUMNS
    particles, optics = particle_tables(read_blocks(path, split_image_names=True, drop=skipped), path)
    merged = MergedColumns(particles, optics, path)
    merged.release("rlnOpticsGroup")  # MergedColumns holds each particle's group; the table writes its own

    stack_files, stack_ids, image_indices = _image_locations(particles.pop("rlnImageName"), path, root)
    box = common_box(stack_files, stack_ids, image_indices, path)
    if "rlnImageSize" in merged:
        sizes = np.unique(np.asarray(merged["rlnImageSize"]))
        if len(sizes) != 1 or int(sizes[0]) != box:
            raise ValueError(f"{path}: rlnImageSize {sizes.tolist()} does not match the stacks' box of {box} px")
    pixel_size = pixel_size_from_columns(merged, path, stack_files[0])
    ctf = ctf_from_columns(merged, path, release=True)
    angles, origins = poses_from_columns(merged, pixel_size, path, release=True)
    extra = {name: values for name, values in particles.items() if name not in GEOMETRY_COLUMNS}
    logger.info("%s: %d particles in %d stack(s), box %d, %.4g Å/px, CTF %s, poses %s", path, len(stack_ids),
                len(stack_files), box, pixel_size, "yes" if ctf is not None else "no",
                "yes" if angles is not None else "no" if poses else "not read")
    return ParticleTable(stack_files=stack_files, stack_ids=stack_ids, image_indices=image_indices,
                         pixel_size_angstrom=pixel_size, box=box, ctf=ctf, euler_angles_degrees=angles,
                         origins_angstrom=origins, extra_columns=extra, optics=shared_optics(optics))


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
    skip = set(columns) | set(GEOMETRY_COLUMNS)
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
    particles, optics = particle_tables(read_blocks(path), path)
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
    particles, optics = particle_tables(read_blocks(path, split_image_names=True, columns=wanted), path)
    angles, origins = poses_from_columns(MergedColumns(particles, optics, path), pixel_size_angstrom, path)
    if angles is None:
        raise ValueError(f"{path} has no poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi)")
    return angles, origins, {name: np.asarray(particles[name]) for name in extra if name in particles}


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
    image_indices = names.numbers  # the column is the caller's to consume: made 0-based in place, not copied
    image_indices -= 1
    return stack_files, remap[names.stack_codes], image_indices


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
        if key not in optics and key not in GEOMETRY_COLUMNS and np.isscalar(value):
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
