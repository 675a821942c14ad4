"""Simulated pose-search problems shared by the search and score tests: images of known poses and shifts
(up to ±15 % of the box), their half-disk transforms, CTFs, and the map cached in cycles per pixel."""
import torch

from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.fourier import fft2_centered
from cryoai_core.models.forward_model import HalfDisk
from cryoai_core.pose_search import PoseSearch, network_grid
from cryoai_core.simulate import ImageSimulator, SimulationConfig, draw_parameters

BOX = 32
PIXEL = 3.0
MAX_SHIFT_PX = 0.15 * BOX


def blob_map(seed: int, box: int = BOX, blobs: int = 6, spread_px: float = 12.0,
             widths_px2: tuple = (2.0, 5.0)) -> torch.Tensor:
    """An asymmetric map ``(box,)*3`` of ``blobs`` Gaussian blobs (no rotational symmetry): centres uniform
    within ``±spread_px/2`` of the centre ``box//2``, each ``exp(-r²/w)`` with ``w`` uniform in ``widths_px2``."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    volume = torch.zeros(box, box, box, dtype=torch.float64)
    low, high = widths_px2
    for _ in range(blobs):
        centre = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * spread_px
        width = low + (high - low) * torch.rand(1, generator=generator, dtype=torch.float64)
        volume += torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / width)
    return volume


class Problem:
    """Simulated images of known poses, their half-disk transforms, CTFs and the map in cycles per pixel."""

    def __init__(self, with_ctf: bool, count: int = 24, seed: int = 0, snr: float | None = None):
        volume = blob_map(seed)
        config = SimulationConfig(num_particles=count, apply_ctf=with_ctf, defocus_median_angstrom=12000.0)
        simulator = ImageSimulator(volume, PIXEL, config)
        generator = torch.Generator().manual_seed(seed + 1)
        params = draw_parameters(config, count, generator)
        self.rotations = params.rotations
        self.ctf_params = params.ctf
        shifts = (torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1) * MAX_SHIFT_PX
        shifts[:4] = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]) * MAX_SHIFT_PX
        self.origins_px = shifts
        images = simulator.images(params.rotations, shifts * PIXEL, params.ctf)
        self.clean_images = images
        self.noise_sigma = 0.0 if snr is None else (images.var() / snr).sqrt().item()
        images = images + self.noise_sigma * torch.randn(images.shape, generator=generator)
        self.images = images
        self.disk = HalfDisk(BOX, BOX / 2 - 1)
        self.targets = self.disk.gather(fft2_centered(images)) / BOX
        self.ctf = compute_ctf(self.disk.freqs_px / PIXEL, CTFParams.from_array(params.ctf)).float() \
            if with_ctf else None
        fourier = simulator.fourier_volume
        # A projection's DFT is the slice x voxel³ / pixel², and the targets carry 1 / BOX.
        self.map = lambda coords: fourier.sample(coords.double() / PIXEL) * (PIXEL / BOX)
        self.grid = network_grid(self.map, BOX, self.disk.radius_px.max().item(), oversampling=2)


def make_search(**changes) -> PoseSearch:
    values = dict(num_rotations=4096, max_shift_px=MAX_SHIFT_PX, shift_points=7, coarse_radius_px=10.0,
                  refine_steps=3)
    values.update(changes)
    return PoseSearch(**values)


