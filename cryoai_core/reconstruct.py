"""Direct Fourier inversion: a map from particle images with known poses (no network), and gold-standard
half maps with their FSC resolution.

By the Fourier-slice theorem (:mod:`cryoai_core.slicing`) the centred transform of particle ``i``, its
origin undone, is ``F_i(k) = c_i(k) V̂(A_iᵀ k) + noise`` with ``c_i`` its CTF (:mod:`cryoai_core.ctf`).
Each image's transform, on its own ``L × L`` grid (where the CTF and the shift act, as in the forward
model), is inserted into a 3D grid ``padding`` times finer (a map box ``padding · L``) with trilinear
weights ``w``: ``N(g) = Σ w c_i F_i`` and ``W(g) = Σ w c_i²``. The Wiener estimate is
``V̂(g) = N(g) / (W(g) + τ(|g|))``, inverse transformed, cropped to the box and divided by the trilinear
apodization (gridding correction, :func:`cryoai_core.slicing.trilinear_apodization`).

``τ = σ²/S(k)`` is the noise-to-signal power ratio per image. It is measured from the two half maps:
with ``W̄`` the mean weight of a half map in a shell, ``FSC = S W̄ / (S W̄ + σ²)``, so
``τ = W̄ (1 - FSC) / FSC`` (the same ratio serves the full map, whose ``W̄`` and FSC are both larger).
Half maps are first reconstructed with the floor ``τ = tau_floor · W̄``, then again with the measured τ
(settings: :class:`~cryoai_core.train.config.HalfMapConfig`).

The half-map FSC is corrected by high-resolution noise substitution (Chen et al. 2013, Ultramicroscopy
135: 24): a map is made from the spectrum on the padded grid by an inverse transform, a crop to the box and
the gridding correction, real-space operations that carry part of each shell's content into every other
shell. Content the halves share at low resolution (signal, or noise aligned alike by poses chosen on one
reference) then raises their FSC up to Nyquist where they have nothing in common. The phases of both
halves beyond the first shell whose FSC ``FSC_t`` falls below ``randomize_fsc`` are replaced by random
ones (each half its own), the maps are made the same way, and their FSC ``FSC_n`` beyond that shell is
what those operations alone give; the reported FSC there is ``(FSC_t - FSC_n) / (1 - FSC_n)``.

These half maps are independent only when the poses were found apart for each half; the half maps of
poses predicted from every particle are refined apart by :mod:`cryoai_core.gold_standard`.

Units: a map voxel is ``F / pixel_size`` in DFT terms, the inverse of :meth:`VoxelFourierVolume.project`
on a common grid, so noise-free data reproduce the map they were projected from (band-limited to Nyquist).
"""
import dataclasses
import logging

import numpy as np
import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.evaluate.fsc import fsc_curve, resolution_at
from cryoai_core.fourier import fft2_centered, frequency_grid_2d, frequency_grid_3d, translation_phase
from cryoai_core.rotations import euler_to_matrix
from cryoai_core.slicing import central_slice_coords, trilinear_apodization
from cryoai_core.train.config import HalfMapConfig
from cryoai_core.train.progress import progress_batches

logger = logging.getLogger(__name__)

class FourierAccumulator:
    """CTF-weighted sums of image transforms and of squared CTFs on a padded 3D Fourier grid.

    Args:
        box: image and map side ``L`` in pixels.
        pixel_size_angstrom: pixel size of the images.
        padding: padding factor; the grid has ``M = padding · L`` points a side.
    """

    def __init__(self, box: int, pixel_size_angstrom: float, padding: int = HalfMapConfig.padding):
        if box < 4 or box % 2:
            raise ValueError(f"the box must be even and at least 4 pixels, got {box}")
        if not pixel_size_angstrom > 0:
            raise ValueError(f"the pixel size must be positive, got {pixel_size_angstrom}")
        self.box = int(box)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.size = int(padding) * self.box
        m = self.size
        self.numerator = torch.zeros(2, m ** 3, dtype=torch.float64)
        self.weight = torch.zeros(m ** 3, dtype=torch.float64)
        offsets = frequency_grid_2d(self.box, 1.0 / self.box, dtype=torch.float64)
        self._inside = (torch.linalg.vector_norm(offsets, dim=-1) <= self.box / 2).reshape(-1)
        self._plane_index = offsets.reshape(-1, 2)[self._inside] * int(padding)
        self._freqs_px = frequency_grid_2d(self.box, 1.0, dtype=torch.float64)
        self._freqs_angstrom = frequency_grid_2d(self.box, self.pixel_size_angstrom, dtype=torch.float64)

    def insert(self, images: torch.Tensor, rotations: torch.Tensor, origins_angstrom: torch.Tensor,
               ctf: torch.Tensor | None) -> None:
        """Add ``B`` images ``(B, L, L)`` with RELION matrices ``(B, 3, 3)``, origins ``(B, 2)`` Å and CTF
        parameters ``(B, 8)`` (``None``: no CTF)."""
        spectra = fft2_centered(images.to(torch.float64))
        shifts_px = origins_angstrom.to(torch.float64) / self.pixel_size_angstrom
        spectra = spectra * translation_phase(self._freqs_px, shifts_px)
        if ctf is None:
            ctf_values = torch.ones(spectra.shape, dtype=torch.float64)
        else:
            ctf_values = compute_ctf(self._freqs_angstrom, CTFParams.from_array(ctf.to(torch.float64)))
        data = (spectra * ctf_values).reshape(len(images), -1)[:, self._inside]
        weights = (ctf_values ** 2).reshape(len(images), -1)[:, self._inside]
        coords = central_slice_coords(rotations.to(torch.float64), self._plane_index) + self.size // 2
        self._splat(coords.reshape(-1, 3), data.reshape(-1), weights.reshape(-1))

    def _splat(self, coords: torch.Tensor, data: torch.Tensor, weights: torch.Tensor) -> None:
        """Trilinear insertion of complex ``data`` ``(P,)`` and real ``weights`` ``(P,)`` at grid coordinates
        ``coords`` ``(P, 3)`` (``x, y, z`` voxel indices); corners off the grid are dropped."""
        m = self.size
        base = torch.floor(coords)
        upper = coords - base                                                   # weight of the corner above
        lower = 1.0 - upper
        base = base.to(torch.int64)
        flat_base = (base[:, 2] * m + base[:, 1]) * m + base[:, 0]
        inside = [(base >= -step) & (base < m - step) for step in (0, 1)]       # per axis, (P, 3)
        indices, factors = [], []
        for corner in range(8):
            steps = [(corner >> axis) & 1 for axis in range(3)]
            picks = [(upper if step else lower)[:, axis] for axis, step in enumerate(steps)]
            valid = inside[steps[0]][:, 0] & inside[steps[1]][:, 1] & inside[steps[2]][:, 2]
            flat = flat_base + (steps[2] * m + steps[1]) * m + steps[0]
            # A corner off the grid adds zeros to voxel 0 (cheaper than compacting the arrays).
            indices.append(torch.where(valid, flat, 0))
            factors.append(torch.where(valid, picks[0] * picks[1] * picks[2], 0.0))
        # Point by point, its 8 corners together (neighbouring voxels: fewer cache misses in the scatter).
        index, factor = torch.stack(indices, dim=1).reshape(-1), torch.stack(factors, dim=1)   # (P 8,), (P, 8)
        # One in-place scatter-add per sum (a bincount would build and add a dense m³ array per corner).
        self.numerator[0].scatter_add_(0, index, (factor * data.real[:, None]).reshape(-1))
        self.numerator[1].scatter_add_(0, index, (factor * data.imag[:, None]).reshape(-1))
        self.weight.scatter_add_(0, index, (factor * weights[:, None]).reshape(-1))

    def shell_mean_weight(self) -> torch.Tensor:
        """Mean weight ``W̄`` per shell of the map box ``(L // 2 + 1,)`` (shells one map Fourier pixel wide)."""
        shells, inside = self._shells()
        sums = torch.bincount(shells[inside], self.weight[inside], minlength=self.box // 2 + 1)
        counts = torch.bincount(shells[inside], minlength=self.box // 2 + 1).clamp_min(1)
        return sums / counts

    def _shells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(shells (M³,), inside (M³,))``: each grid point's shell and whether it is within the box's Nyquist
        shell (computed once per accumulator)."""
        if getattr(self, "_shell_index", None) is None:
            m = self.size
            radius = torch.linalg.vector_norm(frequency_grid_3d(m, 1.0 / m, dtype=torch.float64), dim=-1)
            shells = torch.round(radius.reshape(-1) * self.box / m).to(torch.int64)
            self._shell_index = shells, shells <= self.box // 2
        return self._shell_index

    def volume(self, tau_per_shell: torch.Tensor, randomize_beyond: int | None = None,
               generator: torch.Generator | None = None) -> np.ndarray:
        """The Wiener-filtered map ``(L, L, L)`` ``[z, y, x]`` for a Wiener constant per shell ``(L // 2 + 1,)``.

        ``randomize_beyond``: the phases of the shells beyond this one (map Fourier pixels) are replaced by
        random ones (``generator``), with Friedel symmetry kept (high-resolution noise substitution,
        :func:`noise_substituted_fsc`)."""
        m = self.size
        shells, inside = self._shells()
        points = inside.nonzero().squeeze(1)             # the spectrum is zero beyond the Nyquist shell
        shells = shells[points]
        denominator = self.weight[points] + tau_per_shell.to(torch.float64)[shells]
        positive = denominator > 0
        scale = torch.where(positive, 1.0 / denominator.clamp_min(1e-300), 0.0)
        values = torch.complex(self.numerator[0][points] * scale, self.numerator[1][points] * scale)
        if randomize_beyond is not None:
            phases = torch.rand((m, m, m), generator=generator, dtype=torch.float64) * (2.0 * np.pi)
            # The point opposite index i (per axis) is -i modulo m.
            z, y, x = points // (m * m), points // m % m, points % m
            opposite = (((m - z) % m) * m + (m - y) % m) * m + (m - x) % m
            flat = phases.reshape(-1)
            difference = flat[points] - flat[opposite]
            turned = shells > randomize_beyond
            values = torch.where(turned, values * torch.polar(torch.ones_like(difference), difference), values)
        spectrum = torch.zeros(m ** 3, dtype=torch.complex128)
        spectrum[points] = values
        # The centred inverse transform cropped to the box, without rolling the padded cube: on an even grid the
        # centring roll of the spectrum multiplies the uncentred inverse by (-1)^n on every axis, and the box is
        # the window of uncentred indices [-L/2, L/2).
        window = torch.arange(-(self.box // 2), self.box - self.box // 2) % m
        sign = 1.0 - 2.0 * (window % 2).to(torch.float64)
        padded = torch.fft.ifftn(spectrum.reshape(m, m, m))
        volume = padded[window][:, window][:, :, window].real \
            * (sign[:, None, None] * sign[None, :, None] * sign[None, None, :])
        volume = volume / trilinear_apodization(self.box, m, volume.dtype, volume.device)
        return (volume / self.pixel_size_angstrom).numpy()

    def merged(self, other: "FourierAccumulator") -> "FourierAccumulator":
        """A new accumulator holding the sums of both."""
        total = FourierAccumulator(self.box, self.pixel_size_angstrom, self.size // self.box)
        total.numerator = self.numerator + other.numerator
        total.weight = self.weight + other.weight
        return total


@dataclasses.dataclass(frozen=True)
class HalfMapResult:
    """Half maps, their FSC and the map of all particles.

    Attributes:
        half1, half2, full: ``(L, L, L)`` Wiener-filtered maps of each half and of every particle.
        halves: ``(N,)`` int8, the half (1 or 2) of each particle.
        frequencies: ``(L // 2 + 1,)`` shell frequencies in cycles per pixel.
        fsc: ``(L // 2 + 1,)`` FSC between the half maps.
        resolution_pixels: where that FSC falls below the threshold (2.0 = Nyquist).
        pixel_size_angstrom: pixel size of the maps.
        euler_angles_degrees, origins_angstrom: ``(N, 3)``, ``(N, 2)`` the poses the maps were made with.
        fsc_threshold: the gold-standard FSC threshold.
        refine_rounds: rounds of gold-standard refinement behind the poses (0: the poses as given).
        fsc_uncorrected: ``(L // 2 + 1,)`` the half-map FSC before the noise-substitution correction (``fsc``
            is the corrected one, see the module); ``fsc_randomized``: the FSC with phases randomised beyond
            the shell ``randomized_beyond``.
        established: False when the correction moved the resolution by more than
            ``HalfMapConfig.established_ratio`` (see :attr:`warning`).
    """

    half1: np.ndarray
    half2: np.ndarray
    full: np.ndarray
    halves: np.ndarray
    frequencies: np.ndarray
    fsc: np.ndarray
    resolution_pixels: float
    pixel_size_angstrom: float
    euler_angles_degrees: np.ndarray
    origins_angstrom: np.ndarray
    fsc_threshold: float
    refine_rounds: int = 0
    fsc_uncorrected: np.ndarray | None = None
    fsc_randomized: np.ndarray | None = None
    randomized_beyond: int | None = None
    established: bool = True

    @property
    def resolution_pixels_uncorrected(self) -> float | None:
        """The resolution the FSC gives before the noise-substitution correction (None when not measured)."""
        if self.fsc_uncorrected is None:
            return None
        return resolution_at(self.frequencies, self.fsc_uncorrected, self.fsc_threshold)

    @property
    def warning(self) -> str | None:
        """Why the resolution is not established, for the user (None when it is)."""
        if self.established:
            return None
        return (f"resolution not established: before the noise-substitution correction the half maps claimed "
                f"{self.resolution_pixels_uncorrected * self.pixel_size_angstrom:.2f} Å, after it "
                f"{self.resolution_angstrom:.2f} Å; halves that agree mostly through low-resolution content "
                f"spread over the box share noise aligned alike (poses chosen on one map), which happens when "
                f"the poses are poor; check the map before trusting either figure")

    @property
    def resolution_angstrom(self) -> float:
        return self.resolution_pixels * self.pixel_size_angstrom


SUBSET_COLUMN = "rlnRandomSubset"
"""RELION's half-set column: the half (1 or 2) of each particle, kept by RELION and cryoSPARC, so that a
refinement started from ``particles.star`` keeps the split of the half maps."""


def halves_of(table, seed: int) -> np.ndarray:
    """``(N,)`` int8: the halves of ``table``'s :data:`SUBSET_COLUMN` when it holds a valid split (every
    particle in 1 or 2, both halves used), else a random 50/50 split (:func:`split_halves`)."""
    return halves_from(table.extra_columns.get(SUBSET_COLUMN), len(table), seed)


def halves_from(values, count: int, seed: int) -> np.ndarray:
    """``(count,)`` int8: ``values`` (a :data:`SUBSET_COLUMN`, or ``None``) when they split ``count`` particles
    into halves 1 and 2 (both used), else a random 50/50 split (:func:`split_halves`)."""
    if values is not None:
        halves = np.asarray(values)
        if halves.shape == (count,) and np.isin(halves, (1, 2)).all() and len(np.unique(halves)) == 2:
            return halves.astype(np.int8)
        logger.warning("%s does not split the particles into halves 1 and 2: a new random split is made",
                       SUBSET_COLUMN)
    return split_halves(count, seed)


def with_halves(table, seed: int):
    """``table`` with its halves (:func:`halves_of`) in the column :data:`SUBSET_COLUMN`."""
    columns = dict(table.extra_columns, **{SUBSET_COLUMN: halves_of(table, seed).astype(np.int64)})
    return dataclasses.replace(table, extra_columns=columns)


def split_halves(count: int, seed: int) -> np.ndarray:
    """``(count,)`` int8: a random 50/50 assignment of particles to half 1 or 2 (sizes differ by at most 1)."""
    if count < 2:
        raise ValueError(f"half maps need at least 2 particles, got {count}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(int(seed))).numpy()
    halves = np.ones(count, dtype=np.int8)
    halves[order[count // 2:]] = 2
    return halves


def accumulate(dataset, euler_angles_degrees: np.ndarray, origins_angstrom: np.ndarray,
               indices: np.ndarray, batch_size: int = 256, padding: int = HalfMapConfig.padding,
               progress: bool = False) -> FourierAccumulator:
    """Insert the particles ``indices`` of a :class:`~cryoai_core.io.dataset.ParticleDataset` with the given
    poses (``(N, 3)`` RELION Euler degrees, ``(N, 2)`` origins Å, rows of the whole data set)."""
    accumulator = FourierAccumulator(dataset.box, dataset.pixel_size_angstrom, padding)
    rotations = euler_to_matrix(np.asarray(euler_angles_degrees, dtype=np.float64))
    origins = torch.as_tensor(np.asarray(origins_angstrom, dtype=np.float64))
    starts = range(0, len(indices), batch_size)
    for start in progress_batches(starts, "backproject", bar=progress):
        chunk = np.asarray(indices[start:start + batch_size])
        batch = dataset.__getitems__(chunk.tolist())
        ctf = batch["ctf"] if "ctf" in batch else None
        accumulator.insert(batch["image"], rotations[chunk], origins[chunk], ctf)
    return accumulator


def wiener_tau(fsc: np.ndarray, mean_weight: torch.Tensor, config: HalfMapConfig = HalfMapConfig()) -> torch.Tensor:
    """``τ = W̄ (1 - FSC) / FSC`` per shell from a half-map FSC and a half map's mean weight per shell,
    floored at ``config.tau_floor · W̄`` (shells with an FSC below ``config.fsc_floor`` count as noise)."""
    fsc = torch.as_tensor(fsc, dtype=torch.float64).clamp(config.fsc_floor, 1.0)
    return torch.maximum(mean_weight * (1.0 - fsc) / fsc, config.tau_floor * mean_weight)


def reconstruct_halves(dataset, euler_angles_degrees: np.ndarray, origins_angstrom: np.ndarray,
                       halves: np.ndarray, config: HalfMapConfig = HalfMapConfig(), batch_size: int = 256,
                       progress: bool = False) -> HalfMapResult:
    """Half maps of a given split ``halves`` ``(N,)`` (1 or 2 per particle), backprojected with the given
    poses, their FSC and resolution, and the map of all particles (see :func:`reconstruct_half_maps`)."""
    count = len(dataset)
    if len(euler_angles_degrees) != count or len(origins_angstrom) != count:
        raise ValueError(f"{len(euler_angles_degrees)} poses for {count} particles")
    halves = np.asarray(halves, dtype=np.int8)
    if halves.shape != (count,) or not np.isin(halves, (1, 2)).all() or len(np.unique(halves)) != 2:
        raise ValueError("the split must give every particle a half, 1 or 2, and both halves particles")
    first = accumulate(dataset, euler_angles_degrees, origins_angstrom, np.flatnonzero(halves == 1),
                       batch_size, config.padding, progress)
    second = accumulate(dataset, euler_angles_degrees, origins_angstrom, np.flatnonzero(halves == 2),
                        batch_size, config.padding, progress)
    mean_weight = 0.5 * (first.shell_mean_weight() + second.shell_mean_weight())
    fsc_floored = noise_substituted_fsc(first, second, config.tau_floor * mean_weight, config)
    tau = wiener_tau(fsc_floored.fsc, mean_weight, config)
    measured = noise_substituted_fsc(first, second, tau, config)
    full = first.merged(second).volume(tau)
    frequencies, fsc = measured.frequencies, measured.fsc
    resolution = resolution_at(frequencies, fsc, config.fsc_threshold)
    raw_resolution = resolution_at(frequencies, measured.fsc_uncorrected, config.fsc_threshold)
    established = bool(resolution <= config.established_ratio * raw_resolution or not np.isfinite(raw_resolution))
    logger.info("half maps: %d + %d particles, FSC=%.3f resolution %.2f px (%.2f Å); %.2f px before the noise "
                "substitution beyond shell %d", int((halves == 1).sum()), int((halves == 2).sum()),
                config.fsc_threshold, resolution, resolution * dataset.pixel_size_angstrom, raw_resolution,
                measured.randomized_beyond)
    return HalfMapResult(measured.half1, measured.half2, full, halves, frequencies, fsc, resolution,
                         dataset.pixel_size_angstrom, np.asarray(euler_angles_degrees, dtype=np.float64),
                         np.asarray(origins_angstrom, dtype=np.float64), config.fsc_threshold,
                         fsc_uncorrected=measured.fsc_uncorrected, fsc_randomized=measured.fsc_randomized,
                         randomized_beyond=measured.randomized_beyond, established=established)


@dataclasses.dataclass(frozen=True)
class NoiseSubstitutedFSC:
    """The half maps of one Wiener constant and their FSC, corrected by noise substitution (see the module).

    Attributes:
        half1, half2: ``(L, L, L)`` the half maps.
        frequencies: ``(L // 2 + 1,)`` shell frequencies in cycles per pixel.
        fsc: ``(L // 2 + 1,)`` the corrected FSC.
        fsc_uncorrected: the FSC of the half maps as they are, ``FSC_t``.
        fsc_randomized: the FSC of the half maps with phases randomised beyond ``randomized_beyond``, ``FSC_n``
            (equal to ``FSC_t`` up to that shell).
        randomized_beyond: the last shell kept (``L // 2`` when ``FSC_t`` never falls below the threshold).
    """

    half1: np.ndarray
    half2: np.ndarray
    frequencies: np.ndarray
    fsc: np.ndarray
    fsc_uncorrected: np.ndarray
    fsc_randomized: np.ndarray
    randomized_beyond: int


def noise_substituted_fsc(first: FourierAccumulator, second: FourierAccumulator, tau_per_shell: torch.Tensor,
                          config: HalfMapConfig = HalfMapConfig(), seed: int = 0) -> NoiseSubstitutedFSC:
    """Half maps of two accumulators for a Wiener constant per shell and their FSC corrected by
    high-resolution noise substitution: phases randomised beyond the first shell whose FSC falls below
    ``config.randomize_fsc`` (random phases drawn from ``seed``, each half its own)."""
    half1, half2 = first.volume(tau_per_shell), second.volume(tau_per_shell)
    frequencies, uncorrected = fsc_curve(half1, half2)
    below = np.flatnonzero(uncorrected[1:] < config.randomize_fsc)
    kept = len(uncorrected) - 1 if len(below) == 0 else int(below[0])
    randomized, corrected = uncorrected.copy(), uncorrected.copy()
    if kept < len(uncorrected) - 1:
        generator = torch.Generator().manual_seed(int(seed))
        _, randomized = fsc_curve(first.volume(tau_per_shell, kept, generator),
                                  second.volume(tau_per_shell, kept, generator))
        beyond = np.arange(len(uncorrected)) > kept
        shared = np.minimum(randomized[beyond], 1.0 - config.fsc_floor)
        corrected[beyond] = (uncorrected[beyond] - shared) / (1.0 - shared)
    return NoiseSubstitutedFSC(half1, half2, frequencies, corrected, uncorrected, randomized, kept)


def reconstruct_half_maps(dataset, euler_angles_degrees: np.ndarray, origins_angstrom: np.ndarray,
                          seed: int = 0, batch_size: int = 256, config: HalfMapConfig = HalfMapConfig(),
                          progress: bool = False) -> HalfMapResult:
    """Half maps on a random 50/50 split backprojected with the given poses, their FSC and resolution, and
    the map of all particles. The FSC is a gold-standard one only when the poses were found apart for
    each half (:mod:`cryoai_core.gold_standard` refines them apart).

    Args:
        dataset: the particles (images at ``dataset.box``, CTF when the table has one).
        euler_angles_degrees: ``(N, 3)`` RELION angles of every particle.
        origins_angstrom: ``(N, 2)`` RELION origins in Å.
        seed: seed of the split.
    """
    count = len(dataset)
    if len(euler_angles_degrees) != count or len(origins_angstrom) != count:
        raise ValueError(f"{len(euler_angles_degrees)} poses for {count} particles")
    return reconstruct_halves(dataset, euler_angles_degrees, origins_angstrom, split_halves(count, seed), config,
                              batch_size, progress)


HALF_MAP_FILES = {"half1": "half1.mrc", "half2": "half2.mrc", "volume_backprojected": "volume_backprojected.mrc",
                  "fsc_halves_png": "fsc_halves.png", "resolution": "resolution.json"}
"""Files written by :func:`write_half_maps` into a run folder."""


def write_half_maps(result: HalfMapResult, outdir: str, output_box: int, output_pixel_size_angstrom: float,
                    seed: int) -> dict:
    """Write the half maps, the backprojected map of all particles (Fourier padded or cropped to
    ``output_box`` at ``output_pixel_size_angstrom``), ``fsc_halves.png`` and ``resolution.json``.

    Returns the written paths keyed as in :data:`HALF_MAP_FILES`.
    """
    import json
    import os

    from cryoai_core.fourier import resample_volume
    from cryoai_core.io.atomic import atomic_open
    from cryoai_core.io.mrc import write_mrc
    from cryoai_core.plots import plot_fsc

    paths = {name: os.path.join(outdir, file) for name, file in HALF_MAP_FILES.items()}
    for name, volume in (("half1", result.half1), ("half2", result.half2), ("volume_backprojected", result.full)):
        tensor = torch.from_numpy(np.asarray(volume, dtype=np.float64))
        if output_box != tensor.shape[-1]:
            tensor = resample_volume(tensor, output_box)
        write_mrc(paths[name], tensor.numpy().astype(np.float32), output_pixel_size_angstrom)
    curves = {"half 1 vs half 2 (corrected)": (result.frequencies, result.fsc)}
    if result.fsc_uncorrected is not None:
        curves["before the correction"] = (result.frequencies, result.fsc_uncorrected)
        curves["phases randomised"] = (result.frequencies, result.fsc_randomized)
    plot_fsc(paths["fsc_halves_png"], curves, result.pixel_size_angstrom, thresholds=(result.fsc_threshold,))
    document = {
        "fsc_threshold": result.fsc_threshold,
        "resolution_angstrom": result.resolution_angstrom,
        "resolution_pixels": result.resolution_pixels,
        "pixel_size_angstrom": result.pixel_size_angstrom,
        "particles_per_half": [int((result.halves == 1).sum()), int((result.halves == 2).sum())],
        "split_seed": int(seed),
        "gold_standard_rounds": int(result.refine_rounds),
        "method": ("direct Fourier inversion with the CTF, Wiener-filtered, "
                   + (f"each half's poses refined against its own half map ({result.refine_rounds} rounds)"
                      if result.refine_rounds else "poses as given")),
        "frequencies_per_angstrom": (np.asarray(result.frequencies) / result.pixel_size_angstrom).tolist(),
        "fsc": np.asarray(result.fsc).tolist(),
    }
    if result.fsc_uncorrected is not None:
        document.update({
            "fsc_uncorrected": np.asarray(result.fsc_uncorrected).tolist(),
            "fsc_phases_randomized": np.asarray(result.fsc_randomized).tolist(),
            "phases_randomized_beyond_shell": int(result.randomized_beyond),
            "resolution_pixels_uncorrected": result.resolution_pixels_uncorrected,
        })
    document["resolution_established"] = bool(result.established)
    if not result.established:
        document["resolution_warning"] = result.warning
        logger.warning(result.warning)
    with atomic_open(paths["resolution"]) as handle:
        json.dump(document, handle, indent=1)
    logger.info("gold-standard resolution (half maps, FSC=%.3f): %.2f Å", result.fsc_threshold,
                result.resolution_angstrom)
    return paths
