"""Gold-standard half maps: each half's poses refined against that half's own map, so that the two halves
are independent at high resolution and their FSC is an honest resolution estimate.

Poses predicted by one encoder (or searched against one map) trained on every particle align the noise
of both halves alike ("Einstein from noise"): half maps backprojected straight from them agree at high
frequency even when the poses are wrong, and their FSC then claims a resolution the map does not have.
As in RELION's auto-refine, the halves of a random 50/50 split are therefore refined apart:

1. each half is backprojected with the given poses (:mod:`cryoai_core.reconstruct`), and both half maps
   are limited to a conservative radius ``r₀``: where their FSC falls below ``start_fsc``, at most
   ``start_fraction`` of Nyquist (the given poses make that FSC optimistic, so the cap is what counts
   when they are noise-aligned);
2. every particle's rotation is refined locally (:meth:`PoseSearch.refine`: 27 rotations per step,
   steps halved) against its own half map, compared on the Fourier disk of radius ``r₀`` only, so that
   the poses leave the optimum of the noise they were aligned on; the origins are kept;
3. each half is backprojected again; the half-map FSC gives the radius where it falls below the
   gold-standard threshold, and the next round refines up to there;
4. after ``rounds`` rounds: the final half maps, their FSC and the map of all particles.

The refinement is local and moves rotations only, on purpose. Measured on simulated blobs with random
poses (``tests/test_gold_standard.py``): a global search against each half's low-passed map maps every
particle to the pose that best matches the shared low-resolution start, a deterministic choice that both
halves repeat (half-map FSC ≈ 0.2 up to Nyquist, resolution claimed 2.4 px against 8.7 px for the map);
refining the origins too centres every image's noise on the shared blob alike (5.1 px claimed); refining
the rotations alone leaves random poses random, and the half maps say so (9 px). What no FSC between half maps can reveal is a map that is
wrong in a reproducible way: poses far from the truth but consistent between the halves (for instance
aligned to the same wrong low-resolution map) give half maps that agree beyond what the map has.

Restricting the comparison to a disk of radius ``r`` is the same as low-passing the reference there (a
reference that is zero beyond ``r`` adds nothing to the least-squares distance's cross term or norm).
Each particle is refined ``rounds`` times, in batches, and every round backprojects all particles once:
the cost is linear in the number of particles. Settings: :class:`~cryoai_core.train.config.HalfMapConfig` (rounds and radii) and
:class:`~cryoai_core.train.config.SearchConfig` (grid sizes, local steps).
"""
import dataclasses
import logging
import math

import numpy as np
import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.evaluate.fsc import fsc_curve
from cryoai_core.fourier import fft2_centered
from cryoai_core.models.forward_model import HalfDisk
from cryoai_core.pose_search import PoseSearch
from cryoai_core.reconstruct import HalfMapResult, accumulate, reconstruct_halves, split_halves
from cryoai_core.rotations import euler_to_matrix, matrix_to_euler
from cryoai_core.slicing import VoxelFourierVolume
from cryoai_core.train.config import HalfMapConfig, SearchConfig
from cryoai_core.train.progress import progress_batches

logger = logging.getLogger(__name__)


def reference_grid(volume: np.ndarray, pixel_size_angstrom: float):
    """A map ``(L, L, L)`` (units of :func:`reconstruct.FourierAccumulator.volume`) as a Fourier grid in
    cycles per pixel whose central slices are the transforms (:func:`fourier.fft2_centered`) of its
    projections, CTF and shift excluded: the reference the search compares image transforms with."""
    scaled = torch.from_numpy(np.asarray(volume, dtype=np.float64) * pixel_size_angstrom)
    return VoxelFourierVolume(scaled, voxel_size_angstrom=1.0).grid


def radius_below(fsc: np.ndarray, threshold: float) -> int:
    """Last shell (Fourier pixels) before the FSC ``(L // 2 + 1,)`` first falls below ``threshold``
    (at least 1; the last shell when it never does)."""
    below = np.flatnonzero(np.asarray(fsc) < threshold)
    last = len(fsc) - 1 if len(below) == 0 else int(below[0]) - 1
    return max(1, last)


def start_radius(fsc: np.ndarray, box: int, config: HalfMapConfig) -> int:
    """Radius ``r₀`` of the first round (see the module): where the FSC of the half maps of the given
    poses falls below ``config.start_fsc``, capped at ``config.start_fraction`` of Nyquist."""
    cap = max(1, int(math.floor(config.start_fraction * box / 2)))
    return min(radius_below(fsc, config.start_fsc), cap)


class _HalfRefiner:
    """Refines the poses of some particles against one half map on a disk."""

    def __init__(self, dataset, search_config: SearchConfig, batch_size: int, progress: bool):
        self.dataset = dataset
        self.box = dataset.box
        self.pixel = dataset.pixel_size_angstrom
        self.config = search_config
        self.batch_size = batch_size
        self.progress = progress
        # Only the local refinement is used: no global grid.
        self.search = PoseSearch(num_rotations=1, max_shift_px=0.0, shift_points=1, coarse_radius_px=0.0,
                                 refine_steps=search_config.refine_steps)

    def run(self, volume: np.ndarray, indices: np.ndarray, euler_angles_degrees: np.ndarray,
            origins_angstrom: np.ndarray, radius_px: int) -> None:
        """Update ``euler_angles_degrees`` ``(N, 3)`` and ``origins_angstrom`` ``(N, 2)`` (float64 rows of the
        whole data set) in place for the particles ``indices``. Only a batch's poses are ever matrices, so
        that nothing beyond the angles and origins is held per particle."""
        grid = reference_grid(volume, self.pixel)
        disk = HalfDisk(self.box, radius_px)
        freqs_angstrom = disk.freqs_px.double() / self.pixel
        starts = range(0, len(indices), self.batch_size)
        for start in progress_batches(starts, "gold-standard refinement", bar=self.progress):
            chunk = np.asarray(indices[start:start + self.batch_size])
            batch = self.dataset.__getitems__(chunk.tolist())
            targets = disk.gather(fft2_centered(batch["image"].to(torch.float32)))
            ctf = None
            if "ctf" in batch:
                ctf = compute_ctf(freqs_angstrom, CTFParams.from_array(batch["ctf"].to(torch.float64))).float()
            rotations = torch.as_tensor(euler_to_matrix(euler_angles_degrees[chunk])).float()
            origins_px = torch.as_tensor(origins_angstrom[chunk] / self.pixel).float()
            found = self.search.refine(grid, targets, ctf, disk, rotations, origins_px,
                                       self.config.local_rotation_degrees, 0.0, self.config.refine_steps)
            euler_angles_degrees[chunk] = np.asarray(matrix_to_euler(found.rotations.double()))
            origins_angstrom[chunk] = found.origins_px.double().numpy() * self.pixel


def gold_standard_half_maps(dataset, euler_angles_degrees: np.ndarray, origins_angstrom: np.ndarray,
                            seed: int = 0, config: HalfMapConfig | None = None,
                            search_config: SearchConfig | None = None, halves: np.ndarray | None = None,
                            batch_size: int = 256, progress: bool = False) -> HalfMapResult:
    """Half maps whose poses were refined apart (see the module), their FSC and resolution, the map of all
    particles, and the refined poses.

    Args:
        dataset: the particles (images at ``dataset.box``, CTF when the table has one).
        euler_angles_degrees: ``(N, 3)`` RELION angles of every particle (e.g. the predicted poses).
        origins_angstrom: ``(N, 2)`` RELION origins in Å.
        seed: seed of the split (when ``halves`` is not given).
        config: rounds and radii (default :class:`HalfMapConfig`); ``config.rounds == 0`` backprojects the
            given poses as they are (honest only when they were refined apart already).
        search_config: the local refinement's steps (default :class:`SearchConfig`).
        halves: ``(N,)`` a given split, 1 or 2 per particle (e.g. ``rlnRandomSubset`` of the input).
    """
    config = config or HalfMapConfig()
    search_config = search_config or SearchConfig()
    count = len(dataset)
    if len(euler_angles_degrees) != count or len(origins_angstrom) != count:
        raise ValueError(f"{len(euler_angles_degrees)} poses for {count} particles")
    halves = split_halves(count, seed) if halves is None else np.asarray(halves, dtype=np.int8)
    if config.rounds == 0:
        return reconstruct_halves(dataset, euler_angles_degrees, origins_angstrom, halves, config, batch_size,
                                  progress)
    members = [np.flatnonzero(halves == 1), np.flatnonzero(halves == 2)]
    euler = np.array(euler_angles_degrees, dtype=np.float64)  # refined in place: the caller's stay as given
    origins = np.array(origins_angstrom, dtype=np.float64)
    result = reconstruct_halves(dataset, euler, origins, halves, config, batch_size, progress)
    radius = start_radius(result.fsc, dataset.box, config)
    refiner = _HalfRefiner(dataset, search_config, batch_size, progress)
    for round_index in range(config.rounds):
        logger.info("gold-standard round %d/%d: poses refined against each half's own map within %d Fourier px",
                    round_index + 1, config.rounds, radius)
        for volume, indices in zip((result.half1, result.half2), members):
            refiner.run(volume, indices, euler, origins, radius)
        result = reconstruct_halves(dataset, euler, origins, halves, config, batch_size, progress)
        radius = min(radius_below(result.fsc, config.fsc_threshold), dataset.box // 2 - 1)
    return dataclasses.replace(result, refine_rounds=config.rounds)
