"""``ParticleDataset``: particle images read lazily from memory-mapped stacks, with CTF and poses.

Images are read on demand by ``index@stack`` (nothing is loaded up front, so memory does not grow with
the number of particles beyond the :class:`~cryoai_core.io.particles.ParticleTable`), optionally
downsampled by Fourier cropping (:func:`cryoai_core.fourier.resample_images`; the pixel size becomes
``pixel_size * L0 / box``) and contrast-inverted. Stacks are memory-mapped once per process and never
pickled, so the data set works with ``DataLoader(num_workers > 0)``.

Batches: ``DataLoader(dataset, batch_size=B, shuffle=True, collate_fn=collate)`` calls
:meth:`ParticleDataset.__getitems__` with the ``B`` indices, which reads each stack's images in one
sorted pass and returns the batch already stacked; :func:`collate` passes it through unchanged.
"""
import logging
import os

import numpy as np
import torch

from cryoai_core.fourier import resample_images
from cryoai_core.io.mrc import common_box, open_stack
from cryoai_core.io.particles import ParticleTable

logger = logging.getLogger(__name__)


class ParticleBatch(dict):
    """A batch from :meth:`ParticleDataset.__getitems__`: a dict of stacked tensors.

    Indexing it by position (what torch's default ``collate_fn`` does) is an error that says to pass
    ``collate_fn=collate`` instead.
    """

    def __missing__(self, key):
        if isinstance(key, int):
            raise TypeError("a ParticleDataset batch is already stacked; give the DataLoader "
                            "collate_fn=cryoai_core.io.dataset.collate")
        raise KeyError(key)


def collate(batch: dict) -> dict:
    """``collate_fn`` for a ``DataLoader`` over a :class:`ParticleDataset`: the batch is already stacked."""
    return batch


class ParticleDataset(torch.utils.data.Dataset):
    """Particle images with their CTF parameters and, when known, poses.

    Args:
        table: the particles (all stacks must exist and hold every referenced image).
        box: output box in pixels (even, at most the stored box); ``None`` keeps the stored box.
        invert_contrast: multiply the images by -1 (for data with dark particles).

    Each item is a dict of tensors: ``image`` float32 ``(box, box)``, ``index`` int64 ``()``, and when
    available ``ctf`` float32 ``(8,)`` (:data:`~cryoai_core.io.particles.CTF_FIELDS`),
    ``euler_angles_degrees`` float32 ``(3,)`` and ``origins_angstrom`` float32 ``(2,)`` (RELION
    convention, Å). :meth:`__getitems__` returns the same keys with a leading batch axis.
    """

    def __init__(self, table: ParticleTable, box: int | None = None, invert_contrast: bool = False):
        if len(table) == 0:
            raise ValueError("the particle table is empty")
        box = table.box if box is None else int(box)
        if box < 2 or box % 2:
            raise ValueError(f"the box must be even and at least 2 pixels, got {box}")
        if box > table.box:
            raise ValueError(f"the box ({box} px) cannot exceed the particles' box ({table.box} px)")
        self.table = table
        self.box = box
        self.pixel_size_angstrom = table.pixel_size_angstrom * table.box / box
        self.invert_contrast = bool(invert_contrast)
        self._check_stacks()
        self._stacks = {}
        self._owner_pid = None

    def _check_stacks(self) -> None:
        box = common_box(self.table.stack_files, self.table.stack_ids, self.table.image_indices, "particle table")
        if box != self.table.box:
            raise ValueError(f"the stacks hold {box}x{box} images, but the particle table says {self.table.box} px")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_stacks"], state["_owner_pid"] = {}, None
        return state

    def __len__(self) -> int:
        return len(self.table)

    def _stack(self, stack_id: int) -> np.ndarray:
        if self._owner_pid != os.getpid():
            self._stacks, self._owner_pid = {}, os.getpid()
        stack = self._stacks.get(stack_id)
        if stack is None:
            stack = self._stacks[stack_id] = open_stack(self.table.stack_files[stack_id])
        return stack

    def _read_images(self, indices: np.ndarray) -> np.ndarray:
        """Stored images of particles ``indices`` ``(B,)`` -> float32 ``(B, L0, L0)``, sorted reads per stack."""
        images = np.empty((len(indices), self.table.box, self.table.box), dtype=np.float32)
        stack_ids = self.table.stack_ids[indices]
        image_indices = self.table.image_indices[indices]
        for stack_id in np.unique(stack_ids):
            positions = np.flatnonzero(stack_ids == stack_id)
            positions = positions[np.argsort(image_indices[positions], kind="stable")]
            images[positions] = self._stack(int(stack_id))[image_indices[positions]]
        finite = np.isfinite(images).all(axis=(1, 2))
        if not finite.all():
            particle = int(indices[np.flatnonzero(~finite)[0]])
            raise ValueError(f"image {self.table.image_name(particle)} (data set index {particle}) contains "
                             "NaN or infinite pixel values")
        return images

    def _indices(self, indices) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        count = len(self.table)
        if ((indices < -count) | (indices >= count)).any():
            raise IndexError(f"particle index out of range for a data set of {count} particles")
        return np.where(indices < 0, indices + count, indices)

    def __getitems__(self, indices) -> ParticleBatch:
        """The particles at ``indices`` (a list of ints), batched: same keys as an item, leading axis ``B``."""
        indices = self._indices(indices)
        images = torch.from_numpy(self._read_images(indices))
        if self.box != self.table.box:
            images = resample_images(images, self.box)
        if self.invert_contrast:
            images = -images
        batch = ParticleBatch(image=images.contiguous(), index=torch.from_numpy(indices))
        if self.table.ctf is not None:
            batch["ctf"] = torch.from_numpy(np.asarray(self.table.ctf[indices], dtype=np.float32))
        if self.table.euler_angles_degrees is not None:
            batch["euler_angles_degrees"] = torch.from_numpy(
                np.asarray(self.table.euler_angles_degrees[indices], dtype=np.float32))
            origins = self.table.origins_angstrom
            origins = np.zeros((len(indices), 2)) if origins is None else origins[indices]
            batch["origins_angstrom"] = torch.from_numpy(np.asarray(origins, dtype=np.float32))
        return batch

    def __getitem__(self, index) -> dict:
        if isinstance(index, torch.Tensor):
            index = index.item()
        return {key: value[0] for key, value in self.__getitems__([int(index)]).items()}


def normalization_stats(dataset: ParticleDataset, num_samples: int = 1000,
                        generator: torch.Generator | None = None, batch_size: int = 256) -> tuple[float, float]:
    """Mean and standard deviation of the pixel values over a random subset of the data set's images.

    Args:
        dataset: the particles (after its downsampling and contrast inversion).
        num_samples: number of images drawn without replacement (all of them if fewer).
        generator: torch random generator for the draw (seed it for reproducibility).

    Returns:
        ``(mean, std)`` as Python floats.
    """
    count = min(int(num_samples), len(dataset))
    if count < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    chosen = np.sort(torch.randperm(len(dataset), generator=generator)[:count].numpy())
    total = total_squares = 0.0
    for start in range(0, count, batch_size):
        images = dataset.__getitems__(chosen[start:start + batch_size])["image"].to(torch.float64)
        total += images.sum().item()
        total_squares += images.square().sum().item()
    pixels = count * dataset.box * dataset.box
    mean = total / pixels
    std = float(np.sqrt(max(total_squares / pixels - mean * mean, 0.0)))
    if not std > 0:
        raise ValueError(f"the {count} sampled particle images are constant; they cannot be normalised")
    return mean, std
