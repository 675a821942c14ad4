"""Fourier shell correlation and resolution figures (docs/conventions.md, "Resolution and pose-error figures")."""
import numpy as np
import pytest

from cryoai_core.evaluate.fsc import fsc_curve, pixels_to_angstrom, resolution_at, resolution_report


def test_fsc_of_a_map_with_itself_is_one_in_every_shell():
    volume = np.random.default_rng(0).normal(size=(24, 24, 24))
    frequencies, fsc = fsc_curve(volume, volume)
    assert frequencies.shape == fsc.shape == (13,)
    np.testing.assert_allclose(fsc, 1.0, atol=1e-12)
    np.testing.assert_allclose(frequencies, np.arange(13) / 24)
    assert frequencies[-1] == 0.5


def test_fsc_is_scale_invariant_and_minus_one_for_a_negated_map():
    volume = np.random.default_rng(1).normal(size=(16, 16, 16))
    np.testing.assert_allclose(fsc_curve(volume, 3.0 * volume)[1], 1.0, atol=1e-12)
    np.testing.assert_allclose(fsc_curve(volume, -volume)[1][1:], -1.0, atol=1e-12)


def test_fsc_of_independent_noise_is_near_zero_at_high_frequency():
    rng = np.random.default_rng(2)
    first, second = rng.normal(size=(2, 32, 32, 32))
    _, fsc = fsc_curve(first, second)
    # Shell k holds ~4πk² voxels, so the FSC of independent noise has a standard deviation ~1/sqrt(4πk²).
    assert np.all(np.abs(fsc[8:]) < 0.1)


def test_fsc_matches_a_direct_shell_sum_for_a_low_pass_filtered_map():
    rng = np.random.default_rng(3)
    box = 16
    volume = rng.normal(size=(box,) * 3)
    noisy = volume + 0.5 * rng.normal(size=(box,) * 3)
    spectrum_a = np.fft.fftn(volume)
    spectrum_b = np.fft.fftn(noisy)
    k = np.fft.fftfreq(box)
    radius = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) * box
    shell = np.rint(radius).astype(int)
    _, fsc = fsc_curve(volume, noisy)
    for index in (2, 5, 8):
        mask = shell == index
        expected = np.real(np.sum(spectrum_a[mask] * np.conj(spectrum_b[mask]))) / np.sqrt(
            np.sum(np.abs(spectrum_a[mask]) ** 2) * np.sum(np.abs(spectrum_b[mask]) ** 2))
        assert fsc[index] == pytest.approx(expected, rel=1e-10)


def test_resolution_is_interpolated_linearly_at_the_first_crossing():
    frequencies = np.arange(9) / 16.0
    fsc = np.array([1.0, 0.95, 0.9, 0.7, 0.3, 0.6, 0.1, 0.05, 0.0])
    # 0.5 is crossed between shells 3 (0.7) and 4 (0.3), halfway: frequency 3.5/16, resolution 16/3.5 px.
    assert resolution_at(frequencies, fsc, 0.5) == pytest.approx(16 / 3.5)
    # 0.143 first falls below between shells 5 (0.6) and 6 (0.1): frequency (5 + 0.457/0.5)/16.
    assert resolution_at(frequencies, fsc, 0.143) == pytest.approx(16 / (5 + (0.6 - 0.143) / 0.5))


def test_resolution_is_nyquist_when_the_curve_never_crosses():
    frequencies = np.arange(17) / 32.0
    assert resolution_at(frequencies, np.ones(17), 0.143) == pytest.approx(2.0)
    assert resolution_at(frequencies, np.full(17, 0.1), 0.143) == float("inf")


def test_resolutions_in_angstrom_are_pixels_times_pixel_size():
    frequencies = np.arange(9) / 16.0
    fsc = np.array([1.0, 1.0, 0.9, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    report = resolution_report(frequencies, fsc, 1.5, thresholds=(0.9, 0.25))
    assert report["0.9"]["pixels"] == pytest.approx(8.0)
    assert report["0.9"]["angstrom"] == pytest.approx(12.0)
    assert report["0.25"]["pixels"] == pytest.approx(16 / 3.5)
    assert pixels_to_angstrom(2.0, 3.2) == pytest.approx(6.4)
    with pytest.raises(ValueError, match="pixel size"):
        pixels_to_angstrom(2.0, 0.0)


def test_maps_of_different_shapes_are_rejected():
    with pytest.raises(ValueError, match="differ in shape"):
        fsc_curve(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)))
    with pytest.raises(ValueError, match="cubic"):
        fsc_curve(np.zeros((8, 8, 6)), np.zeros((8, 8, 6)))
