"""Pose errors after one global rotation and hand (the cryoAI paper's metrics).

The relation between the poses of a rotated or mirrored map and the true poses is checked on actual
projections (Fourier-slice projector of analytic blob maps), then the metrics on synthetic poses.
"""
import mrcfile
import numpy as np
import pytest
import roma
import torch

from cryoai_core.cli.evaluate import evaluate_poses
from cryoai_core.evaluate.poses import fit_global_rotation, pose_errors, shift_errors
from cryoai_core.rotations import matrix_to_euler, random_rotations
from cryoai_core.slicing import VoxelFourierVolume

D = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def blob_map(centres, box=32, sigma=1.5):
    """Gaussians at ``centres`` ``(K, 3)`` (x, y, z voxel offsets from the centre), array ``[z, y, x]``."""
    axis = np.arange(box) - box // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    coords = np.stack([x, y, z], axis=-1)
    volume = np.zeros((box,) * 3)
    for weight, centre in enumerate(np.asarray(centres), start=1):
        volume += weight * np.exp(-np.sum((coords - centre) ** 2, axis=-1) / (2 * sigma ** 2))
    return torch.tensor(volume)


def project(volume, rotations):
    return VoxelFourierVolume(volume, 1.0).project(rotations)


@pytest.mark.parametrize("mirrored", [False, True])
def test_poses_of_a_rotated_or_mirrored_map_follow_the_documented_relation(mirrored):
    generator = torch.Generator().manual_seed(0)
    centres = np.random.default_rng(1).uniform(-6, 6, size=(5, 3))
    true_rotations = random_rotations(4, generator)
    global_rotation = random_rotations(1, generator)[0]
    hand = D if mirrored else torch.eye(3, dtype=torch.float64)
    # V_pred(y) = V_true(G Dᵐ y): a blob at c in the true map sits at Dᵐ Gᵀ c in the predicted one.
    predicted_map = blob_map((hand @ global_rotation.T @ torch.tensor(centres).T).T.numpy())
    # Documented relation: Dᵐ A Dᵐ = T G, i.e. A = Dᵐ T G Dᵐ; no in-plane flip.
    predicted_poses = hand @ true_rotations @ global_rotation @ hand
    images_true = project(blob_map(centres), true_rotations)
    images_predicted = project(predicted_map, predicted_poses)
    scale = images_true.abs().max()
    assert torch.max(torch.abs(images_predicted - images_true)) < 0.02 * scale
    # The images really depend on the pose: the unmirrored guess is wrong for a mirrored map.
    if mirrored:
        wrong = project(predicted_map, true_rotations @ global_rotation)
        assert torch.max(torch.abs(wrong - images_true)) > 0.2 * scale


def noisy(rotations, degrees, generator):
    rotvecs = torch.randn(len(rotations), 3, generator=generator, dtype=torch.float64) * np.radians(degrees)
    return roma.rotvec_to_rotmat(rotvecs) @ rotations


def test_errors_vanish_under_a_global_rotation():
    generator = torch.Generator().manual_seed(2)
    truth = random_rotations(500, generator)
    global_rotation = random_rotations(1, generator)[0]
    report = pose_errors(truth @ global_rotation, truth)
    assert report["hand"] == "original"
    assert report["median_squared_frobenius"] < 1e-20
    assert report["median_angle_degrees"] < 1e-4
    assert report["fraction_within_5_degrees"] == 1.0
    np.testing.assert_allclose(report["global_rotation"], global_rotation.numpy(), atol=1e-10)


def test_mirrored_predictions_with_noise_give_the_noise_level():
    generator = torch.Generator().manual_seed(3)
    truth = random_rotations(2000, generator)
    global_rotation = random_rotations(1, generator)[0]
    # Per-axis rotation-vector noise σ = 2°: the angle follows a Maxwell law, median ≈ 1.54 σ ≈ 3.1°.
    predicted = D @ noisy(truth, 2.0, generator) @ global_rotation @ D
    report = pose_errors(predicted, truth)
    assert report["hand"] == "mirrored"
    assert report["median_angle_degrees"] == pytest.approx(1.538 * 2.0, rel=0.08)
    # ||R1 − R2||²_F = 8 sin²(θ/2): for small angles ≈ 2 θ².
    assert report["median_squared_frobenius"] == pytest.approx(2 * np.radians(3.08) ** 2, rel=0.15)
    assert report["fraction_within_10_degrees"] == 1.0
    assert pose_errors(predicted, truth, try_mirror=False)["median_angle_degrees"] > 30.0


def test_the_global_rotation_ignores_outliers():
    generator = torch.Generator().manual_seed(4)
    truth = random_rotations(1000, generator)
    global_rotation = random_rotations(1, generator)[0]
    predicted = noisy(truth, 1.0, generator) @ global_rotation
    predicted[:350] = random_rotations(350, generator)
    fitted = fit_global_rotation(predicted, truth)
    assert np.degrees(roma.rotmat_geodesic_distance(fitted, global_rotation).item()) < 0.3
    report = pose_errors(predicted, truth)
    assert report["fraction_within_5_degrees"] == pytest.approx(0.65, abs=0.02)


def test_random_poses_give_large_errors():
    generator = torch.Generator().manual_seed(5)
    report = pose_errors(random_rotations(2000, generator), random_rotations(2000, generator))
    # Uniform rotation angles have the CDF (θ − sin θ)/π, median 132.3°; the fitted global rotation
    # and the choice of hand lower it a little.
    assert 115.0 < report["median_angle_degrees"] < 135.0
    assert report["median_squared_frobenius"] > 5.0
    assert report["fraction_within_20_degrees"] < 0.01


def test_shift_errors_are_the_paper_mean_squared_l2_norm():
    predicted = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    true = np.zeros((3, 2))
    errors = shift_errors(predicted, true)
    assert errors["shift_mse_px2"] == pytest.approx((1 + 4 + 25) / 3)
    assert errors["median_shift_error_px"] == pytest.approx(2.0)
    rotations = random_rotations(3, torch.Generator().manual_seed(6))
    report = pose_errors(rotations, rotations, predicted, true)
    assert report["shift_mse_px2"] == pytest.approx(10.0)


def test_bad_inputs_are_rejected():
    rotations = random_rotations(5, torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="4 predicted poses for 5"):
        pose_errors(rotations[:4], rotations)
    with pytest.raises(ValueError, match=r"\(N, 3, 3\)"):
        pose_errors(rotations[:, :2], rotations)
    with pytest.raises(ValueError, match="both"):
        pose_errors(rotations, rotations, np.zeros((5, 2)), None)


def write_particles(path, stack, angles, origins_angstrom, pixel_size=2.0):
    """A minimal RELION 3.1 particle star file, written by hand."""
    lines = ["data_optics", "loop_", "_rlnOpticsGroup", "_rlnImagePixelSize", "_rlnImageSize",
             "_rlnImageDimensionality", f"1 {pixel_size} 8 2", "", "data_particles", "loop_",
             "_rlnImageName", "_rlnOpticsGroup", "_rlnAngleRot", "_rlnAngleTilt", "_rlnAnglePsi",
             "_rlnOriginXAngst", "_rlnOriginYAngst"]
    for index, ((rot, tilt, psi), (x, y)) in enumerate(zip(angles, origins_angstrom), start=1):
        lines.append(f"{index:06d}@{stack} 1 {rot:.8f} {tilt:.8f} {psi:.8f} {x:.6f} {y:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_evaluate_poses_reads_two_star_files(tmp_path):
    count = 40
    with mrcfile.new(str(tmp_path / "particles.mrcs")) as mrc:
        mrc.set_data(np.zeros((count, 8, 8), dtype=np.float32))
        mrc.set_image_stack()
    generator = torch.Generator().manual_seed(8)
    truth = random_rotations(count, generator)
    global_rotation = random_rotations(1, generator)[0]
    predicted = D @ truth @ global_rotation @ D
    rng = np.random.default_rng(9)
    true_origins = rng.normal(scale=4.0, size=(count, 2))
    predicted_origins = true_origins + rng.normal(scale=2.0, size=(count, 2))
    true_path = write_particles(tmp_path / "true.star", "particles.mrcs", matrix_to_euler(truth).numpy(),
                                true_origins)
    predicted_path = write_particles(tmp_path / "pred.star", "particles.mrcs",
                                     matrix_to_euler(predicted).numpy(), predicted_origins)
    report = evaluate_poses(predicted_path, true_path)
    assert report["num_particles"] == count
    assert report["hand"] == "mirrored"
    assert report["median_angle_degrees"] < 1e-3
    expected = np.mean(np.sum(((predicted_origins - true_origins) / 2.0) ** 2, axis=1))
    assert report["shift_mse_px2"] == pytest.approx(expected, rel=1e-4)
    fewer = write_particles(tmp_path / "fewer.star", "particles.mrcs", matrix_to_euler(truth[:30]).numpy(),
                            true_origins[:30])
    with pytest.raises(ValueError, match="same particles in the same order"):
        evaluate_poses(fewer, true_path)


def test_the_map_translation_fitted_to_the_origins_is_the_one_the_map_alignment_finds():
    """A predicted map translated against the truth: the particles' origins against it (checked against the
    simulator in test_recentre.py) give back the translation of align_volumes, and once it is taken out the
    shift errors are those of the origins alone."""
    from cryoai_core.evaluate.alignment import AlignmentConfig, align_volumes
    from cryoai_core.fourier import translate_volume
    from search_problem import blob_map

    truth_map = blob_map(5)
    drift = torch.tensor([2.0, -1.0, 1.5], dtype=torch.float64)
    predicted_map = translate_volume(truth_map, drift)
    alignment = align_volumes(predicted_map.numpy(), truth_map.numpy(), AlignmentConfig(try_mirror=False))
    generator = torch.Generator().manual_seed(10)
    truth = random_rotations(200, generator)
    true_origins = torch.randn(200, 2, generator=generator, dtype=torch.float64).numpy() * 3.0
    noise = torch.randn(200, 2, generator=generator, dtype=torch.float64).numpy() * 0.2
    predicted_origins = true_origins + (truth.numpy() @ drift.numpy())[:, :2] + noise
    report = pose_errors(truth, truth, predicted_origins, true_origins)
    np.testing.assert_allclose(report["map_translation_px"], alignment.shift_px, atol=0.1)
    np.testing.assert_allclose(report["map_translation_px"], -drift.numpy(), atol=0.05)
    assert report["median_shift_error_px"] > 1.5
    assert report["median_shift_error_map_translated_px"] == pytest.approx(
        np.median(np.linalg.norm(noise, axis=1)), abs=0.02)
