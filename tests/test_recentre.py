"""Recentring a map and its origins together (cryoai_core/recentre.py), pinned by the simulator's image formation."""
import numpy as np
import pytest
import torch

from cryoai_core.fourier import translate_volume
from cryoai_core.recentre import density_centre_px, recentred_map, recentred_origins
from cryoai_core.rotations import random_rotations
from cryoai_core.simulate import ImageSimulator, SimulationConfig
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
