"""RELION Euler matrices, 6D representation, uniform sampling and angles (docs/conventions.md, "Rotations and
projection")."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoai_core import relion_euler
from cryoai_core.rotations import (MIRROR, compose_in_plane_180, euler_to_matrix, geodesic_angle, matrix_to_euler,
                                   matrix_to_sixd, random_rotations, sixd_to_matrix, squared_frobenius_to_degrees)
from reference_formulas import relion_matrix


def rotation_about_z(theta_rad: float) -> np.ndarray:
    c, s = np.cos(theta_rad), np.sin(theta_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("angles, expected", [
    ((90, 0, 0), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((0, 90, 0), [[0, 0, -1], [0, 1, 0], [1, 0, 0]]),
    ((0, 0, 90), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((30, 0, 60), [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]),
    ((0, 180, 0), [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]),
    ((0, 0, 0), [[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
])
def test_relion_matrices_of_hand_computed_cases(angles, expected):
    np.testing.assert_allclose(euler_to_matrix(np.array(angles, dtype=float)).numpy(), expected, atol=1e-12)


def test_relion_matrix_of_general_angles_matches_the_explicit_product_formula():
    angles = np.random.default_rng(0).uniform([-180, 0, -180], [180, 180, 180], size=(20, 3))
    matrices = euler_to_matrix(angles).numpy()
    assert matrices.dtype == np.float64 and matrices.shape == (20, 3, 3)
    for angle, matrix in zip(angles, matrices):
        np.testing.assert_allclose(matrix, relion_matrix(*angle), atol=1e-12)


def test_relion_matrix_is_the_transpose_of_scipy_intrinsic_zyz():
    angles = np.random.default_rng(1).uniform(-180, 180, size=(10, 3))
    expected = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(euler_to_matrix(angles).numpy(), expected, atol=1e-12)


def test_euler_to_matrix_keeps_the_input_float_dtype_and_batch_shape():
    angles = torch.zeros(2, 4, 3, dtype=torch.float32)
    matrices = euler_to_matrix(angles)
    assert matrices.dtype == torch.float32 and matrices.shape == (2, 4, 3, 3)
    assert euler_to_matrix(torch.tensor([90, 0, 0])).dtype == torch.float64


def test_matrix_to_euler_returns_the_same_angles_in_relion_ranges():
    rng = np.random.default_rng(2)
    angles = np.column_stack([rng.uniform(-179, 179, 50), rng.uniform(1, 179, 50), rng.uniform(-179, 179, 50)])
    recovered = matrix_to_euler(torch.from_numpy(relion_matrix_batch(angles))).numpy()
    np.testing.assert_allclose(recovered, angles, atol=1e-8)


def relion_matrix_batch(angles: np.ndarray) -> np.ndarray:
    return np.stack([relion_matrix(*angle) for angle in angles])


@pytest.mark.parametrize("tilt", [0.0, 1e-5, 0.01, 179.99, 180.0 - 1e-5, 180.0])
def test_matrix_to_euler_round_trips_the_matrix_near_degenerate_tilts(tilt):
    angles = np.array([[37.0, tilt, -112.0], [-150.0, tilt, 20.0]])
    matrices = relion_matrix_batch(angles)
    recovered = matrix_to_euler(torch.from_numpy(matrices)).numpy()
    assert np.all((recovered[:, 1] >= 0) & (recovered[:, 1] <= 180))
    np.testing.assert_allclose(relion_matrix_batch(recovered), matrices, atol=1e-7)


def test_matrix_to_euler_round_trips_random_rotations():
    matrices = random_rotations(200, torch.Generator().manual_seed(3))
    angles = matrix_to_euler(matrices).numpy()
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    assert np.all((angles[:, [0, 2]] > -180 - 1e-9) & (angles[:, [0, 2]] <= 180 + 1e-9))
    np.testing.assert_allclose(relion_matrix_batch(angles), matrices.numpy(), atol=1e-10)


def assert_special_orthogonal(matrices: np.ndarray, atol: float = 1e-6):
    identity = np.broadcast_to(np.eye(3), matrices.shape)
    np.testing.assert_allclose(matrices @ matrices.swapaxes(-1, -2), identity, atol=atol)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=atol)


def test_sixd_to_matrix_gives_rotations_whose_columns_come_from_gram_schmidt():
    sixd = torch.from_numpy(np.random.default_rng(4).normal(size=(30, 6)))
    matrices = sixd_to_matrix(sixd).numpy()
    assert matrices.shape == (30, 3, 3)
    assert_special_orthogonal(matrices, atol=1e-10)
    first, second = sixd[:, :3].numpy(), sixd[:, 3:].numpy()
    column0 = first / np.linalg.norm(first, axis=1, keepdims=True)
    np.testing.assert_allclose(matrices[:, :, 0], column0, atol=1e-10)
    residual = second - np.sum(second * column0, axis=1, keepdims=True) * column0
    np.testing.assert_allclose(matrices[:, :, 1], residual / np.linalg.norm(residual, axis=1, keepdims=True),
                               atol=1e-10)
    np.testing.assert_allclose(matrices[:, :, 2], np.cross(matrices[:, :, 0], matrices[:, :, 1]), atol=1e-10)


def test_matrix_to_sixd_holds_the_first_two_columns_and_inverts_sixd_to_matrix():
    matrices = random_rotations(25, torch.Generator().manual_seed(5))
    sixd = matrix_to_sixd(matrices)
    assert sixd.shape == (25, 6)
    np.testing.assert_array_equal(sixd[:, :3].numpy(), matrices[:, :, 0].numpy())
    np.testing.assert_array_equal(sixd[:, 3:].numpy(), matrices[:, :, 1].numpy())
    np.testing.assert_allclose(sixd_to_matrix(sixd).numpy(), matrices.numpy(), atol=1e-12)
    scaled = torch.cat([3.0 * sixd[:, :3], sixd[:, 3:] + 0.7 * sixd[:, :3]], dim=1)
    np.testing.assert_allclose(sixd_to_matrix(scaled).numpy(), matrices.numpy(), atol=1e-12)


def test_random_rotations_are_rotations_spread_uniformly():
    count = 20000
    matrices = random_rotations(count, torch.Generator().manual_seed(6)).numpy()
    assert matrices.shape == (count, 3, 3) and matrices.dtype == np.float64
    assert_special_orthogonal(matrices, atol=1e-10)
    # Haar measure: E[R] = 0 (each entry has variance 1/3) and E[tr(R)^2] = 1.
    assert np.abs(matrices.mean(axis=0)).max() < 5 * np.sqrt(1 / 3 / count)
    trace = np.trace(matrices, axis1=1, axis2=2)
    assert np.mean(trace ** 2) == pytest.approx(1.0, abs=0.05)
    # The rotation angle has density (1 - cos θ)/π, so P(θ < 90°) = (π/2 - 1)/π.
    angles = np.arccos(np.clip((trace - 1) / 2, -1, 1))
    assert np.mean(angles < np.pi / 2) == pytest.approx((np.pi / 2 - 1) / np.pi, abs=0.015)


def test_random_rotations_are_reproducible_with_a_generator_and_follow_dtype():
    first = random_rotations(5, torch.Generator().manual_seed(7))
    second = random_rotations(5, torch.Generator().manual_seed(7), dtype=torch.float32)
    assert second.dtype == torch.float32
    np.testing.assert_allclose(first.numpy(), second.numpy(), atol=1e-6)


def test_geodesic_angle_in_radians_on_known_pairs():
    base = random_rotations(4, torch.Generator().manual_seed(8)).numpy()
    thetas = np.radians([0.0, 10.0, 90.0, 179.0])
    second = np.stack([b @ rotation_about_z(t) for b, t in zip(base, thetas)])
    angle = geodesic_angle(torch.from_numpy(base), torch.from_numpy(second)).numpy()
    np.testing.assert_allclose(angle, thetas, atol=1e-6)
    axis_angle = Rotation.from_rotvec([0.3, -0.4, 1.2]).as_matrix()
    assert geodesic_angle(torch.from_numpy(axis_angle), torch.eye(3, dtype=torch.float64)).item() == \
        pytest.approx(np.linalg.norm([0.3, -0.4, 1.2]), abs=1e-9)


@pytest.mark.parametrize("degrees", [0.0, 1.0, 10.0, 90.0, 135.0, 179.0, 180.0])
def test_squared_frobenius_norm_converts_to_the_rotation_angle(degrees):
    rotation = Rotation.from_rotvec(np.radians(degrees) * np.array([1.0, 2.0, -2.0]) / 3.0).as_matrix()
    squared = np.sum((rotation - np.eye(3)) ** 2)
    assert squared == pytest.approx(4 * (1 - np.cos(np.radians(degrees))), abs=1e-12)
    assert float(squared_frobenius_to_degrees(squared)) == pytest.approx(degrees, abs=1e-5)


def test_squared_frobenius_to_degrees_works_on_arrays_and_clips():
    np.testing.assert_allclose(squared_frobenius_to_degrees([0.0, 4.0, 8.0, 8.0 + 1e-9]), [0, 90, 180, 180])


def test_compose_in_plane_180_adds_180_to_psi():
    angles = np.random.default_rng(9).uniform([-180, 0, -180], [180, 180, 180], size=(10, 3))
    composed = compose_in_plane_180(torch.from_numpy(relion_matrix_batch(angles))).numpy()
    flipped = angles + np.array([0.0, 0.0, 180.0])
    np.testing.assert_allclose(composed, relion_matrix_batch(flipped), atol=1e-12)


def test_mirror_is_the_z_reflection():
    np.testing.assert_array_equal(MIRROR.numpy(), np.diag([1.0, 1.0, -1.0]))


def test_numpy_relion_euler_is_the_explicit_product_formula_and_its_inverse():
    angles = np.random.default_rng(4).uniform([-179, 1, -179], [179, 179, 179], size=(30, 3))
    matrices = relion_euler.euler_to_matrix(angles)
    assert isinstance(matrices, np.ndarray) and matrices.shape == (30, 3, 3)
    np.testing.assert_allclose(matrices, relion_matrix_batch(angles), atol=1e-12)
    np.testing.assert_allclose(relion_euler.matrix_to_euler(matrices), angles, atol=1e-8)


def test_relion_euler_module_needs_no_torch():
    code = ("import sys; import cryoai_core.relion_euler, cryoai_core.io.readers, cryoai_core.io.star, "
            "cryoai_core.io.cryosparc, cryoai_core.io.mrc; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.stdout.strip() == "False"
