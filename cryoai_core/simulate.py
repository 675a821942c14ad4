"""Simulated particle images with known poses, from a map: the ground truth for tests and benchmarks.

Image formation (the same model as the decoder's, :mod:`cryoai_core.slicing`, :mod:`cryoai_core.ctf`)::

    image = F⁻¹[ CTF · exp(+2πi k·o) · V̂(Aᵀ k) ] + noise

with ``A`` uniform on SO(3), RELION origins ``o`` (Å) drawn from a Gaussian (the particle lies at ``-o``),
log-normal defocus with astigmatism, and white Gaussian noise whose variance is the expected clean-image
variance (over the box) divided by the SNR. SNR is a variance ratio; ``snr_db = 10 log10(snr)``.

Real distributions replace the random draws on request (:mod:`cryoai_core.io.pose_tables`): poses and
origins are rows of a pose table drawn with replacement (origins scaled from the table's box to the
particle box, as fractions of the box side), defocus U/V, angle and phase shift rows of a defocus table
(voltage, Cs and amplitude contrast stay the configured ones). A fraction of the particles can be junk:
pure-noise images at the particles' noise level, flagged ``1`` in the star column :data:`JUNK_COLUMN`.
"""
import dataclasses
import logging
import math
import os

import numpy as np
import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.fourier import crop_or_pad_real, fft2_centered, frequency_grid_2d, ifft2_centered, \
    origin_phase, resample_volume
from cryoai_core.io.ctf_table import CTF_FIELDS
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.pose_tables import DefocusTable, PoseTable, read_defocus_table, read_pose_table
from cryoai_core.provenance import save_config
from cryoai_core.rotations import matrix_to_euler, random_rotations
from cryoai_core.slicing import VoxelFourierVolume
from cryoai_core.train.progress import progress_batches

logger = logging.getLogger(__name__)

PILOT_IMAGES = 2000
"""Noise-free images drawn (from their own random stream) to estimate the signal variance for the SNR."""
JUNK_COLUMN = "rlnCryoaiIsJunk"
"""Star column of the truth file: 1 for a pure-noise (junk) image, 0 for a particle."""


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated data set (saved as ``simulation.yaml``)."""

    num_particles: int
    """Number of particle images."""
    box: int | None = None
    """Particle box in pixels; ``None`` keeps the map's box."""
    pixel_size_angstrom: float | None = None
    """Particle pixel size; ``None`` keeps the map's voxel size."""
    shift_sigma_angstrom: float = 0.0
    """Standard deviation of the Gaussian origins, per axis, in Å."""
    apply_ctf: bool = True
    """Multiply by the CTF (and record CTF parameters in the star file)."""
    defocus_median_angstrom: float = 15000.0
    """Median of the log-normal defocus (mean of U and V), Å."""
    defocus_log_sigma: float = 0.2
    """Standard deviation of the natural log of the defocus."""
    astigmatism_sigma_angstrom: float = 300.0
    """Standard deviation of ``defocusU - defocusV`` (half-normal), Å; the azimuth is uniform."""
    voltage_kv: float = 300.0
    spherical_aberration_mm: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor_angstrom2: float = 0.0
    """B-factor of the CTF envelope ``exp(-B s²/4)``."""
    snr: float | None = None
    """Signal-to-noise variance ratio; ``None`` for noise-free images."""
    seed: int = 0
    oversampling: int = 0
    """Padding factor of the map's transform; 0 chooses 4 for maps up to 128 voxels, else 2."""
    poses_from: str | None = None
    """Pose table (star, .cs, cryoDRGN pkl) whose poses and origins are drawn instead of uniform ones."""
    defocus_from: str | None = None
    """Defocus table (star, .cs, cryoDRGN CTF pkl) whose defocus rows replace the log-normal draw."""
    junk_fraction: float = 0.0
    """Fraction of the particles replaced by pure-noise images (needs an SNR)."""

    def __post_init__(self):
        if self.num_particles < 1:
            raise ValueError(f"the number of particles must be at least 1, got {self.num_particles}")
        if self.box is not None and (self.box < 8 or self.box % 2):
            raise ValueError(f"the particle box must be even and at least 8 pixels, got {self.box}")
        if self.pixel_size_angstrom is not None and not self.pixel_size_angstrom > 0:
            raise ValueError(f"the pixel size must be positive, got {self.pixel_size_angstrom}")
        if self.shift_sigma_angstrom < 0:
            raise ValueError(f"the shift sigma must be >= 0, got {self.shift_sigma_angstrom}")
        if self.snr is not None and not (self.snr > 0 and math.isfinite(self.snr)):
            raise ValueError(f"the SNR must be a positive variance ratio, got {self.snr}")
        if not 0.0 <= self.amplitude_contrast < 1.0:
            raise ValueError(f"the amplitude contrast must lie in [0, 1), got {self.amplitude_contrast}")
        if self.voltage_kv <= 0 or self.defocus_median_angstrom <= 0:
            raise ValueError("voltage and defocus must be positive")
        if not 0.0 <= self.junk_fraction < 1.0:
            raise ValueError(f"the junk fraction must lie in [0, 1), got {self.junk_fraction}")
        if self.junk_fraction > 0 and self.snr is None:
            raise ValueError("junk particles are pure noise: a junk fraction needs an SNR")
        if self.poses_from is not None and self.shift_sigma_angstrom > 0:
            raise ValueError("the pose table gives the shifts: use either a pose table or a shift sigma")
        if self.defocus_from is not None and not self.apply_ctf:
            raise ValueError("a defocus table needs the CTF (it cannot be combined with no CTF)")


@dataclasses.dataclass(frozen=True)
class SimulatedParameters:
    """Per-particle ground truth, ``N`` rows."""

    rotations: torch.Tensor
    """``(N, 3, 3)`` RELION matrices A (float64)."""
    origins_angstrom: torch.Tensor
    """``(N, 2)`` RELION origins (float64)."""
    ctf: np.ndarray
    """``(N, 8)`` CTF parameters in CTF_FIELDS order."""


@dataclasses.dataclass(frozen=True)
class RealTables:
    """Real distributions to draw from (either may be ``None``), and the particle box side in Å."""

    poses: PoseTable | None = None
    defocus: DefocusTable | None = None
    box_angstrom: float = 0.0

    @classmethod
    def load(cls, config: SimulationConfig, box_angstrom: float) -> "RealTables":
        """Read the tables named by ``config`` (``ValueError`` / ``FileNotFoundError`` when unreadable)."""
        poses = read_pose_table(config.poses_from) if config.poses_from else None
        defocus = read_defocus_table(config.defocus_from) if config.defocus_from else None
        return cls(poses, defocus, float(box_angstrom))


def draw_parameters(config: SimulationConfig, count: int, generator: torch.Generator,
                    tables: RealTables | None = None) -> SimulatedParameters:
    """Draw poses, origins and CTF parameters for ``count`` particles.

    Rows of ``tables`` are drawn with replacement; when poses and defocus come from the same file, one
    row gives both (a particle keeps its own pose and defocus).
    """
    tables = tables or RealTables()
    rotations = random_rotations(count, generator)
    origins = torch.randn(count, 2, generator=generator, dtype=torch.float64) * config.shift_sigma_angstrom
    rows = None
    if tables.poses is not None:
        rows = torch.randint(len(tables.poses), (count,), generator=generator).numpy()
        rotations = torch.from_numpy(tables.poses.rotations[rows])
        origins = torch.from_numpy(tables.poses.shift_fractions[rows] * tables.box_angstrom)
    mean_defocus = config.defocus_median_angstrom * torch.exp(
        config.defocus_log_sigma * torch.randn(count, generator=generator, dtype=torch.float64))
    astigmatism = torch.randn(count, generator=generator, dtype=torch.float64).abs() \
        * config.astigmatism_sigma_angstrom
    angle = torch.rand(count, generator=generator, dtype=torch.float64) * 180.0
    ctf = np.zeros((count, len(CTF_FIELDS)))
    ctf[:, 0] = (mean_defocus + astigmatism / 2).numpy()
    ctf[:, 1] = (mean_defocus - astigmatism / 2).numpy()
    ctf[:, 2] = angle.numpy()
    ctf[:, 3] = config.voltage_kv
    ctf[:, 4] = config.spherical_aberration_mm
    ctf[:, 5] = config.amplitude_contrast
    ctf[:, 7] = config.bfactor_angstrom2
    if tables.defocus is not None:
        same_file = tables.poses is not None and tables.poses.source == tables.defocus.source
        if rows is None or not same_file:
            rows = torch.randint(len(tables.defocus), (count,), generator=generator).numpy()
        ctf[:, [0, 1, 2, 6]] = tables.defocus.defocus[rows]
    return SimulatedParameters(rotations, origins, ctf)


class ImageSimulator:
    """Noise-free particle images of one map, for any batch of parameters.

    Args:
        volume: ``(L, L, L)`` map ``[z, y, x]``.
        voxel_size_angstrom: its voxel size.
        config: output box / pixel size, CTF switch, oversampling.
    """

    def __init__(self, volume: torch.Tensor, voxel_size_angstrom: float, config: SimulationConfig):
        oversampling = config.oversampling or (4 if volume.shape[-1] <= 128 else 2)
        self.fourier_volume = VoxelFourierVolume(volume, voxel_size_angstrom, oversampling)
        self.volume = volume
        self.voxel_size_angstrom = float(voxel_size_angstrom)
        self.box = config.box or volume.shape[-1]
        self.pixel_size_angstrom = config.pixel_size_angstrom or float(voxel_size_angstrom)
        self.apply_ctf = config.apply_ctf
        self.freqs = frequency_grid_2d(self.box, self.pixel_size_angstrom, dtype=torch.float64)

    def images(self, rotations: torch.Tensor, origins_angstrom: torch.Tensor, ctf: np.ndarray) -> torch.Tensor:
        """``(B, box, box)`` float32 clean images for ``B`` particles."""
        projections = self.fourier_volume.project(rotations, self.box, self.pixel_size_angstrom)
        spectra = fft2_centered(projections.to(torch.float64))
        spectra = spectra * origin_phase(self.freqs, origins_angstrom)
        if self.apply_ctf:
            spectra = spectra * compute_ctf(self.freqs, CTFParams.from_array(torch.as_tensor(ctf)))
        return ifft2_centered(spectra).real.to(torch.float32)

    def reference_map(self) -> torch.Tensor:
        """The map resampled onto the particle grid (box and pixel size), ``(box, box, box)``.

        Fourier crop/pad to the box that brings the voxel size closest to the pixel size, then crop or
        pad in real space to the particle box; voxel values are kept (mean preserved).
        """
        size = self.volume.shape[-1]
        matched = max(2, int(round(size * self.voxel_size_angstrom / self.pixel_size_angstrom)))
        resampled = resample_volume(self.volume.to(torch.float64), matched) if matched != size \
            else self.volume.to(torch.float64)
        return crop_or_pad_real(resampled, self.box, 3).to(torch.float32)


def noise_sigma(simulator: ImageSimulator, config: SimulationConfig, tables: RealTables | None = None) -> float:
    """Noise standard deviation giving ``config.snr`` (0 for noise-free data), over the particles' own
    pose and defocus distribution."""
    if config.snr is None:
        return 0.0
    generator = torch.Generator().manual_seed(config.seed + 7919)
    count = min(PILOT_IMAGES, max(config.num_particles, 200))
    variances = []
    for start in range(0, count, 500):
        params = draw_parameters(config, min(500, count - start), generator, tables)
        images = simulator.images(params.rotations, params.origins_angstrom, params.ctf)
        variances.append(images.to(torch.float64).var(dim=(-2, -1)))
    signal_variance = torch.cat(variances).mean().item()
    return math.sqrt(signal_variance / config.snr)


def simulate(volume: np.ndarray, voxel_size_angstrom: float, config: SimulationConfig, outdir: str,
             chunk_size: int = 1000, progress: bool = True) -> ParticleTable:
    """Write ``outdir/particles.mrcs``, ``outdir/particles.star`` (RELION 3.1, true poses; with a junk
    fraction, the column :data:`JUNK_COLUMN`) and ``outdir/reference.mrc`` (the map on the particle grid);
    return the particle table. The tables of ``config`` are read before anything is written."""
    from cryoai_core.io.mrc import StackWriter, write_mrc
    from cryoai_core.io.star import write_star

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"the map must be a cubic volume, got shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise ValueError("the map contains NaN or infinite values")
    simulator = ImageSimulator(torch.from_numpy(volume), voxel_size_angstrom, config)
    tables = RealTables.load(config, simulator.box * simulator.pixel_size_angstrom)
    os.makedirs(outdir, exist_ok=True)
    sigma = noise_sigma(simulator, config, tables)
    generator = torch.Generator().manual_seed(config.seed)
    params = draw_parameters(config, config.num_particles, generator, tables)
    junk = junk_mask(config, torch.Generator().manual_seed(config.seed + 15485863))
    noise_generator = torch.Generator().manual_seed(config.seed + 104729)
    stack_path = os.path.join(outdir, "particles.mrcs")
    logger.info("simulating %d particles, box %d, %.3f Å/px, noise sigma %.4g", config.num_particles,
                simulator.box, simulator.pixel_size_angstrom, sigma)
    with StackWriter(stack_path, config.num_particles, simulator.box, simulator.pixel_size_angstrom) as writer:
        starts = range(0, config.num_particles, chunk_size)
        for start in progress_batches(starts, "simulate", bar=progress):
            stop = min(start + chunk_size, config.num_particles)
            images = simulator.images(params.rotations[start:stop], params.origins_angstrom[start:stop],
                                      params.ctf[start:stop])
            images[torch.from_numpy(junk[start:stop])] = 0.0
            if sigma > 0:
                images = images + sigma * torch.randn(images.shape, generator=noise_generator)
            writer.write(start, images.numpy())
    table = ParticleTable(
        stack_files=(os.path.abspath(stack_path),),
        stack_ids=np.zeros(config.num_particles, dtype=np.int32),
        image_indices=np.arange(config.num_particles, dtype=np.int64),
        pixel_size_angstrom=simulator.pixel_size_angstrom, box=simulator.box,
        ctf=params.ctf if config.apply_ctf else None,
        euler_angles_degrees=matrix_to_euler(params.rotations).numpy(),
        origins_angstrom=params.origins_angstrom.numpy(),
        extra_columns={JUNK_COLUMN: junk.astype(np.int64)} if config.junk_fraction > 0 else {},
        optics={"rlnVoltage": config.voltage_kv, "rlnSphericalAberration": config.spherical_aberration_mm,
                "rlnAmplitudeContrast": config.amplitude_contrast})
    write_star(os.path.join(outdir, "particles.star"), table)
    save_config(config, os.path.join(outdir, "simulation.yaml"), noise_sigma=sigma,
                map_voxel_size_angstrom=float(voxel_size_angstrom), num_junk=int(junk.sum()))
    write_mrc(os.path.join(outdir, "reference.mrc"), simulator.reference_map().numpy(),
              simulator.pixel_size_angstrom)
    return table


def junk_mask(config: SimulationConfig, generator: torch.Generator) -> np.ndarray:
    """``(N,)`` bool: ``round(junk_fraction * N)`` particles chosen at random to be pure noise."""
    count = int(round(config.junk_fraction * config.num_particles))
    mask = np.zeros(config.num_particles, dtype=bool)
    mask[torch.randperm(config.num_particles, generator=generator)[:count].numpy()] = True
    return mask
