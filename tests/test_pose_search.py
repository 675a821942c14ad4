"""The pose search finds known poses and shifts of simulated images, with and without CTF.

Images come from the simulator (real-space projections, translated and CTF-multiplied in its own code
path); the search only sees their transforms and a cached copy of the map, so a sign or unit slip in the
search's shift phase, slice geometry or CTF handling shows as wrong poses.
"""
import numpy as np
import pytest
import roma
import torch

from cryoai_core.models.forward_model import render
from cryoai_core.pose_search import _Batch, _sampler, network_grid, super_fibonacci_rotations
from cryoai_core.rotations import geodesic_angle, random_rotations
from cryoai_core.slicing import FourierGrid, VoxelFourierVolume
from cryoai_core.train.loss import weighted_distances
from search_problem import BOX, MAX_SHIFT_PX, PIXEL, Problem, blob_map, make_search

@pytest.fixture(scope="module", params=[False, True], ids=["no_ctf", "ctf"])
def problem(request):
    return Problem(with_ctf=request.param)


def angles(first, second) -> torch.Tensor:
    return torch.rad2deg(geodesic_angle(first.double(), second.double()))


def test_fourier_grid_reproduces_affine_functions_in_any_unit():
    # Trilinear interpolation is exact for affine functions; the grid's unit is only its spacing.
    slope = torch.tensor([0.3 + 1.0j, -2.0 + 0.5j, 0.7 - 0.2j], dtype=torch.complex64)
    for spacing in (1.0 / 64, 1.0 / (64 * 2.5)):
        grid = FourierGrid.from_function(lambda k: (k.to(torch.complex64) @ slope) + 1.5j, 64, spacing,
                                         radius=20 * spacing)
        points = (torch.rand(200, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 20 * spacing
        expected = points.to(torch.complex64) @ slope + 1.5j
        assert torch.allclose(grid.sample(points), expected, atol=1e-4)


def test_voxel_volume_and_network_grid_share_the_sampler():
    volume = VoxelFourierVolume(blob_map(1), PIXEL, oversampling=2)
    cached = network_grid(lambda k: volume.sample(k / PIXEL), BOX, BOX / 2, oversampling=2)
    points = (torch.rand(500, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.6
    assert torch.allclose(cached(points), volume.sample(points / PIXEL), rtol=1e-4, atol=1e-3)


def test_search_distances_are_the_loss_distances(problem):
    # The search expands |Y - P|² in float32; its error is relative to the image energy |Y|².
    found = make_search(num_rotations=512).search(problem.grid, problem.targets, problem.ctf, problem.disk,
                                                  torch.Generator().manual_seed(1))
    rendered = render(problem.grid, found.rotations, found.origins_px, problem.ctf, problem.disk)
    expected = weighted_distances(rendered, problem.targets, problem.disk.weights)
    energies = weighted_distances(torch.zeros_like(problem.targets), problem.targets, problem.disk.weights)
    assert ((found.distances - expected).abs() < 1e-5 * energies).all()


@pytest.mark.parametrize("candidates", [27, 2])
def test_candidate_distances_are_the_loss_distances_at_every_rotation_and_translation(problem, candidates):
    # 27 rotations x 9 translations contract over the translations, 2 x 9 over the rotations: both are the
    # loss's distance of the slice rendered at rotation k and origin o + d_s. Random poses are far from the
    # images, so the float32 expansion's error is relative to the distance as well as to the image energy.
    count = 6
    generator = torch.Generator().manual_seed(4)
    rotations = random_rotations(count * candidates, generator=generator).float().reshape(count, candidates, 3, 3)
    origins = torch.randn(count, 2, generator=generator)
    offsets = torch.randn(9, 2, generator=generator)
    targets, ctf = problem.targets[:count], None if problem.ctf is None else problem.ctf[:count]
    batch = _Batch(targets, ctf, problem.disk)
    found = make_search()._distances(_sampler(problem.grid), batch, rotations, origins, offsets)   # (B, S, K)
    energies = weighted_distances(torch.zeros_like(targets), targets, problem.disk.weights)
    for s, offset in enumerate(offsets):
        for k in range(candidates):
            rendered = render(problem.grid, rotations[:, k], origins + offset, ctf, problem.disk)
            expected = weighted_distances(rendered, targets, problem.disk.weights)
            assert ((found[:, s, k] - expected).abs() < 1e-5 * (energies + expected)).all()


def test_global_search_recovers_poses_and_shifts_up_to_15_percent_of_the_box(problem):
    found = make_search().search(problem.grid, problem.targets, problem.ctf, problem.disk,
                                 torch.Generator().manual_seed(2))
    errors = angles(found.rotations, problem.rotations)
    shift_errors = torch.linalg.vector_norm(found.origins_px.double() - problem.origins_px, dim=-1)
    assert errors.median() < 2.0 and (errors < 5.0).float().mean() >= 0.9
    assert shift_errors.median() < 0.25 and (shift_errors < 0.5).float().mean() >= 0.9
    corners = shift_errors[:4]
    assert corners.max() < 0.5, f"shifts at ±15 % of the box not recovered: {corners.tolist()}"


def test_search_without_shift_grid_misses_large_shifts_that_the_grid_finds():
    # Guards the test above: a centre-only translation grid cannot explain particles at ±15 % of the box.
    problem = Problem(with_ctf=False, count=8)
    narrow = make_search(shift_points=1, max_shift_px=0.0).search(problem.grid, problem.targets, None,
                                                                   problem.disk, torch.Generator().manual_seed(3))
    wide = make_search().search(problem.grid, problem.targets, None, problem.disk, torch.Generator().manual_seed(3))
    assert (wide.distances[:4] < narrow.distances[:4]).all()
    assert angles(narrow.rotations[:4], problem.rotations[:4]).median() > 10.0


def perturbed(problem, seed: int, degrees: float) -> tuple:
    """The true poses turned ``degrees`` about random axes and the origins moved by ~0.6 px: ``(start, shifts)``."""
    generator = torch.Generator().manual_seed(seed)
    count = len(problem.rotations)
    axes = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator, dtype=torch.float64), dim=-1)
    start = problem.rotations @ roma.rotvec_to_rotmat(axes * np.radians(degrees))
    return start, problem.origins_px + torch.randn(count, 2, generator=generator, dtype=torch.float64) * 0.6


def test_local_refinement_never_worsens_and_recovers_perturbed_poses(problem):
    start, start_shifts = perturbed(problem, seed=4, degrees=5.0)
    search = make_search()
    before = search.distances(problem.grid, problem.targets, problem.ctf, problem.disk, start, start_shifts)
    refined = search.refine(problem.grid, problem.targets, problem.ctf, problem.disk, start, start_shifts,
                            rotation_step_degrees=4.0, shift_step_px=0.5, steps=4)
    assert (refined.distances <= before + 1e-7).all()
    assert angles(refined.rotations, problem.rotations).median() < 0.5 * angles(start, problem.rotations).median()
    shift_before = torch.linalg.vector_norm(start_shifts - problem.origins_px, dim=-1)
    shift_after = torch.linalg.vector_norm(refined.origins_px.double() - problem.origins_px, dim=-1)
    assert shift_after.median() < 0.5 * shift_before.median()


def test_search_grid_is_quasi_uniform():
    rotations = super_fibonacci_rotations(512)
    nearest = angles(rotations[:, None].expand(-1, 512, -1, -1).reshape(-1, 3, 3),
                     rotations[None].expand(512, -1, -1, -1).reshape(-1, 3, 3)).reshape(512, 512)
    nearest.fill_diagonal_(360.0)
    spacing = nearest.min(dim=1).values
    assert spacing.max() < 2.0 * spacing.min()
    probes = random_rotations(200, torch.Generator().manual_seed(5)).double()
    to_grid = angles(probes[:, None].expand(-1, 512, -1, -1).reshape(-1, 3, 3),
                     rotations[None].expand(200, -1, -1, -1).reshape(-1, 3, 3)).reshape(200, 512)
    assert to_grid.min(dim=1).values.max() < 1.5 * spacing.max()


class CountingVolume:
    """A map that counts the points it is sampled at."""

    def __init__(self, volume):
        self.volume, self.points = volume, 0

    def __call__(self, coords):
        self.points += coords[..., 0].numel()
        return self.volume(coords)


def test_search_or_refine_loses_nothing_against_refining_both_starts_at_about_half_the_cost(problem):
    """Half the images start 5° from the truth (an encoder that is right), half at random poses (one that is
    wrong). Refining only the leader after the first round finds the poses that refining the local start
    and the global search's best to the end and keeping the closer finds, for about half the slices."""
    generator = torch.Generator().manual_seed(6)
    count = len(problem.rotations)
    axes = torch.nn.functional.normalize(torch.randn(count, 3, generator=generator, dtype=torch.float64), dim=-1)
    start = problem.rotations @ roma.rotvec_to_rotmat(axes * np.radians(5.0))
    start[count // 2:] = random_rotations(count - count // 2, generator).double()
    start_shifts = problem.origins_px + torch.randn(count, 2, generator=generator, dtype=torch.float64) * 0.6
    search = make_search()
    both_volume, volume = CountingVolume(problem.grid), CountingVolume(problem.grid)
    local = search.refine(both_volume, problem.targets, problem.ctf, problem.disk, start, start_shifts, 6.0, 1.0, 3)
    searched = search.search(both_volume, problem.targets, problem.ctf, problem.disk, torch.Generator().manual_seed(7))
    better = searched.distances < local.distances
    both = torch.where(better[:, None, None], searched.rotations, local.rotations)
    found = search.search_or_refine(volume, problem.targets, problem.ctf, problem.disk, start, start_shifts, 6.0,
                                    1.0, 3, torch.Generator().manual_seed(7), tie_fraction=0.0)
    before = search.distances(problem.grid, problem.targets, problem.ctf, problem.disk, start, start_shifts)
    assert (found.distances <= before + 1e-7).all()
    errors, errors_both = angles(found.rotations, problem.rotations), angles(both, problem.rotations)
    assert (errors < 5.0).sum() >= (errors_both < 5.0).sum() >= count - 2
    assert errors.median() < errors_both.median() + 0.25
    coarse = len(search.base_rotations) * int((problem.disk.radius_px <= search.coarse_radius_px + 1e-6).sum())
    assert volume.points - coarse < 0.7 * (both_volume.points - coarse)  # the global grid's slices are shared
    tied = search.search_or_refine(problem.grid, problem.targets, problem.ctf, problem.disk, start, start_shifts, 6.0,
                                   1.0, 3, torch.Generator().manual_seed(7), tie_fraction=1.0)
    torch.testing.assert_close(tied.distances, torch.minimum(local.distances, searched.distances))
    torch.testing.assert_close(tied.rotations, torch.where(better[:, None, None], searched.rotations,
                                                           local.rotations))


def test_rounds_on_a_smaller_disk_never_worsen_and_recover_perturbed_poses(problem):
    """With ``edge_px``, a coarse round picks its candidate on the disk where its step moves points by
    ``edge_px``, and keeps it only if it is closer on the whole disk too."""
    start, start_shifts = perturbed(problem, seed=8, degrees=8.0)
    search = make_search()
    volume = CountingVolume(problem.grid)
    before = search.distances(problem.grid, problem.targets, problem.ctf, problem.disk, start, start_shifts)
    found = search.search_or_refine(volume, problem.targets, problem.ctf, problem.disk, start, start_shifts, 10.0,
                                    1.0, 3, torch.Generator().manual_seed(9), tie_fraction=0.0, edge_px=1.0)
    assert (found.distances <= before + 1e-7).all()
    rendered = render(problem.grid, found.rotations, found.origins_px, problem.ctf, problem.disk)
    expected = weighted_distances(rendered, problem.targets, problem.disk.weights)
    energies = weighted_distances(torch.zeros_like(problem.targets), problem.targets, problem.disk.weights)
    assert ((found.distances - expected).abs() < 1e-5 * energies).all()   # float32 error, relative to |Y|²
    assert angles(found.rotations, problem.rotations).median() < 2.0
    full = CountingVolume(problem.grid)
    search.search_or_refine(full, problem.targets, problem.ctf, problem.disk, start, start_shifts, 10.0, 1.0, 3,
                            torch.Generator().manual_seed(9), tie_fraction=0.0)
    assert volume.points < full.points


def test_coarse_candidates_start_is_never_farther_and_finds_more_poses_at_low_snr():
    """The screened start includes the coarse grid's closest pose at its own translation (same grid offset),
    so it is never farther from the image; at low SNR the coarse disk often ranks a wrong pose first."""
    noisy = Problem(with_ctf=True, count=48, seed=3, snr=0.1)
    batch, volume = _Batch(noisy.targets, noisy.ctf, noisy.disk), _sampler(noisy.grid)
    single, screened = make_search(candidates=1), make_search(candidates=8)
    rotations, origins_px, _ = single._global_start(volume, batch, noisy.disk, torch.Generator().manual_seed(5))
    alone = single.distances(noisy.grid, noisy.targets, noisy.ctf, noisy.disk, rotations[:, 0], origins_px[:, 0])
    _, _, distances = screened._global_start(volume, batch, noisy.disk, torch.Generator().manual_seed(5))
    assert distances.shape == (48, 1)
    assert (distances[:, 0] <= alone * (1 + 1e-6)).all()   # up to float32 rounding (two contraction orders)
    right = {}
    for search in (single, screened):
        found = search.search(noisy.grid, noisy.targets, noisy.ctf, noisy.disk, torch.Generator().manual_seed(5))
        right[search.candidates] = (angles(found.rotations, noisy.rotations) < 10.0).float().mean().item()
    assert right[8] >= right[1] + 0.1, right


def test_knockout_of_finalists_never_ends_farther_than_its_closest_start_and_finds_more_poses():
    """Four finalists each take a round of refinement, the closer half goes on: the winner is never farther
    than the closest screened start, its distance is the loss's at its pose, and at low SNR it is right more
    often than refining the closest start alone."""
    noisy = Problem(with_ctf=True, count=48, seed=3, snr=0.03)
    batch, volume = _Batch(noisy.targets, noisy.ctf, noisy.disk), _sampler(noisy.grid)
    one, four = make_search(candidates=16), make_search(candidates=16, finalists=4)
    rotations, origins_px, distances = four._global_start(volume, batch, noisy.disk, torch.Generator().manual_seed(5))
    assert rotations.shape == (48, 4, 3, 3) and origins_px.shape == (48, 4, 2)
    assert (distances[:, :-1] <= distances[:, 1:]).all()
    right = {}
    for search in (one, four):
        found = search.search(noisy.grid, noisy.targets, noisy.ctf, noisy.disk, torch.Generator().manual_seed(5))
        right[search.finalists] = (angles(found.rotations, noisy.rotations) < 10.0).float().mean().item()
    assert (found.distances <= distances[:, 0] * (1 + 1e-6)).all()
    rendered = render(noisy.grid, found.rotations, found.origins_px, noisy.ctf, noisy.disk)
    torch.testing.assert_close(found.distances, weighted_distances(rendered, noisy.targets, noisy.disk.weights),
                               rtol=1e-4, atol=1e-5)
    assert right[4] >= right[1] + 0.05, right
