"""Recentring a map and its origins together (cryoai_core/recentre.py), pinned by the simulator's image formation."""
import numpy as np
import pytest
import torch

from cryoai_core.fourier import translate_volume
from cryoai_core.recentre import (centred_on_average, density_centre_px, mean_particle_origin_px, recentred_map,
                                  recentred_origins, symmetry_centre_px)
from cryoai_core.rotations import random_rotations
from cryoai_core.simulate import ImageSimulator, SimulationConfig, draw_parameters
from search_problem import blob_map

BOX = 32
PIXEL = 3.0


def gaussian(centre_xyz, box: int = BOX, width_px2: float = 6.0) -> torch.Tensor:
    coords = torch.arange(box, dtype=torch.float64) - box // 2
    z, y, x = torch.meshgrid(coords, coords, coords, indexing="ij")
    cx, cy, cz = centre_xyz
    return torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / width_px2)


def test_the_density_centre_of_a_blob_is_where_it_was_put_and_negative_values_do_not_count():
    volume = gaussian((2.5, -1.25, 3.0)) - 0.3 * gaussian((-6.0, 5.0, -4.0))
    np.testing.assert_allclose(density_centre_px(volume), [2.5, -1.25, 3.0], atol=1e-3)
    with pytest.raises(ValueError, match="no positive density"):
        density_centre_px(-gaussian((0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="cubic"):
        density_centre_px(np.ones((4, 4, 5)))


def test_translating_a_volume_moves_its_content_by_plus_the_shift():
    moved = translate_volume(gaussian((0.0, 0.0, 0.0)), torch.tensor([1.5, -2.0, 3.25]))
    torch.testing.assert_close(moved, gaussian((1.5, -2.0, 3.25)), atol=1e-6, rtol=0)


def _images(volume, rotations, origins_px):
    config = SimulationConfig(num_particles=len(rotations), apply_ctf=False)
    simulator = ImageSimulator(volume.float(), PIXEL, config)
    return simulator.images(rotations, torch.as_tensor(origins_px) * PIXEL, np.zeros((len(rotations), 8)))


def test_a_drifted_map_recentred_gives_the_centred_map_and_the_same_images_with_the_moved_origins():
    centred = blob_map(3)
    centred = recentred_map(centred, density_centre_px(centred))
    drift = np.array([2.5, -1.5, 3.25])
    drifted = translate_volume(centred, torch.from_numpy(drift))
    np.testing.assert_allclose(density_centre_px(drifted), drift, atol=0.02)

    recentred = recentred_map(drifted, density_centre_px(drifted))
    torch.testing.assert_close(recentred, centred, atol=2e-3 * float(centred.max()), rtol=0)

    generator = torch.Generator().manual_seed(4)
    rotations = random_rotations(12, generator).double()
    origins = (torch.rand(12, 2, generator=generator, dtype=torch.float64) * 2 - 1) * 0.15 * BOX
    # The simulator's images of the drifted map at these origins are those of the recentred one at the
    # recentred origins, and not with the opposite sign.
    seen = _images(drifted, rotations, origins)
    moved = recentred_origins(rotations, origins, density_centre_px(drifted))
    scale = float(seen.abs().max())
    torch.testing.assert_close(_images(recentred, rotations, moved), seen, atol=0.02 * scale, rtol=0)
    wrong = origins.numpy() + (rotations.numpy() @ drift)[:, :2]
    assert float((_images(recentred, rotations, wrong) - seen).abs().max()) > 0.3 * scale

    # Particles of the centred map at their true origins, seen through the drifted map, have the drifted
    # origins o + (A c)_xy; recentring gives the true origins back.
    true_origins = origins.numpy()
    drifted_origins = true_origins + (rotations.numpy() @ drift)[:, :2]
    torch.testing.assert_close(_images(drifted, rotations, drifted_origins), _images(centred, rotations, origins),
                               atol=0.02 * scale, rtol=0)
    np.testing.assert_allclose(recentred_origins(rotations, drifted_origins, density_centre_px(drifted)),
                               true_origins, atol=0.05)


def test_the_symmetry_centre_of_an_image_is_found_to_a_fraction_of_a_pixel():
    coords = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    centre = (3.3, -5.7)
    radius2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2
    ring = torch.exp(-radius2 / 8.0) - 0.4 * torch.exp(-(radius2.sqrt() - 6.0) ** 2 / 2.0)
    np.testing.assert_allclose(symmetry_centre_px(ring.numpy()), centre, atol=0.1)
    with pytest.raises(ValueError, match="square"):
        symmetry_centre_px(np.zeros((4, 5)))


class _Images:
    """The two members of a ParticleDataset that the estimate reads."""

    def __init__(self, images):
        self.images, self.box = images, images.shape[-1]

    def __len__(self):
        return len(self.images)

    def __getitems__(self, indices):
        return {"image": self.images[torch.as_tensor(indices)]}


def test_the_particles_mean_origin_is_estimated_from_their_average_image_and_moving_the_images_by_it_centres_them():
    generator = torch.Generator().manual_seed(6)
    count = 400
    rotations = random_rotations(count, generator).double()
    mean_origin = torch.tensor([4.0, -3.0], dtype=torch.float64)
    origins = mean_origin + torch.randn(count, 2, generator=generator, dtype=torch.float64)
    volume = blob_map(7)
    config = SimulationConfig(num_particles=count, apply_ctf=True, defocus_median_angstrom=15000.0)
    simulator = ImageSimulator(volume.float(), PIXEL, config)
    ctf = draw_parameters(config, count, generator).ctf
    images = simulator.images(rotations, origins * PIXEL, ctf)
    noisy = images + 2.0 * images.std() * torch.randn(images.shape, generator=generator)
    estimate = mean_particle_origin_px(_Images(noisy), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(estimate, mean_origin.numpy(), atol=0.5)
    # Images moved by +μ are those of the particles at the origins o − μ (the simulator's own images).
    moved = centred_on_average(images[:8], mean_origin)
    expected = simulator.images(rotations[:8], (origins[:8] - mean_origin) * PIXEL, ctf[:8])
    torch.testing.assert_close(moved, expected, atol=1e-3 * float(images.abs().max()), rtol=0)
    torch.testing.assert_close(centred_on_average(images[:2], (0.0, 0.0)), images[:2], atol=0, rtol=0)


def test_exported_origins_are_against_the_images_as_they_are_and_the_recentred_map():
    """A learner that saw images moved by μ (training pixels of 2 Å) and a map centred at c finds the origins
    o − μ·px + (A c)_xy; the export gives back the particles' own origins o (Å)."""
    from types import SimpleNamespace

    from cryoai_core.train.export import exported_origins

    learner = SimpleNamespace(config=SimpleNamespace(pixel_size_angstrom=2.0))
    generator = torch.Generator().manual_seed(8)
    rotations = random_rotations(5, generator).double()
    true_angstrom = torch.randn(5, 2, generator=generator, dtype=torch.float64) * 10.0
    mean_origin_px = (3.0, -2.0)
    centre_angstrom = np.array([4.0, -6.0, 2.0])
    learned = true_angstrom - torch.tensor(mean_origin_px, dtype=torch.float64) * 2.0 \
        + torch.from_numpy(rotations.numpy() @ centre_angstrom)[:, :2]
    torch.testing.assert_close(exported_origins(learner, rotations, learned, centre_angstrom, mean_origin_px),
                               true_angstrom)
