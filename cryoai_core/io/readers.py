"""Read a particle set from any supported metadata file, chosen by its extension."""
import os

from cryoai_core.io.cryosparc import read_cs
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.star import read_star

READERS = {".star": "RELION star", ".cs": "cryoSPARC"}
"""Supported extensions and the format each stands for."""


def read_particles(path: str, root: str | None = None, poses: bool = True) -> ParticleTable:
    """Read particles from a RELION ``.star`` or a cryoSPARC ``.cs`` file.

    Args:
        path: the metadata file.
        root: folder that relative stack paths are relative to (default: the file's folder, see
            :func:`~cryoai_core.io.star.read_star` and :func:`~cryoai_core.io.cryosparc.read_cs`).
        poses: read the particles' poses; ``False`` gives a table without them (and a star's pose
            columns are not even parsed).
    """
    extension = os.path.splitext(path)[1].lower()
    if extension == ".star":
        return read_star(path, root=root, poses=poses)
    if extension == ".cs":
        table = read_cs(path, root=root)
        return table if poses else table.without_poses()
    known = ", ".join(f"{name} ({kind})" for name, kind in READERS.items())
    raise ValueError(f"{path}: unknown particle file type {extension or '(no extension)'!r}; expected {known}")
