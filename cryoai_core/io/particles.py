"""The particle metadata table shared by every reader, writer and data set (numpy only, no torch).

A :class:`ParticleTable` holds, per particle, where its image lives (stack file + 0-based index), its
CTF parameters and, when known, its pose in RELION's convention (Euler angles in degrees and origins in
Å; a particle with ``origin_x = +d`` lies at ``-d`` from the box centre). Stack paths are absolute.
Memory stays proportional to the number of particles times a few numbers: stack names are stored once.
"""
import dataclasses

import numpy as np

from cryoai_core.io.ctf_table import CtfTable

PIXEL_SIZE_RELATIVE_TOLERANCE = 1e-4
"""Per-particle pixel sizes that differ by more than this fraction of the largest are refused."""


def uniform_pixel_size(values, source: str) -> float:
    """The one pixel size (Å) of a data set from per-particle values ``(N,)``.

    Raises:
        ValueError: a value is not positive and finite, or the values differ (one pixel size per data set).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"{source}: the pixel size must be positive and finite")
    if values.max() - values.min() > PIXEL_SIZE_RELATIVE_TOLERANCE * values.max():
        raise ValueError(f"{source}: the particles have different pixel sizes ({values.min():.4g} to "
                         f"{values.max():.4g} Å); use one pixel size per data set")
    return float(values[0])


@dataclasses.dataclass(frozen=True)
class ParticleTable:
    """Metadata of ``N`` particles.

    Attributes:
        stack_files: unique absolute paths of the image stacks.
        stack_ids: ``(N,)`` int32, index into ``stack_files``.
        image_indices: ``(N,)`` int64, 0-based image index inside its stack.
        pixel_size_angstrom: pixel size of the images (one value for the whole set).
        box: image side in pixels (one value for the whole set).
        ctf: ``(N, 8)`` float64 CTF parameters as a compact :class:`~cryoai_core.io.ctf_table.CtfTable` (an
            array given here is made one), or ``None`` when the input had no CTF.
        euler_angles_degrees: ``(N, 3)`` RELION ``(rot, tilt, psi)``, or ``None`` when poses are unknown.
        origins_angstrom: ``(N, 2)`` RELION ``(originX, originY)`` in Å, or ``None``.
        extra_columns: other per-particle columns read from the input (RELION names), kept for writing.
        optics: other optics-group values (RELION names -> value) kept for writing, e.g. the group name.
    """

    stack_files: tuple
    stack_ids: np.ndarray
    image_indices: np.ndarray
    pixel_size_angstrom: float
    box: int
    ctf: CtfTable | None = None
    euler_angles_degrees: np.ndarray | None = None
    origins_angstrom: np.ndarray | None = None
    extra_columns: dict = dataclasses.field(default_factory=dict)
    optics: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        count = len(self.stack_ids)
        if len(self.image_indices) != count:
            raise ValueError("stack_ids and image_indices differ in length")
        if self.ctf is not None and not isinstance(self.ctf, CtfTable):
            object.__setattr__(self, "ctf", CtfTable.from_array(self.ctf))
        for name in ("ctf", "euler_angles_degrees", "origins_angstrom"):
            value = getattr(self, name)
            if value is not None and len(value) != count:
                raise ValueError(f"{name} has {len(value)} rows for {count} particles")
        if not self.pixel_size_angstrom > 0:
            raise ValueError(f"pixel size must be positive, got {self.pixel_size_angstrom}")

    def __len__(self) -> int:
        return len(self.stack_ids)

    @property
    def has_poses(self) -> bool:
        return self.euler_angles_degrees is not None

    def image_name(self, index: int) -> str:
        """RELION ``index@path`` name (1-based index, absolute path) of particle ``index``."""
        return f"{int(self.image_indices[index]) + 1:06d}@{self.stack_files[int(self.stack_ids[index])]}"

    def subset(self, indices) -> "ParticleTable":
        """A new table holding the particles at ``indices`` (in that order)."""
        indices = np.asarray(indices)

        def pick(array):
            return None if array is None else array[indices]

        return dataclasses.replace(
            self, stack_ids=self.stack_ids[indices], image_indices=self.image_indices[indices],
            ctf=None if self.ctf is None else self.ctf.take(indices),
            euler_angles_degrees=pick(self.euler_angles_degrees), origins_angstrom=pick(self.origins_angstrom),
            extra_columns={key: value[indices] for key, value in self.extra_columns.items()})

    def without_poses(self) -> "ParticleTable":
        """A copy without angles and origins (what training may see of a data set whose poses are known)."""
        return dataclasses.replace(self, euler_angles_degrees=None, origins_angstrom=None)

    def with_poses(self, euler_angles_degrees, origins_angstrom) -> "ParticleTable":
        """A copy with the given poses (``(N, 3)`` degrees, ``(N, 2)`` Å)."""
        return dataclasses.replace(
            self, euler_angles_degrees=np.asarray(euler_angles_degrees, dtype=np.float64).reshape(-1, 3),
            origins_angstrom=np.asarray(origins_angstrom, dtype=np.float64).reshape(-1, 2))
