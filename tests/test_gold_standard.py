"""Gold-standard half maps: poses fitted to a map of every particle make plain half maps claim Nyquist;
refined apart, the half maps' resolution follows the full map's resolution against the truth.

Gold-standard relation (see ``test_reconstruct.py``): half maps at FSC 0.143 predict the full map against
the truth at 0.5. The truth is the simulator's reference map (blobs, :mod:`reference_formulas`).
"""
import numpy as np
import pytest
import roma
import torch

from cryoai_core.evaluate.alignment import align_volumes
from cryoai_core.evaluate.fsc import fsc_curve, resolution_at
from cryoai_core.fourier import fft2_centered
from cryoai_core.gold_standard import _HalfRefiner, gold_standard_half_maps, reference_grid
from cryoai_core.models.forward_model import HalfDisk, render
from cryoai_core.pose_search import PoseSearch
from cryoai_core.reconstruct import accumulate, reconstruct_half_maps
from cryoai_core.ctf import CTFParams, compute_ctf
from cryoai_core.rotations import euler_to_matrix, matrix_to_euler
from cryoai_core.train.config import HalfMapConfig, SearchConfig
from test_reconstruct import BOX, VOXEL, simulated

SEARCH = SearchConfig()


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return simulated(tmp_path_factory.mktemp("noisy"), snr=0.1)


def truth_resolution(result, reference) -> float:
    frequencies, fsc = fsc_curve(result.full, reference)
    return resolution_at(frequencies, fsc, 0.5)


def test_reference_grid_slices_are_the_image_transforms(tmp_path):
    table, dataset, reference = simulated(tmp_path, num_particles=8)
    grid = reference_grid(reference, VOXEL)
    disk = HalfDisk(BOX, BOX // 2 - 1)
    batch = dataset.__getitems__(list(range(8)))
    targets = disk.gather(fft2_centered(batch["image"].float()))
    ctf = compute_ctf(disk.freqs_px.double() / VOXEL, CTFParams.from_array(batch["ctf"].double())).float()
    rotations = euler_to_matrix(table.euler_angles_degrees).float()
    rendered = render(grid, rotations, torch.as_tensor(table.origins_angstrom / VOXEL).float(), ctf, disk)
    error = (rendered - targets).abs().norm(dim=-1) / targets.abs().norm(dim=-1)
    assert error.max() < 0.05
    wrong = render(grid, rotations.transpose(1, 2), torch.as_tensor(table.origins_angstrom / VOXEL).float(), ctf, disk)
    assert ((wrong - targets).abs().norm(dim=-1) / targets.abs().norm(dim=-1)).min() > 0.2


def test_poses_fitted_to_a_map_of_every_particle_overclaim_and_the_gold_standard_does_not(noisy):
    """Einstein from noise: true poses refined against the map of all particles (as the export refines the
    encoder's poses against the trained map) align the noise of both halves alike."""
    table, dataset, reference = noisy
    count = len(dataset)
    full = accumulate(dataset, table.euler_angles_degrees, table.origins_angstrom, np.arange(count))
    shared_map = full.volume(1e-3 * full.shell_mean_weight())
    angles, origins = np.array(table.euler_angles_degrees), np.array(table.origins_angstrom)
    _HalfRefiner(dataset, SEARCH, 256, False).run(shared_map, np.arange(count), angles, origins, BOX // 2 - 1)

    plain = reconstruct_half_maps(dataset, angles, origins, seed=3)
    assert plain.resolution_pixels < 0.8 * truth_resolution(plain, reference)  # claims more than the map has

    given = angles.copy(), origins.copy()
    gold = gold_standard_half_maps(dataset, angles, origins, seed=3, search_config=SEARCH)
    truth = truth_resolution(gold, reference)
    assert abs(gold.resolution_pixels - truth) / truth < 0.2
    np.testing.assert_array_equal(angles, given[0])  # the refinement works on its own copy
    np.testing.assert_array_equal(origins, given[1])
    assert gold.established and gold.warning is None
    assert gold.refine_rounds == HalfMapConfig().rounds
    np.testing.assert_array_equal(gold.halves, plain.halves)


def test_random_poses_give_a_poor_gold_standard_resolution(noisy):
    table, dataset, reference = noisy
    count = len(dataset)
    random = matrix_to_euler(roma.random_rotmat(count, generator=torch.Generator().manual_seed(5)).double()).numpy()
    gold = gold_standard_half_maps(dataset, random, np.zeros((count, 2)), seed=3,
                                   search_config=SEARCH)
    assert gold.resolution_pixels > 6.0  # Nyquist is 2 px; true poses reach about 3.5 px (test above)
    assert gold.resolution_pixels > 0.8 * truth_resolution(gold, reference)


def test_poses_searched_against_a_map_of_random_poses_do_not_claim_nyquist(noisy):
    """A failed run: random poses backprojected, then every particle's pose found by a global search
    (rotations and shifts, full resolution) against that one map. The halves share noise aligned alike at
    low resolution, which the crop and gridding correction of the reconstruction carry up to Nyquist: the
    uncorrected FSC claims Nyquist (the figure before noise substitution); the corrected one stays within
    20 % of the map's own FSC=0.143 against the truth (after alignment: the poses hold no global frame)."""
    table, dataset, reference = noisy
    count = len(dataset)
    random = matrix_to_euler(roma.random_rotmat(count, generator=torch.Generator().manual_seed(5)).double()).numpy()
    shared = accumulate(dataset, random, np.zeros((count, 2)), np.arange(count))
    grid = reference_grid(shared.volume(1e-3 * shared.shell_mean_weight()), VOXEL)
    search = PoseSearch(num_rotations=1024, max_shift_px=4.8, shift_points=5, coarse_radius_px=8.0, refine_steps=3)
    disk = HalfDisk(BOX, BOX // 2 - 1)
    rotations, origins = [], []
    for start in range(0, count, 500):
        batch = dataset.__getitems__(list(range(start, min(count, start + 500))))
        ctf = compute_ctf(disk.freqs_px.double() / VOXEL, CTFParams.from_array(batch["ctf"].double())).float()
        found = search.search(grid, disk.gather(fft2_centered(batch["image"].float())), ctf, disk,
                              generator=torch.Generator().manual_seed(start))
        rotations.append(found.rotations)
        origins.append(found.origins_px)
    angles = matrix_to_euler(torch.cat(rotations).double()).numpy()
    origins = torch.cat(origins).double().numpy() * VOXEL

    gold = gold_standard_half_maps(dataset, angles, origins, seed=3, search_config=SEARCH)
    frequencies, fsc = fsc_curve(align_volumes(gold.full, reference).aligned_map, reference)
    truth = resolution_at(frequencies, fsc, 0.143)
    assert truth > 3.0  # the map is poor (true poses reach about 2.9 px at 0.143)
    assert gold.resolution_pixels_uncorrected < 2.5
    assert abs(gold.resolution_pixels - truth) / truth < 0.2
    assert not gold.established and "not established" in gold.warning


def test_no_rounds_backprojects_the_poses_as_given(noisy):
    table, dataset, _ = noisy
    subset = dataset  # every particle; the split is the seed's
    given = gold_standard_half_maps(subset, table.euler_angles_degrees, table.origins_angstrom, seed=2,
                                    config=HalfMapConfig(rounds=0))
    plain = reconstruct_half_maps(subset, table.euler_angles_degrees, table.origins_angstrom, seed=2)
    np.testing.assert_allclose(given.full, plain.full)
    assert given.refine_rounds == 0 and given.resolution_pixels == plain.resolution_pixels


def test_bad_settings_and_splits_are_refused(noisy):
    table, dataset, _ = noisy
    with pytest.raises(ValueError, match="half-maps-rounds"):
        HalfMapConfig(rounds=-1)
    with pytest.raises(ValueError, match="start-fraction"):
        HalfMapConfig(start_fraction=0.0)
    with pytest.raises(ValueError, match="randomize-fsc"):
        HalfMapConfig(randomize_fsc=1.0)
    with pytest.raises(ValueError, match="established-ratio"):
        HalfMapConfig(established_ratio=1.0)
    with pytest.raises(ValueError, match="split"):
        gold_standard_half_maps(dataset, table.euler_angles_degrees, table.origins_angstrom,
                                halves=np.ones(len(dataset), dtype=np.int8), config=HalfMapConfig(rounds=0))
