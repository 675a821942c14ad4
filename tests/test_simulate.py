"""The simulator: RELION meaning of the poses, origins and CTF it writes, its SNR, and its reference map.

Maps are a few Gaussian blobs, whose projections are known in closed form; the star file is read back and
interpreted with the formulas of docs/conventions.md only.
"""
import argparse
import os

import numpy as np
import pytest
import torch
import yaml

from cryoai_core.cli import simulate as simulate_cli
from cryoai_core.io.mrc import open_stack, read_mrc, write_mrc
from cryoai_core.io.star import read_star
from cryoai_core.simulate import ImageSimulator, SimulationConfig, simulate
from reference_formulas import blob_volume, relion_matrix

BOX = 32
VOXEL = 1.5
BLOBS = (np.array([1.0, 0.7, 0.5]),
         np.array([[4.0, -2.0, 1.0], [-3.0, 3.5, -2.0], [0.5, 1.0, 5.0]]),
         np.array([3.0, 2.6, 2.8]))
CENTRED_BLOB = (np.array([1.0]), np.array([[0.0, 0.0, 0.0]]), np.array([3.0]))


def particle_image(blobs, matrix, origin_angstrom, box: int = BOX, pixel: float = VOXEL) -> np.ndarray:
    """RELION's particle: the projection ``∫ V(Aᵀ (x, y, z)) dz`` translated by minus the origin."""
    coords = (np.arange(box) - box // 2) * pixel
    y, x = np.meshgrid(coords, coords, indexing="ij")
    image = np.zeros((box, box))
    for amplitude, centre, sigma in zip(*blobs):
        u, v, _ = matrix @ centre
        u, v = u - origin_angstrom[0], v - origin_angstrom[1]
        image += amplitude * np.sqrt(2 * np.pi) * sigma * np.exp(-((x - u) ** 2 + (y - v) ** 2) / (2 * sigma ** 2))
    return image


def centroid_angstrom(image: np.ndarray, pixel: float = VOXEL) -> np.ndarray:
    coords = (np.arange(image.shape[-1]) - image.shape[-1] // 2) * pixel
    total = image.sum()
    return np.array([(image.sum(axis=0) * coords).sum() / total, (image.sum(axis=1) * coords).sum() / total])


def relative_error(estimate, reference) -> float:
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def run_simulation(tmp_path, name, volume=None, **options):
    config = SimulationConfig(**{"num_particles": 6, "seed": 3, **options})
    outdir = str(tmp_path / name)
    volume = blob_volume(BLOBS) if volume is None else volume
    simulate(volume.astype(np.float32), VOXEL, config, outdir, progress=False)
    table = read_star(os.path.join(outdir, "particles.star"))
    images = np.asarray(open_stack(os.path.join(outdir, "particles.mrcs")), dtype=np.float64)
    return table, images, outdir


def test_a_particle_with_origin_plus_d_has_its_content_at_minus_d():
    volume = torch.from_numpy(blob_volume(CENTRED_BLOB))
    simulator = ImageSimulator(volume, VOXEL, SimulationConfig(num_particles=1, apply_ctf=False))
    rotations = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    origins = torch.tensor([[0.0, 0.0], [6.0, 0.0], [-3.0, 4.5]], dtype=torch.float64)
    images = simulator.images(rotations, origins, np.zeros((3, 8))).numpy().astype(np.float64)
    np.testing.assert_allclose(centroid_angstrom(images[0]), [0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(centroid_angstrom(images[1]), [-6.0, 0.0], atol=0.02)
    np.testing.assert_allclose(centroid_angstrom(images[2]), [3.0, -4.5], atol=0.02)
    # +6 Å at 1.5 Å/px is 4 px to the left of the centre column (x is the column axis).
    row, column = np.unravel_index(np.argmax(images[1]), images[1].shape)
    assert (row, column) == (BOX // 2, BOX // 2 - 4)


def test_star_file_poses_and_origins_describe_the_images_in_relion_convention(tmp_path):
    table, images, _ = run_simulation(tmp_path, "poses", shift_sigma_angstrom=4.0, apply_ctf=False)
    assert table.box == BOX and table.pixel_size_angstrom == pytest.approx(VOXEL)
    assert table.ctf is None
    assert np.std(table.origins_angstrom) > 1.0
    for angles, origin, image in zip(table.euler_angles_degrees, table.origins_angstrom, images):
        expected = particle_image(BLOBS, relion_matrix(*angles), origin)
        assert relative_error(image, expected) < 0.01
        # The same image with the opposite origin sign or a transposed matrix is far off.
        if np.abs(origin).max() > 1.0:
            assert relative_error(image, particle_image(BLOBS, relion_matrix(*angles), -origin)) > 0.1
        assert relative_error(image, particle_image(BLOBS, relion_matrix(*angles).T, origin)) > 0.1


def test_ctf_images_are_the_projections_times_the_relion_ctf_of_the_star_parameters(tmp_path):
    with_ctf, images, _ = run_simulation(tmp_path, "ctf", shift_sigma_angstrom=2.0, defocus_median_angstrom=8000.0,
                                         astigmatism_sigma_angstrom=1500.0, bfactor_angstrom2=30.0)
    without, plain, _ = run_simulation(tmp_path, "plain", shift_sigma_angstrom=2.0, apply_ctf=False)
    assert without.ctf is None and with_ctf.ctf is not None
    np.testing.assert_allclose(with_ctf.euler_angles_degrees, without.euler_angles_degrees)
    k = np.fft.fftshift(np.fft.fftfreq(BOX, d=VOXEL))
    kx, ky = np.meshgrid(k, k, indexing="xy")
    s2, alpha = kx ** 2 + ky ** 2, np.arctan2(ky, kx)
    volts = with_ctf.optics["rlnVoltage"] * 1e3
    wavelength = 12.2643 / np.sqrt(volts * (1 + 0.978466e-6 * volts))
    cs = with_ctf.optics["rlnSphericalAberration"] * 1e7
    w = with_ctf.optics["rlnAmplitudeContrast"]
    assert np.ptp(with_ctf.ctf[:, 0] - with_ctf.ctf[:, 1]) > 100.0
    for params, image, reference in zip(with_ctf.ctf, images, plain):
        defocus_u, defocus_v, angle = params[:3]
        astigmatism = np.cos(2 * (alpha - np.radians(angle)))
        defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * astigmatism
        gamma = np.pi * wavelength * defocus * s2 - 0.5 * np.pi * cs * wavelength ** 3 * s2 ** 2
        ctf = (np.sqrt(1 - w ** 2) * np.sin(gamma) + w * np.cos(gamma)) * np.exp(-30.0 * s2 / 4)
        spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image)))
        expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(reference))) * ctf
        assert relative_error(spectrum[1:, 1:], expected[1:, 1:]) < 1e-4


def test_noise_variance_is_the_mean_clean_variance_over_the_snr(tmp_path):
    _, clean, _ = run_simulation(tmp_path, "clean", num_particles=100, apply_ctf=False)
    _, noisy, outdir = run_simulation(tmp_path, "noisy", num_particles=100, apply_ctf=False, snr=0.25)
    noise = noisy - clean
    assert abs(noise.mean()) < 0.05 * noise.std()
    signal_variance = clean.var(axis=(1, 2)).mean()
    assert signal_variance / noise.var() == pytest.approx(0.25, rel=0.1)
    with open(os.path.join(outdir, "simulation.yaml")) as handle:
        recorded = yaml.safe_load(handle)["noise_sigma"]
    assert recorded == pytest.approx(noise.std(), rel=0.02)


def test_cli_snr_in_db_and_no_ctf(tmp_path):
    map_path = str(tmp_path / "map.mrc")
    write_mrc(map_path, blob_volume(BLOBS, box=16, voxel=3.0).astype(np.float32), 3.0)
    parser = argparse.ArgumentParser()
    simulate_cli.add_args(parser)
    outdir = str(tmp_path / "cli")
    args = parser.parse_args([map_path, "-o", outdir, "-n", "4", "--snr-db", "-6", "--no-ctf", "--no-progress"])
    assert simulate_cli.main(args) == 0
    with open(os.path.join(outdir, "simulation.yaml")) as handle:
        document = yaml.safe_load(handle)
    assert document["SimulationConfig"]["snr"] == pytest.approx(10 ** -0.6)
    assert document["SimulationConfig"]["apply_ctf"] is False
    table = read_star(os.path.join(outdir, "particles.star"))
    assert table.ctf is None and table.box == 16 and table.pixel_size_angstrom == pytest.approx(3.0)


def test_reference_map_has_the_particle_box_and_pixel_size(tmp_path):
    table, images, outdir = run_simulation(tmp_path, "resampled", num_particles=2, box=24,
                                           pixel_size_angstrom=2.0, apply_ctf=False)
    assert images.shape == (2, 24, 24) and table.pixel_size_angstrom == pytest.approx(2.0)
    reference, voxel = read_mrc(os.path.join(outdir, "reference.mrc"))
    assert reference.shape == (24, 24, 24) and voxel == pytest.approx(2.0)
    expected = blob_volume(BLOBS, box=24, voxel=2.0)
    assert np.corrcoef(reference.ravel(), expected.ravel())[0, 1] > 0.999
    for angles, origin, image in zip(table.euler_angles_degrees, table.origins_angstrom, images):
        assert relative_error(image, particle_image(BLOBS, relion_matrix(*angles), origin, 24, 2.0)) < 0.01


def test_reference_map_values_equal_the_band_limited_map_on_the_particle_grid():
    off_centre = (np.array([1.0]), np.array([[12.0, 0.0, 0.0]]), np.array([3.0]))
    simulator = ImageSimulator(torch.from_numpy(blob_volume(off_centre)), VOXEL,
                               SimulationConfig(num_particles=1, box=24, pixel_size_angstrom=2.0))
    reference = simulator.reference_map().numpy().astype(np.float64)
    expected = blob_volume(off_centre, box=24, voxel=2.0)
    assert relative_error(reference, expected) < 2e-3


@pytest.mark.parametrize("options, message", [
    ({"num_particles": 0}, "number of particles"),
    ({"num_particles": 5, "box": 31}, "even"),
    ({"num_particles": 5, "snr": 0.0}, "SNR"),
    ({"num_particles": 5, "amplitude_contrast": 1.0}, "amplitude contrast"),
    ({"num_particles": 5, "shift_sigma_angstrom": -1.0}, "shift sigma"),
])
def test_bad_simulation_settings_are_rejected_with_a_clear_message(options, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**options)
