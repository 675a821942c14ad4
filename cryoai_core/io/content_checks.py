"""Content checks of maps and particle images: NaN or Inf, constant (e.g. all-zero) data, map shape.

Run by every command on every map or image set it is given, before it writes anything, so that a bad
input fails with one line naming the file instead of a NaN loss, a zero map or an "infinite" FSC.
"""
import logging

import numpy as np

from cryoai_core.errors import InputError
from cryoai_core.io.mrc import open_stack

logger = logging.getLogger(__name__)

SCAN_ALL_PIXELS = 250_000_000
"""Particle sets up to this many pixels (1 GB of float32) are scanned whole; larger ones are sampled
(and every batch is checked again when the training reads it)."""
SAMPLED_IMAGES = 2000
CHUNK_IMAGES = 2048


def check_map(array: np.ndarray, path: str, what: str = "map") -> None:
    """A cubic 3D map of finite, not all equal values; else :class:`InputError` naming ``path``."""
    array = np.asarray(array)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise InputError(f"{path}: expected a cubic 3D {what}, got shape {array.shape}")
    finite = np.isfinite(array)
    if not finite.all():
        count = int(array.size - finite.sum())
        z, y, x = np.argwhere(~finite)[0]
        raise InputError(f"{path}: the {what} holds {count} NaN or infinite voxel(s) (first at z={z}, y={y}, x={x})")
    if float(array.max()) == float(array.min()):
        raise InputError(f"{path}: every voxel of the {what} equals {float(array.flat[0]):g}; "
                         f"a constant {what} carries no structure")


def check_particle_images(table, source: str, generator: np.random.Generator | None = None) -> None:
    """Every image (or a sample, for very large sets) is finite; not every checked image is constant.

    Args:
        table: :class:`~cryoai_core.io.particles.ParticleTable`.
        source: the metadata file, named in messages.
        generator: draws the sample of a large set (default: seeded, so the check is reproducible).
    """
    count = len(table)
    if count * table.box * table.box <= SCAN_ALL_PIXELS:
        chosen = np.arange(count)
    else:
        generator = generator or np.random.default_rng(0)
        chosen = np.sort(generator.choice(count, size=min(SAMPLED_IMAGES, count), replace=False))
    constant = 0
    for stack_id in np.unique(table.stack_ids[chosen]):
        particles = chosen[table.stack_ids[chosen] == stack_id]
        stack = open_stack(table.stack_files[int(stack_id)])
        for start in range(0, len(particles), CHUNK_IMAGES):
            block = particles[start:start + CHUNK_IMAGES]
            images = np.asarray(stack[table.image_indices[block]], dtype=np.float32)
            finite = np.isfinite(images).all(axis=(1, 2))
            if not finite.all():
                particle = int(block[np.flatnonzero(~finite)[0]])
                raise InputError(f"{source}: image {table.image_name(particle)} (particle {particle + 1}) holds "
                                 "NaN or infinite pixel values")
            flat = images.reshape(len(block), -1)
            constant += int((flat.max(axis=1) == flat.min(axis=1)).sum())
    if constant == len(chosen):
        raise InputError(f"{source}: all {len(chosen)} checked particle images are constant (e.g. all zero); "
                         "they hold no particles")
    if constant:
        logger.warning("%s: %d of %d checked particle images are constant (e.g. blank); they add nothing",
                       source, constant, len(chosen))
