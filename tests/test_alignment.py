"""Rigid map alignment (rotation, shift and hand) and resampling onto a reference grid.

Convention under test: ``aligned(x) = moving(Dᵐ Rᵀ (x − t))`` with ``x = (x, y, z)`` voxel offsets from
the centre index ``L // 2`` and ``D = diag(1, 1, −1)``. Test maps are built here from Gaussian blobs
evaluated analytically, or by a small numpy trilinear resampler, independent of the code under test.
"""
import argparse
import json
import os

import mrcfile
import numpy as np
import pytest
import roma
import torch

from cryoai_core.cli import evaluate as evaluate_command
from cryoai_core.evaluate.alignment import (align_volumes, apply_alignment, mirror_volume,
                                            resample_to_reference)
from cryoai_core.evaluate.fsc import fsc_curve
from cryoai_core.fourier import resample_volume

BUNDLED_MAP = os.path.join(os.path.dirname(__file__), "..", "cryoai_core", "data", "4ake_L64_px1.5.mrc")
D = np.diag([1.0, 1.0, -1.0])


def offsets(box, voxel=1.0):
    """``(L, L, L, 3)`` coordinates ``(x, y, z)`` of the voxels from the centre index, times ``voxel``."""
    axis = (np.arange(box) - box // 2) * voxel
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.stack([x, y, z], axis=-1)


def blobs(box, centres, sigma=1.5, weights=None, voxel=1.0):
    """Sum of isotropic Gaussians at ``centres`` ``(K, 3)`` (x, y, z), evaluated exactly on the grid."""
    coords = offsets(box, voxel)
    weights = np.ones(len(centres)) if weights is None else weights
    volume = np.zeros((box,) * 3)
    for centre, weight in zip(np.asarray(centres, dtype=float), weights):
        volume += weight * np.exp(-np.sum((coords - centre) ** 2, axis=-1) / (2 * sigma ** 2))
    return volume


def centre_of_mass(volume):
    return np.tensordot(volume, offsets(volume.shape[0]), axes=3) / volume.sum()


def trilinear(volume, points_xyz):
    """Trilinear samples of ``volume`` at ``(N, 3)`` offsets (x, y, z) from the centre; zero outside."""
    box = volume.shape[0]
    index = points_xyz[:, ::-1] + box // 2
    base = np.floor(index).astype(int)
    frac = index - base
    out = np.zeros(len(points_xyz))
    for corner in np.ndindex(2, 2, 2):
        at = base + np.array(corner)
        weight = np.prod(np.where(np.array(corner) == 1, frac, 1.0 - frac), axis=1)
        inside = np.all((at >= 0) & (at < box), axis=1)
        out[inside] += weight[inside] * volume[at[inside, 0], at[inside, 1], at[inside, 2]]
    return out


def random_rotation(angle_degrees, seed):
    axis = np.random.default_rng(seed).normal(size=3)
    rotvec = axis / np.linalg.norm(axis) * np.radians(angle_degrees)
    return roma.rotvec_to_rotmat(torch.tensor(rotvec)).numpy()


def angle_between(first, second):
    return np.degrees(np.arccos(np.clip((np.trace(first @ second.T) - 1) / 2, -1.0, 1.0)))


def test_apply_alignment_rotates_then_shifts_a_blob_and_mirrors_z():
    box, point, shift = 32, np.array([5.0, -3.0, 4.0]), np.array([1.0, 2.0, -1.5])
    rotation = random_rotation(70.0, seed=1)
    volume = blobs(box, [point])
    np.testing.assert_allclose(centre_of_mass(apply_alignment(volume, rotation, shift, False)),
                               rotation @ point + shift, atol=0.05)
    np.testing.assert_allclose(centre_of_mass(apply_alignment(volume, rotation, shift, True)),
                               rotation @ D @ point + shift, atol=0.05)
    np.testing.assert_allclose(centre_of_mass(mirror_volume(torch.tensor(volume)).numpy()), D @ point,
                               atol=1e-6)


def test_alignment_recovers_a_rotation_and_shift_of_a_blob_model():
    rng = np.random.default_rng(4)
    box = 32
    centres = rng.uniform(-7, 7, size=(6, 3))
    weights = rng.uniform(0.5, 1.5, size=6)
    rotation, shift = random_rotation(40.0, seed=2), np.array([2.0, -1.0, 0.5])
    reference = blobs(box, centres, weights=weights)
    # moving(y) = reference(R y + t): blobs at Rᵀ (c − t).
    moving = blobs(box, (centres - shift) @ rotation, weights=weights)
    result = align_volumes(moving, reference)
    assert not result.mirrored
    assert angle_between(result.rotation, rotation) < 1.0
    np.testing.assert_allclose(result.shift_px, shift, atol=0.15)
    assert result.correlation > 0.99


def test_alignment_recovers_rotation_shift_and_hand_of_the_bundled_map():
    with mrcfile.open(BUNDLED_MAP) as mrc:
        full = np.asarray(mrc.data, dtype=np.float32)
    reference = resample_volume(torch.tensor(full), 32).numpy().astype(np.float64)
    rotation, shift = random_rotation(40.0, seed=3), np.array([2.0, 0.0, -1.0])
    # The opposite hand, rotated and shifted: moving(y) = reference(R D y + t), so that
    # moving(D Rᵀ (x − t)) = reference(x).
    points = offsets(32).reshape(-1, 3)
    moving = trilinear(reference, points @ (rotation @ D).T + shift).reshape(reference.shape)
    result = align_volumes(moving, reference)
    assert result.mirrored
    assert angle_between(result.rotation, rotation) < 2.0
    np.testing.assert_allclose(result.shift_px, shift, atol=0.3)
    # Two trilinear resamplings blur this 3 Å map a little, so the true alignment itself scores ~0.95.
    truth = apply_alignment(moving, rotation, shift, True)
    best_possible = np.corrcoef(truth.ravel(), reference.ravel())[0, 1]
    assert result.correlation > 0.93
    assert result.correlation >= best_possible - 0.002
    frequencies, fsc = fsc_curve(result.aligned_map, reference)
    assert np.all(fsc[frequencies <= 0.3] > 0.9)
    assert np.median(fsc) > 0.9


def test_resample_to_reference_matches_the_map_sampled_on_the_reference_grid():
    centre, sigma = np.array([2.0, -3.0, 1.5]), 3.0
    fine = blobs(50, [centre], sigma=sigma, voxel=1.0)  # 1.0 Å voxels, 50 Å box
    expected = blobs(40, [centre], sigma=sigma, voxel=1.5)  # 1.5 Å voxels, 60 Å box
    resampled = resample_to_reference(fine, 1.0, expected.shape, 1.5)
    assert resampled.shape == (40, 40, 40)
    # Fourier resampling keeps the density per voxel, here a function of position only.
    np.testing.assert_allclose(resampled, expected, atol=0.01 * expected.max())


def test_mismatched_maps_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="resample"):
        align_volumes(np.zeros((16, 16, 16)), np.zeros((20, 20, 20)))
    with pytest.raises(ValueError, match="cubic"):
        align_volumes(np.zeros((16, 16, 8)), np.zeros((16, 16, 8)))


def write_map(path, volume, voxel):
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.asarray(volume, dtype=np.float32))
        mrc.voxel_size = voxel
    return str(path)


def test_evaluate_command_resamples_aligns_and_reports(tmp_path):
    rng = np.random.default_rng(5)
    centres = rng.uniform(-14, 14, size=(6, 3))  # Å
    weights = rng.uniform(0.5, 1.5, size=6)
    rotation, shift = random_rotation(60.0, seed=6), np.array([-2.0, 3.0, 1.0])  # shift in Å
    reference = blobs(24, centres, sigma=3.0, weights=weights, voxel=2.0)
    # The map: other hand, rotated and shifted, on a 1 Å grid of another box.
    moved = blobs(48, (centres - shift) @ rotation @ D, sigma=3.0, weights=weights, voxel=1.0)
    reference_path = write_map(tmp_path / "reference.mrc", reference, 2.0)
    os.makedirs(tmp_path / "run")
    map_path = write_map(tmp_path / "run" / "map.mrc", moved, 1.0)
    json_path = tmp_path / "eval.json"
    parser = argparse.ArgumentParser()
    evaluate_command.add_args(parser)
    args = parser.parse_args(["--map", map_path, "--reference", reference_path, "--json", str(json_path)])
    assert evaluate_command.main(args) == 0
    report = json.loads(json_path.read_text())["map"]
    assert report["alignment"]["mirrored"] is True
    assert angle_between(np.array(report["alignment"]["rotation"]), rotation) < 1.5
    np.testing.assert_allclose(report["alignment"]["shift_angstrom"], shift, atol=0.3)
    frequencies, fsc = np.array(report["fsc"]["frequencies_per_pixel"]), np.array(report["fsc"]["values"])
    assert len(fsc) == 13 and np.all(fsc[frequencies <= 0.3] > 0.95)
    # These smooth blobs hold almost no signal near Nyquist, so 0.5 is crossed a little before it.
    assert 2.0 <= report["resolution"]["0.5"]["pixels"] < 3.0
    half = report["resolution"]["0.5"]
    assert half["angstrom"] == pytest.approx(2.0 * half["pixels"])
    for name in ("aligned_map.mrc", "fsc.png"):
        assert os.path.getsize(tmp_path / "run" / name) > 0
    with mrcfile.open(tmp_path / "run" / "aligned_map.mrc") as mrc:
        assert mrc.data.shape == (24, 24, 24)
        assert float(mrc.voxel_size.x) == pytest.approx(2.0)
