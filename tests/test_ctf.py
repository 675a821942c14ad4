"""The CTF in RELION's convention (docs/conventions.md, "CTF (RELION's convention)"), against direct
evaluation of the formula."""
import numpy as np
import pytest
import torch

from cryoai_core.ctf import CTFParams, compute_ctf, electron_wavelength_angstrom
from cryoai_core.fourier import frequency_grid_2d
from cryoai_core.io.ctf_table import CTF_FIELDS


def params(defocus_u, defocus_v, angle, voltage=300.0, cs=2.7, w=0.1, phase=0.0, bfactor=0.0) -> CTFParams:
    columns = np.broadcast_arrays(*[np.atleast_1d(np.asarray(v, dtype=np.float64))
                                    for v in (defocus_u, defocus_v, angle, voltage, cs, w, phase, bfactor)])
    return CTFParams.from_array(np.stack(columns, axis=1))


def relion_ctf(kx, ky, defocus_u, defocus_v, angle_deg, voltage_kv, cs_mm, w, phase_deg, bfactor):
    """The formula of docs/conventions.md, written out in numpy for one particle."""
    volts = voltage_kv * 1e3
    wavelength = 12.2643 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    s2 = kx ** 2 + ky ** 2
    alpha = np.arctan2(ky, kx)
    astigmatism = np.cos(2 * (alpha - np.radians(angle_deg)))
    defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * astigmatism
    gamma = (np.pi * wavelength * defocus * s2 - 0.5 * np.pi * cs_mm * 1e7 * wavelength ** 3 * s2 ** 2
             + np.radians(phase_deg))
    return (np.sqrt(1 - w ** 2) * np.sin(gamma) + w * np.cos(gamma)) * np.exp(-bfactor * s2 / 4)


def test_ctf_fields_are_the_eight_relion_parameters_in_order():
    assert len(CTF_FIELDS) == 8
    assert list(CTF_FIELDS)[:3] == ["defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_degrees"]
    table = np.arange(16, dtype=np.float64).reshape(2, 8)
    np.testing.assert_array_equal(CTFParams.from_array(table).to_array().numpy(), table)


@pytest.mark.parametrize("voltage, expected", [(300.0, 0.019688), (200.0, 0.025079), (100.0, 0.037014)])
def test_electron_wavelength(voltage, expected):
    assert electron_wavelength_angstrom(voltage) == pytest.approx(expected, abs=2e-6)


def test_compute_ctf_matches_the_relion_formula_with_astigmatism_phase_shift_and_bfactor():
    table = np.array([
        [15000.0, 13000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0],
        [22000.0, 21000.0, 127.0, 200.0, 2.0, 0.07, 45.0, 50.0],
        [8000.0, 9500.0, -20.0, 300.0, 0.01, 0.0, 90.0, 120.0],
    ])
    box, pixel = 32, 1.3
    freqs = frequency_grid_2d(box, pixel, dtype=torch.float64)
    ctf = compute_ctf(freqs, CTFParams.from_array(table)).numpy()
    assert ctf.shape == (3, box, box) and ctf.dtype == np.float64
    k = np.fft.fftshift(np.fft.fftfreq(box, d=pixel))
    kx, ky = np.meshgrid(k, k, indexing="xy")
    for row, values in zip(table, ctf):
        np.testing.assert_allclose(values, relion_ctf(kx, ky, *row), atol=1e-10)


@pytest.mark.parametrize("angle", [0.0, 35.0, 90.0, 160.0])
def test_defocus_along_the_astigmatism_angle_is_defocus_u_and_perpendicular_is_defocus_v(angle):
    s = np.linspace(0.0, 0.3, 40)
    direction = np.radians(angle)
    along = np.stack([s * np.cos(direction), s * np.sin(direction)], axis=-1)
    across = np.stack([-s * np.sin(direction), s * np.cos(direction)], axis=-1)
    astigmatic = params(18000.0, 12000.0, angle)
    ctf_along = compute_ctf(torch.from_numpy(along), astigmatic)[0].numpy()
    ctf_across = compute_ctf(torch.from_numpy(across), astigmatic)[0].numpy()
    only_u = compute_ctf(torch.from_numpy(along), params(18000.0, 18000.0, 0.0))[0].numpy()
    only_v = compute_ctf(torch.from_numpy(across), params(12000.0, 12000.0, 0.0))[0].numpy()
    np.testing.assert_allclose(ctf_along, only_u, atol=1e-10)
    np.testing.assert_allclose(ctf_across, only_v, atol=1e-10)
    # The opposite direction (α + 180°) has the same defocus.
    np.testing.assert_allclose(compute_ctf(torch.from_numpy(-along), astigmatic)[0].numpy(), ctf_along, atol=1e-10)


def test_first_zero_of_a_pure_phase_ctf_is_at_one_over_sqrt_lambda_defocus():
    defocus = 20000.0
    wavelength = 0.019688
    zero = 1.0 / np.sqrt(wavelength * defocus)
    s = np.array([[0.0, 0.0], [zero, 0.0], [0.0, zero], [0.5 * zero, 0.0]])
    ctf = compute_ctf(torch.from_numpy(s), params(defocus, defocus, 0.0, cs=0.0, w=0.0))[0].numpy()
    np.testing.assert_allclose(ctf[:3], 0.0, atol=1e-4)
    assert ctf[3] == pytest.approx(np.sin(np.pi / 4), abs=1e-4)


def test_ctf_is_positive_at_low_frequency_and_equals_w_at_the_origin():
    s = np.array([[0.0, 0.0], [0.005, 0.0], [0.0, 0.01]])
    ctf = compute_ctf(torch.from_numpy(s), params(15000.0, 14000.0, 10.0, w=0.1))[0].numpy()
    assert ctf[0] == pytest.approx(0.1, abs=1e-12)
    assert np.all(ctf[1:] > 0.1)


def test_phase_shift_of_90_degrees_turns_sine_into_cosine():
    freqs = frequency_grid_2d(16, 2.0, dtype=torch.float64)
    plain = compute_ctf(freqs, params(10000.0, 10000.0, 0.0, w=0.0)).numpy()
    shifted = compute_ctf(freqs, params(10000.0, 10000.0, 0.0, w=0.0, phase=90.0)).numpy()
    np.testing.assert_allclose(plain ** 2 + shifted ** 2, 1.0, atol=1e-12)
    assert shifted[0, 8, 8] == pytest.approx(1.0)


def test_bfactor_envelope_is_exp_minus_b_s2_over_4():
    freqs = frequency_grid_2d(24, 1.1, dtype=torch.float64)
    s2 = (freqs ** 2).sum(-1).numpy()
    plain = compute_ctf(freqs, params(12000.0, 11000.0, 45.0, bfactor=0.0)).numpy()
    damped = compute_ctf(freqs, params(12000.0, 11000.0, 45.0, bfactor=80.0)).numpy()
    np.testing.assert_allclose(damped, plain * np.exp(-80.0 * s2 / 4), atol=1e-12)


def test_compute_ctf_shape_on_any_grid_and_dtype_of_the_frequencies():
    batch = params([15000.0, 16000.0], [14000.0, 15500.0], [0.0, 90.0])
    for box in (9, 16):
        ctf = compute_ctf(frequency_grid_2d(box, 1.5), batch)
        assert ctf.shape == (2, box, box) and ctf.dtype == torch.float32
    points = torch.rand(37, 2, dtype=torch.float64) * 0.2
    listed = compute_ctf(points, batch)
    assert listed.shape == (2, 37) and listed.dtype == torch.float64


def test_ctf_params_from_array_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="shape"):
        CTFParams.from_array(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="shape"):
        CTFParams.from_array(np.zeros(8))


def _ctf_rows(defocus_u, defocus_v, bfactor=0.0) -> np.ndarray:
    """``(N, 8)`` CTF rows (CTF_FIELDS order) at 300 kV, Cs 2.7 mm, amplitude contrast 0.1, in F order as
    the star reader gives them."""
    count = len(defocus_u)
    rows = np.column_stack([defocus_u, defocus_v, np.zeros(count), np.full(count, 300.0), np.full(count, 2.7),
                            np.full(count, 0.1), np.zeros(count), np.full(count, bfactor)])
    return np.asfortranarray(rows)


def test_ctf_checks_read_both_signs_and_warn_on_overfocus_and_odd_units():
    from cryoai_core.ctf_ranges import check_ctf_parameters
    from cryoai_core.errors import InputError

    assert check_ctf_parameters(_ctf_rows([15000.0, 20000.0], [14000.0, 21000.0]), "s") == []
    rows = _ctf_rows([-15000.0, -20000.0], [-14000.0, -21000.0])
    before = rows.copy()
    (warning,) = check_ctf_parameters(rows, "s")
    assert "every defocus is negative" in warning
    np.testing.assert_array_equal(rows, before)  # the median's work copy is not the caller's array
    (warning,) = check_ctf_parameters(_ctf_rows([1.5, 2.0, 2.5], [1.4, 2.1, 2.6]), "s")  # µm, not Å
    assert "median defocus is 2.05 Å" in warning
    with pytest.raises(InputError, match="defocus of 5e\\+06 Å"):
        check_ctf_parameters(_ctf_rows([15000.0, -5e6], [14000.0, 20000.0]), "s")
    with pytest.raises(InputError, match="B-factor of 2e\\+04"):
        check_ctf_parameters(_ctf_rows([15000.0], [14000.0], bfactor=-2e4), "s")
    assert check_ctf_parameters(_ctf_rows([], []), "s") == []
