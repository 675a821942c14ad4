"""Centred transforms, frequency grids, translations, 180° rotations and Fourier resampling
(docs/conventions.md, "Arrays and Fourier centring" and "Shifts (origins)"), checked against direct numpy
formulas."""
import numpy as np
import pytest
import torch

from cryoai_core.fourier import (crop_or_pad_real, fft2_centered, fft3_centered, frequencies_1d,
                                 frequency_grid_2d, frequency_grid_3d, ifft2_centered, ifft3_centered, origin_phase,
                                 radial_frequency_2d, resample_images, resample_volume, rotate_180_in_plane,
                                 translate_images, translation_phase)


def direct_centered_dft_2d(image: np.ndarray) -> np.ndarray:
    """``F[ky, kx] = Σ f[y, x] exp(-2πi (kx (x - c) + ky (y - c)) / L)`` with ``c = L // 2`` and k centred."""
    box = image.shape[-1]
    centred = np.arange(box) - box // 2
    matrix = np.exp(-2j * np.pi * np.outer(centred, centred) / box)
    return matrix @ image @ matrix.T


@pytest.mark.parametrize("box", [8, 9, 16])
def test_fft2_centered_equals_the_direct_dft_with_origin_at_the_centre_pixel(box):
    image = np.random.default_rng(box).normal(size=(box, box))
    spectrum = fft2_centered(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(spectrum, direct_centered_dft_2d(image), atol=1e-10)


@pytest.mark.parametrize("box", [8, 9])
def test_centred_transforms_round_trip(box):
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.normal(size=(3, box, box)))
    volume = torch.from_numpy(rng.normal(size=(box, box, box)))
    np.testing.assert_allclose(ifft2_centered(fft2_centered(images)).real.numpy(), images.numpy(), atol=1e-12)
    np.testing.assert_allclose(ifft3_centered(fft3_centered(volume)).real.numpy(), volume.numpy(), atol=1e-12)
    np.testing.assert_allclose(fft2_centered(ifft2_centered(images)).real.numpy(), images.numpy(), atol=1e-12)


@pytest.mark.parametrize("box", [8, 9])
def test_dc_term_sits_at_index_box_over_2_and_forward_transform_is_unnormalised(box):
    constant = torch.full((box, box), 2.5, dtype=torch.float64)
    spectrum = fft2_centered(constant)
    expected = np.zeros((box, box), dtype=complex)
    expected[box // 2, box // 2] = 2.5 * box ** 2
    np.testing.assert_allclose(spectrum.numpy(), expected, atol=1e-10)
    volume = torch.full((box, box, box), 1.0, dtype=torch.float64)
    spectrum3 = fft3_centered(volume).numpy()
    assert spectrum3[box // 2, box // 2, box // 2] == pytest.approx(box ** 3)
    assert np.abs(spectrum3).sum() == pytest.approx(box ** 3)


@pytest.mark.parametrize("box", [8, 9])
def test_a_delta_at_the_centre_pixel_has_a_flat_real_transform(box):
    delta = torch.zeros(box, box, box, dtype=torch.float64)
    delta[box // 2, box // 2, box // 2] = 1.0
    np.testing.assert_allclose(fft3_centered(delta).numpy(), np.ones((box,) * 3), atol=1e-12)


@pytest.mark.parametrize("box, pixel", [(8, 1.0), (9, 1.0), (16, 1.7), (15, 0.8)])
def test_frequencies_are_fft_exact(box, pixel):
    expected = np.fft.fftshift(np.fft.fftfreq(box, d=pixel))
    np.testing.assert_allclose(frequencies_1d(box, pixel, dtype=torch.float64).numpy(), expected, atol=1e-15)
    assert frequencies_1d(box, pixel, dtype=torch.float64)[box // 2] == 0.0


def test_frequency_grids_store_kx_along_the_column_axis():
    box, pixel = 8, 1.5
    k = np.fft.fftshift(np.fft.fftfreq(box, d=pixel))
    grid2 = frequency_grid_2d(box, pixel, dtype=torch.float64).numpy()
    assert grid2.shape == (box, box, 2)
    iy, ix = 1, 6
    np.testing.assert_allclose(grid2[iy, ix], [k[ix], k[iy]])
    grid3 = frequency_grid_3d(box, pixel, dtype=torch.float64).numpy()
    assert grid3.shape == (box, box, box, 3)
    iz, iy, ix = 2, 5, 7
    np.testing.assert_allclose(grid3[iz, iy, ix], [k[ix], k[iy], k[iz]])
    radius = radial_frequency_2d(box, pixel, dtype=torch.float64).numpy()
    np.testing.assert_allclose(radius, np.hypot(k[None, :], k[:, None]))


def test_grid_frequencies_are_those_of_the_centred_transform():
    # A plane wave exp(+2πi k0·r) with r relative to the centre pixel peaks at grid point k0.
    box = 16
    grid = frequency_grid_2d(box, dtype=torch.float64).numpy()
    coords = np.arange(box) - box // 2
    x, y = np.meshgrid(coords, coords, indexing="xy")
    kx0, ky0 = 3 / box, -5 / box
    wave = np.exp(2j * np.pi * (kx0 * x + ky0 * y))
    spectrum = np.abs(fft2_centered(torch.from_numpy(wave)).numpy())
    peak = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    np.testing.assert_allclose(grid[peak], [kx0, ky0], atol=1e-15)


def test_translating_a_centred_delta_moves_it_by_plus_t_with_x_the_column():
    box, centre = 16, 8
    delta = torch.zeros(1, box, box, dtype=torch.float64)
    delta[0, centre, centre] = 1.0
    moved = translate_images(delta, torch.tensor([[3.0, -2.0]], dtype=torch.float64))[0].numpy()
    expected = np.zeros((box, box))
    expected[centre - 2, centre + 3] = 1.0
    np.testing.assert_allclose(moved, expected, atol=1e-12)


def test_translation_phase_is_exp_minus_2_pi_i_k_dot_t():
    rng = np.random.default_rng(4)
    freqs = torch.from_numpy(rng.uniform(-0.5, 0.5, size=(5, 7, 2)))
    shifts = torch.from_numpy(rng.normal(size=(3, 2)))
    phase = translation_phase(freqs, shifts).numpy()
    assert phase.shape == (3, 5, 7)
    f, t = freqs.numpy(), shifts.numpy()
    expected = np.exp(-2j * np.pi * (f[None, ..., 0] * t[:, None, None, 0] + f[None, ..., 1] * t[:, None, None, 1]))
    np.testing.assert_allclose(phase, expected, atol=1e-12)


@pytest.mark.parametrize("origin_px", [(3, -2), (-5, 4), (0, 7)])
def test_origin_phase_equals_rolling_the_image_by_minus_the_origin(origin_px):
    # Independent fact: a particle with RELION origin o is the centred image moved by -o pixels, which
    # for whole pixels is np.roll (x is the column axis, y the row axis).
    box = 16
    image = np.random.default_rng(5).normal(size=(box, box))
    freqs = frequency_grid_2d(box, dtype=torch.float64)
    phase = origin_phase(freqs, torch.tensor([origin_px], dtype=torch.float64))
    moved = ifft2_centered(fft2_centered(torch.from_numpy(image)) * phase[0]).real.numpy()
    expected = np.roll(image, shift=(-origin_px[1], -origin_px[0]), axis=(0, 1))
    np.testing.assert_allclose(moved, expected, atol=1e-12)


def test_subpixel_translation_moves_the_centroid_of_a_smooth_blob():
    box = 32
    coords = np.arange(box) - box // 2
    x, y = np.meshgrid(coords, coords, indexing="xy")
    blob = np.exp(-((x - 1.0) ** 2 + (y + 2.0) ** 2) / (2 * 2.5 ** 2))
    shifts = np.array([[1.3, -0.7], [-2.25, 3.5]])
    moved = translate_images(torch.from_numpy(np.stack([blob, blob])), torch.from_numpy(shifts)).numpy()
    for image, (tx, ty) in zip(moved, shifts):
        expected = np.exp(-((x - 1.0 - tx) ** 2 + (y + 2.0 - ty) ** 2) / (2 * 2.5 ** 2))
        np.testing.assert_allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("box", [8, 16])
def test_rotate_180_about_the_centre_pixel_for_even_boxes(box):
    image = np.random.default_rng(5).normal(size=(2, box, box))
    rotated = rotate_180_in_plane(torch.from_numpy(image)).numpy()
    index = (box - np.arange(box)) % box
    np.testing.assert_array_equal(rotated, image[:, index][:, :, index])
    assert rotated[0, box // 2, box // 2] == image[0, box // 2, box // 2]


def test_rotate_180_for_odd_boxes_is_a_plain_flip():
    image = np.random.default_rng(6).normal(size=(9, 9))
    rotated = rotate_180_in_plane(torch.from_numpy(image)).numpy()
    np.testing.assert_array_equal(rotated, image[::-1, ::-1])


@pytest.mark.parametrize("box", [9, 16])
def test_rotate_180_conjugates_the_transform_of_a_real_image(box):
    image = torch.from_numpy(np.random.default_rng(7).normal(size=(box, box)))
    spectrum = fft2_centered(image).numpy()
    rotated_spectrum = fft2_centered(rotate_180_in_plane(image)).numpy()
    if box % 2 == 0:
        # F(-k) for the frequencies whose negation is on the grid (all but the -Nyquist row and column).
        rotated_spectrum, spectrum = rotated_spectrum[1:, 1:], spectrum[1:, 1:]
    np.testing.assert_allclose(rotated_spectrum, np.conj(spectrum), atol=1e-10)


def band_limited_image(box: int, max_cycles: int, pixel: float, seed: int):
    """Sum of plane waves of integer cycles per field of view below ``max_cycles``, as a function of
    position in Å relative to the centre pixel."""
    rng = np.random.default_rng(seed)
    terms = [(rng.integers(-max_cycles + 1, max_cycles, size=2), rng.normal(), rng.uniform(0, 2 * np.pi))
             for _ in range(6)]
    field_of_view = box * pixel

    def evaluate(new_box: int) -> np.ndarray:
        new_pixel = field_of_view / new_box
        coords = (np.arange(new_box) - new_box // 2) * new_pixel
        x, y = np.meshgrid(coords, coords, indexing="xy")
        total = np.full((new_box, new_box), 0.7)
        for (cx, cy), amplitude, phase in terms:
            total += amplitude * np.cos(2 * np.pi * (cx * x + cy * y) / field_of_view + phase)
        return total

    return evaluate


def test_downsampling_a_band_limited_image_samples_the_same_function_on_the_coarser_grid():
    function = band_limited_image(32, max_cycles=8, pixel=1.0, seed=8)
    fine = torch.from_numpy(function(32))
    coarse = resample_images(fine.unsqueeze(0), 16)[0].numpy()
    np.testing.assert_allclose(coarse, function(16), atol=1e-10)
    assert coarse.mean() == pytest.approx(fine.numpy().mean(), abs=1e-12)


def test_upsampling_interpolates_and_keeps_the_coarse_samples():
    function = band_limited_image(16, max_cycles=8, pixel=2.0, seed=9)
    coarse = torch.from_numpy(function(16))
    fine = resample_images(coarse, 32).numpy()
    np.testing.assert_allclose(fine, function(32), atol=1e-10)
    np.testing.assert_allclose(fine[::2, ::2], coarse.numpy(), atol=1e-10)


def test_resampling_preserves_the_mean_of_any_image():
    images = torch.from_numpy(np.random.default_rng(10).normal(loc=3.0, size=(2, 16, 16)))
    for new_box in (10, 24):
        resampled = resample_images(images, new_box)
        assert resampled.shape == (2, new_box, new_box)
        np.testing.assert_allclose(resampled.mean(dim=(-2, -1)).numpy(), images.mean(dim=(-2, -1)).numpy(),
                                   atol=1e-12)
    assert resample_images(images, 16) is images


def test_up_then_down_is_the_identity_for_odd_boxes():
    images = torch.from_numpy(np.random.default_rng(12).normal(size=(2, 15, 15)))
    np.testing.assert_allclose(resample_images(resample_images(images, 21), 15).numpy(), images.numpy(),
                               atol=1e-12)


def test_up_then_down_is_the_identity_for_even_boxes_without_nyquist_content():
    # An even box's -Nyquist row and column have no +Nyquist partner; the other coefficients survive exactly.
    spectrum = np.fft.fftshift(np.fft.fft2(np.random.default_rng(13).normal(size=(16, 16))))
    spectrum[0, :] = 0.0
    spectrum[:, 0] = 0.0
    images = torch.from_numpy(np.fft.ifft2(np.fft.ifftshift(spectrum)).real)
    np.testing.assert_allclose(resample_images(resample_images(images, 24), 16).numpy(), images.numpy(),
                               atol=1e-12)


def test_resample_volume_samples_a_band_limited_volume_on_the_new_grid():
    rng = np.random.default_rng(11)
    box, new_box = 16, 8
    terms = [(rng.integers(-3, 4, size=3), rng.normal(), rng.uniform(0, 2 * np.pi)) for _ in range(5)]

    def evaluate(size):
        coords = (np.arange(size) - size // 2) * (box / size)
        z, y, x = np.meshgrid(coords, coords, coords, indexing="ij")
        total = np.full((size,) * 3, 1.5)
        for (cx, cy, cz), amplitude, phase in terms:
            total += amplitude * np.cos(2 * np.pi * (cx * x + cy * y + cz * z) / box + phase)
        return total

    volume = torch.from_numpy(evaluate(box))
    down = resample_volume(volume, new_box).numpy()
    np.testing.assert_allclose(down, evaluate(new_box), atol=1e-10)
    up = resample_volume(torch.from_numpy(down), box).numpy()
    np.testing.assert_allclose(up, volume.numpy(), atol=1e-10)


@pytest.mark.parametrize("box, new_box", [(8, 4), (9, 5), (4, 8), (5, 9), (8, 5)])
def test_crop_or_pad_real_keeps_the_centre_pixel(box, new_box):
    image = np.arange(box * box, dtype=np.float64).reshape(box, box) + 1.0
    out = crop_or_pad_real(torch.from_numpy(image), new_box, 2).numpy()
    assert out.shape == (new_box, new_box)
    assert out[new_box // 2, new_box // 2] == image[box // 2, box // 2]
    # Pixel offsets from the centre are kept wherever both boxes hold them.
    for dy, dx in [(-1, 1), (1, -2), (-2, -2)]:
        if all(0 <= c + d < size for c, size in [(box // 2, box), (new_box // 2, new_box)] for d in (dy, dx)):
            assert out[new_box // 2 + dy, new_box // 2 + dx] == image[box // 2 + dy, box // 2 + dx]
    if new_box > box:
        assert out.sum() == image.sum()


def test_crop_or_pad_real_on_volumes_and_batches():
    volume = torch.zeros(2, 6, 6, 6)
    volume[:, 3, 3, 3] = 1.0
    padded = crop_or_pad_real(volume, 10, 3)
    assert padded.shape == (2, 10, 10, 10)
    assert padded[:, 5, 5, 5].tolist() == [1.0, 1.0] and padded.sum() == 2.0
