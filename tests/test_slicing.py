"""Central slices and projections (docs/conventions.md, "Rotations and projection").

The reference is analytic: a map made of isotropic 3D Gaussians projects, along any direction, to 2D
Gaussians of known amplitude, centred on the rotated blob centres. With the RELION convention
``image(x, y) = ∫ V(Aᵀ (x, y, z)) dz``, a blob centred on ``c`` in the map appears centred on ``(A c)_xy``.
"""
import numpy as np
import pytest
import torch

from cryoai_core.fourier import frequency_grid_3d, rotate_180_in_plane
from cryoai_core.models.fouriernet import FourierNet
from cryoai_core.rotations import MIRROR, compose_in_plane_180, euler_to_matrix, random_rotations
from cryoai_core.slicing import FourierGrid, VoxelFourierVolume, central_slice_coords, central_slices
from cryoai_core.train.config import FourierNetConfig
from reference_formulas import blob_volume

BOX = 32
VOXEL = 1.5


def random_blobs(seed: int, count: int = 4):
    """Amplitudes, centres (Å, (x, y, z)) and widths (Å) of a few Gaussian blobs near the box centre."""
    rng = np.random.default_rng(seed)
    amplitudes = rng.uniform(0.5, 1.5, count)
    centres = rng.uniform(-6.0, 6.0, size=(count, 3))
    sigmas = rng.uniform(2.5, 3.5, count)
    return amplitudes, centres, sigmas


def analytic_projection(blobs, matrix: np.ndarray, box: int = BOX, pixel: float = VOXEL) -> np.ndarray:
    """``∫ V(Aᵀ (x, y, z)) dz`` in density × Å.

    Each blob becomes ``a √(2π) σ exp(-|r - (A c)_xy|² / 2σ²)``.
    """
    coords = (np.arange(box) - box // 2) * pixel
    y, x = np.meshgrid(coords, coords, indexing="ij")
    image = np.zeros((box, box))
    for amplitude, centre, sigma in zip(*blobs):
        u, v, _ = matrix @ centre
        image += amplitude * np.sqrt(2 * np.pi) * sigma * np.exp(-((x - u) ** 2 + (y - v) ** 2) / (2 * sigma ** 2))
    return image


def relative_error(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


@pytest.fixture(scope="module")
def blobs():
    return random_blobs(0)


@pytest.fixture(scope="module")
def fourier_volume(blobs):
    return VoxelFourierVolume(torch.from_numpy(blob_volume(blobs)), VOXEL, oversampling=2)


@pytest.fixture(scope="module")
def rotations():
    return random_rotations(6, torch.Generator().manual_seed(1))


def test_projections_equal_real_space_line_integrals_at_random_rotations(fourier_volume, blobs, rotations):
    projections = fourier_volume.project(rotations).numpy()
    assert projections.shape == (6, BOX, BOX)
    for matrix, projection in zip(rotations.numpy(), projections):
        expected = analytic_projection(blobs, matrix)
        assert relative_error(projection, expected) < 0.02
        assert correlation(projection, expected) > 0.999


def test_projection_error_shrinks_with_oversampling_as_trilinear_interpolation_should(blobs, rotations):
    # Trilinear interpolation errors scale with the square of the Fourier grid step: about 1 % at
    # oversampling 2 and a quarter of that at 4 for these blobs (σ ≈ 2 voxels).
    fine = VoxelFourierVolume(torch.from_numpy(blob_volume(blobs)), VOXEL, oversampling=4)
    for matrix, projection in zip(rotations[:3].numpy(), fine.project(rotations[:3]).numpy()):
        assert relative_error(projection, analytic_projection(blobs, matrix)) < 0.005


def test_the_transposed_convention_would_fail(fourier_volume, blobs, rotations):
    # Shows that the agreement above pins which way A acts: with Aᵀ the projections are far off.
    projections = fourier_volume.project(rotations).numpy()
    errors = [relative_error(projection, analytic_projection(blobs, matrix.T))
              for matrix, projection in zip(rotations.numpy(), projections)]
    assert min(errors) > 0.2
    transposed = fourier_volume.project(rotations.transpose(-1, -2)).numpy()
    errors = [relative_error(projection, analytic_projection(blobs, matrix))
              for matrix, projection in zip(rotations.numpy(), transposed)]
    assert min(errors) > 0.2


def test_projection_onto_another_box_and_pixel_size(fourier_volume, blobs, rotations):
    projections = fourier_volume.project(rotations[:3], box=24, pixel_size_angstrom=2.0).numpy()
    assert projections.shape == (3, 24, 24)
    for matrix, projection in zip(rotations[:3].numpy(), projections):
        expected = analytic_projection(blobs, matrix, box=24, pixel=2.0)
        assert relative_error(projection, expected) < 0.02


@pytest.mark.parametrize("angles, expected_xy", [
    ((90.0, 0.0, 0.0), (0.0, -6.0)),   # A = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]: map +x lands on image -y
    ((0.0, 90.0, 0.0), (-6.0, 0.0)),   # A = [[0, 0, -1], [0, 1, 0], [1, 0, 0]]: map +z lands on image -x
    ((0.0, 0.0, 0.0), (6.0, 0.0)),
])
def test_hand_computed_poses_move_a_blob_where_relion_puts_it(angles, expected_xy):
    centre = (6.0, 0.0, 0.0) if angles[1] == 0.0 else (0.0, 0.0, 6.0)
    blob = (np.array([1.0]), np.array([centre]), np.array([3.0]))
    volume = VoxelFourierVolume(torch.from_numpy(blob_volume(blob)), VOXEL)
    image = volume.project(euler_to_matrix(torch.tensor([angles], dtype=torch.float64)))[0].numpy()
    coords = (np.arange(BOX) - BOX // 2) * VOXEL
    centroid_x = (image.sum(axis=0) * coords).sum() / image.sum()
    centroid_y = (image.sum(axis=1) * coords).sum() / image.sum()
    np.testing.assert_allclose([centroid_x, centroid_y], expected_xy, atol=0.05)


def test_central_slice_coords_are_a_transpose_times_the_plane_frequency():
    rng = np.random.default_rng(2)
    matrices = random_rotations(3, torch.Generator().manual_seed(3)).numpy()
    freqs = rng.uniform(-0.5, 0.5, size=(7, 2))
    coords = central_slice_coords(torch.from_numpy(matrices), torch.from_numpy(freqs)).numpy()
    assert coords.shape == (3, 7, 3)
    for matrix, batch in zip(matrices, coords):
        for (kx, ky), value in zip(freqs, batch):
            np.testing.assert_allclose(value, matrix.T @ np.array([kx, ky, 0.0]), atol=1e-12)
    # The slice is a plane through the origin orthogonal to the third row of A (the viewing direction).
    np.testing.assert_allclose(np.einsum("bnj,bj->bn", coords, matrices[:, 2, :]), 0.0, atol=1e-12)


def test_sample_reproduces_the_analytic_fourier_transform_of_the_blobs(fourier_volume, blobs):
    # Continuous FT of a·exp(-|r - c|²/2σ²) is a (2πσ²)^{3/2} exp(-2π²σ²|k|²) exp(-2πi k·c); a DFT sample
    # of the voxel map is that divided by the voxel volume.
    rng = np.random.default_rng(4)
    freqs = rng.uniform(-0.2, 0.2, size=(200, 3))
    values = fourier_volume.sample(torch.from_numpy(freqs)).numpy()
    expected = np.zeros(200, dtype=complex)
    for amplitude, centre, sigma in zip(*blobs):
        expected += amplitude * (2 * np.pi * sigma ** 2) ** 1.5 * np.exp(
            -2 * np.pi ** 2 * sigma ** 2 * (freqs ** 2).sum(1)) * np.exp(-2j * np.pi * freqs @ centre)
    expected /= VOXEL ** 3
    assert relative_error(values, expected) < 0.02


def test_in_plane_180_pose_gives_the_image_rotated_about_the_centre(fourier_volume, rotations):
    projections = fourier_volume.project(rotations[:3])
    flipped = fourier_volume.project(compose_in_plane_180(rotations[:3]))
    reference = rotate_180_in_plane(projections).numpy()
    assert relative_error(flipped.numpy(), reference) < 1e-4


def test_mirrored_map_with_pose_d_a_d_gives_the_same_projection(fourier_volume, blobs, rotations):
    volume = blob_volume(blobs)
    mirrored = volume[(BOX - np.arange(BOX)) % BOX]
    mirrored_volume = VoxelFourierVolume(torch.from_numpy(mirrored.copy()), VOXEL)
    poses = rotations[:3]
    reference = fourier_volume.project(poses).numpy()
    mirrored_poses = MIRROR @ poses @ MIRROR
    np.testing.assert_allclose(mirrored_volume.project(mirrored_poses).numpy(), reference,
                               atol=1e-4 * np.abs(reference).max())


def test_voxel_fourier_volume_rejects_non_cubic_maps():
    with pytest.raises(ValueError, match="cubic"):
        VoxelFourierVolume(torch.zeros(8, 8, 6), 1.0)


def test_folded_grid_samples_like_the_grid_itself_and_reads_zeros_off_the_grid():
    """The folded 2D layout (planes side by side) gives the 3D trilinear values up to float32 coordinate
    rounding, also next to the grid's faces, where neighbouring planes in the layout must not leak in."""
    generator = torch.Generator().manual_seed(0)
    m = 24
    values = torch.complex(torch.randn(m, m, m, generator=generator), torch.randn(m, m, m, generator=generator))
    grid = FourierGrid(values, spacing=0.5)
    folded = grid.sampler()
    assert grid.sampler() is folded
    points = (torch.rand(4, 5000, 3, generator=generator) - 0.5) * (m + 6) * 0.5   # a margin beyond every face
    torch.testing.assert_close(folded(points), grid.sample(points), atol=1e-4, rtol=0)
    faces = torch.tensor([[-0.5 * (m // 2) - 0.25, 0.0, 0.0], [0.0, 0.5 * (m - m // 2 - 1) + 0.25, 0.0],
                          [0.0, 0.0, 0.5 * (m - m // 2 - 1) + 0.3], [9.0, -9.0, 9.0]])
    torch.testing.assert_close(folded(faces), grid.sample(faces), atol=1e-4, rtol=0)
    assert folded(torch.tensor([[0.0, 0.0, 0.5 * m]])).abs().item() == 0.0
    # Both planes below the grid (kz 1.5 planes under its first), far off every face: exact zeros.
    far = torch.tensor([[0.0, 0.0, -0.5 * (m // 2) - 0.75], [0.0, 0.0, -40.0], [500.0, 0.0, 0.0], [0.0, -500.0, 3.0]])
    assert torch.equal(folded(far), torch.zeros(4, dtype=torch.complex64))


def test_folded_grid_central_slices_equal_the_grid_sampled_on_the_slice_coordinates():
    """``FoldedGrid.slices`` folds the grid's units into the coordinate products and clamps only when a point can
    leave the grid: the values of the 3D sampler on :func:`central_slice_coords` on both paths, exact zeros far
    off, NaN for NaN poses, and any other volume is called on the coordinates."""
    generator = torch.Generator().manual_seed(1)
    m, spacing = 24, 0.5
    values = torch.complex(torch.randn(m, m, m, generator=generator), torch.randn(m, m, m, generator=generator))
    grid = FourierGrid(values, spacing)
    folded = grid.sampler()
    clamped = []
    lookup = folded._lookup
    folded._lookup = lambda xy, z, clamp: clamped.append(clamp) or lookup(xy, z, clamp)
    rotations = random_rotations(6, torch.Generator().manual_seed(2), dtype=torch.float32)
    angle = torch.rand(400, generator=generator) * 2 * np.pi
    for reach in (spacing * (m // 2), spacing * (m // 2 + 4)):  # every point on the grid; some beyond its faces
        radius = reach * torch.rand(400, generator=generator).sqrt()
        freqs = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
        freqs[0] = torch.tensor([reach, 0.0])
        expected = grid.sample(central_slice_coords(rotations, freqs))
        torch.testing.assert_close(central_slices(folded, rotations, freqs), expected, atol=1e-4, rtol=0)
        assert torch.equal(central_slices(grid.sample, rotations, freqs), expected)
    assert clamped == [False, True]
    far = torch.tensor([[300.0, 0.0], [0.0, -300.0], [200.0, 200.0]])
    assert torch.equal(central_slices(folded, rotations, far), torch.zeros(6, 3, dtype=torch.complex64))
    diverged = rotations.clone()
    diverged[1] = float("nan")  # a diverged run's poses: NaN rows, no error, the other rows as they were
    values = central_slices(folded, diverged, freqs)
    assert values[1].isnan().all()
    torch.testing.assert_close(values[[0, 2, 3, 4, 5]], central_slices(folded, rotations, freqs)[[0, 2, 3, 4, 5]])


def test_hermitian_grid_evaluates_half_the_points_and_equals_the_full_evaluation():
    # FourierNet is Hermitian by construction; on an even grid the -Nyquist planes (inside radius 0.55) have
    # no mirror and must be evaluated, on an odd grid every point has one.
    torch.manual_seed(0)
    network = FourierNet(FourierNetConfig(width=16), 16).eval()
    for size in (16, 17):
        points = []

        def counted(coords):
            points.append(len(coords))
            return network(coords)

        full = FourierGrid.from_function(network, size, 1.0 / size, 0.55)
        half = FourierGrid.from_function(counted, size, 1.0 / size, 0.55, hermitian=True)
        assert torch.equal(half._grid, full._grid)
        inside = int((torch.linalg.vector_norm(frequency_grid_3d(size), dim=-1) <= 0.55).sum())
        assert inside / 2 < sum(points) < 0.56 * inside


def test_grid_from_a_function_in_chunks_equals_one_evaluation_and_never_exceeds_the_chunk():
    torch.manual_seed(1)
    network = FourierNet(FourierNetConfig(width=16), 16).eval()
    sizes = []

    def counted(coords):
        sizes.append(len(coords))
        return network(coords)

    for hermitian in (False, True):
        sizes.clear()
        whole = FourierGrid.from_function(network, 16, 1.0 / 16, 0.55, hermitian=hermitian, chunk=10 ** 6)
        parts = FourierGrid.from_function(counted, 16, 1.0 / 16, 0.55, hermitian=hermitian, chunk=100)
        torch.testing.assert_close(parts._grid, whole._grid, atol=1e-6, rtol=0)
        assert len(sizes) > 1 and max(sizes) <= 100
