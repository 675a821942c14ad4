"""Simulated particle images with known poses, from a map: the ground truth for tests and benchmarks.

Image formation (the same model as the decoder's, :mod:`cryoai_core.slicing`, :mod:`cryoai_core.ctf`)::

    image = F⁻¹[ CTF · exp(+2πi k·o) · V̂(Aᵀ k) ] + noise

with ``A`` uniform on SO(3), RELION origins ``o`` (Å) drawn from a Gaussian (the particle lies at ``-o``),
log-normal defocus with astigmatism, and white Gaussian noise whose variance is the expected clean-image
variance (over the box) divided by the SNR. SNR is a variance ratio; ``snr_db = 10 log10(snr)``.
"""
import dataclasses
import logging
import math
import os

import numpy as np
import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.fourier import crop_or_pad_real, fft2_centered, frequency_grid_2d, ifft2_centered, \
    resample_volume, translation_phase
from cryoai_core.io.particles import CTF_FIELDS, ParticleTable
from cryoai_core.provenance import save_config
from cryoai_core.rotations import matrix_to_euler, random_rotations
from cryoai_core.slicing import VoxelFourierVolume

logger = logging.getLogger(__name__)

PILOT_IMAGES = 2000
"""Noise-free images drawn (from their own random stream) to estimate the signal variance for the SNR."""


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


@dataclasses.dataclass(frozen=True)
class SimulatedParameters:
    """Per-particle ground truth, ``N`` rows."""

    rotations: torch.Tensor
    """``(N, 3, 3)`` RELION matrices A (float64)."""
    origins_angstrom: torch.Tensor
    """``(N, 2)`` RELION origins (float64)."""
    ctf: np.ndarray
    """``(N, 8)`` CTF parameters in CTF_FIELDS order."""


def draw_parameters(config: SimulationConfig, count: int, generator: torch.Generator) -> SimulatedParameters:
    """Draw poses, origins and CTF parameters for ``count`` particles."""
    rotations = random_rotations(count, generator)
    origins = torch.randn(count, 2, generator=generator, dtype=torch.float64) * config.shift_sigma_angstrom
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
        spectra = spectra * translation_phase(self.freqs, -origins_angstrom)
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


def noise_sigma(simulator: ImageSimulator, config: SimulationConfig) -> float:
    """Noise standard deviation giving ``config.snr`` (0 for noise-free data)."""
    if config.snr is None:
        return 0.0
    generator = torch.Generator().manual_seed(config.seed + 7919)
    count = min(PILOT_IMAGES, max(config.num_particles, 200))
    variances = []
    for start in range(0, count, 500):
        params = draw_parameters(config, min(500, count - start), generator)
        images = simulator.images(params.rotations, params.origins_angstrom, params.ctf)
        variances.append(images.to(torch.float64).var(dim=(-2, -1)))
    signal_variance = torch.cat(variances).mean().item()
    return math.sqrt(signal_variance / config.snr)


def simulate(volume: np.ndarray, voxel_size_angstrom: float, config: SimulationConfig, outdir: str,
             chunk_size: int = 1000, progress: bool = True) -> ParticleTable:
    """Write ``outdir/particles.mrcs``, ``outdir/particles.star`` (RELION 3.1, true poses) and
    ``outdir/reference.mrc`` (the map on the particle grid); return the particle table."""
    from tqdm import tqdm

    from cryoai_core.io.mrc import StackWriter, write_mrc
    from cryoai_core.io.star import write_star

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"the map must be a cubic volume, got shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise ValueError("the map contains NaN or infinite values")
    os.makedirs(outdir, exist_ok=True)
    simulator = ImageSimulator(torch.from_numpy(volume), voxel_size_angstrom, config)
    sigma = noise_sigma(simulator, config)
    generator = torch.Generator().manual_seed(config.seed)
    params = draw_parameters(config, config.num_particles, generator)
    noise_generator = torch.Generator().manual_seed(config.seed + 104729)
    stack_path = os.path.join(outdir, "particles.mrcs")
    logger.info("simulating %d particles, box %d, %.3f Å/px, noise sigma %.4g", config.num_particles,
                simulator.box, simulator.pixel_size_angstrom, sigma)
    with StackWriter(stack_path, config.num_particles, simulator.box, simulator.pixel_size_angstrom) as writer:
        starts = range(0, config.num_particles, chunk_size)
        for start in tqdm(starts, desc="simulate", unit="chunk", disable=not progress):
            stop = min(start + chunk_size, config.num_particles)
            images = simulator.images(params.rotations[start:stop], params.origins_angstrom[start:stop],
                                      params.ctf[start:stop])
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
        optics={"rlnVoltage": config.voltage_kv, "rlnSphericalAberration": config.spherical_aberration_mm,
                "rlnAmplitudeContrast": config.amplitude_contrast})
    write_star(os.path.join(outdir, "particles.star"), table)
    save_config(config, os.path.join(outdir, "simulation.yaml"), noise_sigma=sigma,
                map_voxel_size_angstrom=float(voxel_size_angstrom))
    write_mrc(os.path.join(outdir, "reference.mrc"), simulator.reference_map().numpy(),
              simulator.pixel_size_angstrom)
    return table
