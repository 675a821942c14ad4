"""Direct Fourier inversion and half maps: exact on noise-free data with true poses, conventions pinned by
the wrong alternatives, and the half-map resolution against the resolution measured with the truth.

The truth is the simulator's reference map (blobs, :mod:`reference_formulas`); FSC and resolutions come
from :mod:`cryoai_core.evaluate.fsc`.
"""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from cryoai_core.cli import main
from cryoai_core.evaluate.fsc import fsc_curve, resolution_at
from cryoai_core.fourier import fft3_centered
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import read_mrc
from cryoai_core.io.star import read_star, write_star
from cryoai_core.reconstruct import FourierAccumulator, accumulate, noise_substituted_fsc, reconstruct_half_maps, \
    split_halves
from cryoai_core.simulate import SimulationConfig, simulate
from reference_formulas import blob_volume

BOX = 32
VOXEL = 1.5
BLOBS = (np.array([1.0, 0.7, 0.5, 0.8]),
         np.array([[4.0, -2.0, 1.0], [-3.0, 3.5, -2.0], [0.5, 1.0, 5.0], [-5.0, -4.0, 3.0]]),
         np.array([2.0, 1.6, 1.8, 1.5]))
"""Blobs narrow enough to carry signal up to Nyquist at 1.5 Å/px."""


def simulated(folder, **options):
    config = SimulationConfig(**{"num_particles": 1500, "seed": 1, "shift_sigma_angstrom": 3.0,
                                 "defocus_median_angstrom": 10000.0, **options})
    simulate(blob_volume(BLOBS, BOX, VOXEL).astype(np.float32), VOXEL, config, str(folder), progress=False)
    table = read_star(os.path.join(folder, "particles.star"))
    reference, _ = read_mrc(os.path.join(folder, "reference.mrc"))
    return table, ParticleDataset(table), reference.astype(np.float64)


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory):
    return simulated(tmp_path_factory.mktemp("clean"))


def test_noise_free_data_with_true_poses_give_the_map_back_to_nyquist(noise_free):
    table, dataset, reference = noise_free
    result = reconstruct_half_maps(dataset, table.euler_angles_degrees, table.origins_angstrom)
    _, fsc = fsc_curve(result.full, reference)
    assert fsc.min() > 0.95
    assert result.fsc.min() > 0.95 and result.resolution_pixels == pytest.approx(2.0)
    # Same units as the map the images were projected from (voxel values, not just shape).
    assert np.linalg.norm(result.full - reference) / np.linalg.norm(reference) < 0.05


@pytest.mark.parametrize("wrong", ["transposed rotation", "opposite shift", "no CTF"])
def test_the_wrong_conventions_fail(noise_free, wrong):
    table, dataset, reference = noise_free
    origins = -table.origins_angstrom if wrong == "opposite shift" else table.origins_angstrom
    angles = table.euler_angles_degrees
    if wrong == "transposed rotation":
        angles = -angles[:, ::-1]  # (rot, tilt, psi) -> (-psi, -tilt, -rot) is the transpose of A
    if wrong == "no CTF":
        dataset = ParticleDataset(dataclasses.replace(table, ctf=None))
    accumulator = accumulate(dataset, angles, origins, np.arange(len(dataset)))
    volume = accumulator.volume(1e-3 * accumulator.shell_mean_weight())
    # The right conventions give an error under 5 % (test above).
    assert np.linalg.norm(volume - reference) / np.linalg.norm(reference) > 0.3


def test_half_map_resolution_matches_the_full_map_against_the_truth(tmp_path):
    """Gold-standard relation: FSC_full,truth = sqrt(2 FSC_half / (1 + FSC_half)), so half maps at 0.143
    predict the full map's resolution against the truth at 0.5."""
    table, dataset, reference = simulated(tmp_path, num_particles=2000, snr=0.1)
    result = reconstruct_half_maps(dataset, table.euler_angles_degrees, table.origins_angstrom, seed=3)
    frequencies, fsc = fsc_curve(result.full, reference)
    truth = resolution_at(frequencies, fsc, 0.5)
    assert 2.2 < result.resolution_pixels < 6.0
    assert abs(result.resolution_pixels - truth) / truth < 0.1


def test_split_is_random_balanced_and_reproducible():
    halves = split_halves(11, seed=4)
    assert sorted(np.bincount(halves)[1:].tolist()) == [5, 6]
    np.testing.assert_array_equal(halves, split_halves(11, seed=4))
    assert not np.array_equal(split_halves(1000, 1), split_halves(1000, 2))
    with pytest.raises(ValueError, match="at least 2"):
        split_halves(1, 0)


def test_backproject_command_writes_the_maps_and_the_resolution(noise_free, tmp_path, capsys):
    table, _, reference = noise_free
    star = str(tmp_path / "subset.star")
    write_star(star, table.subset(np.arange(400)))
    outdir = str(tmp_path / "bp")
    assert main(["backproject", star, "-o", outdir, "--box", "24", "--no-progress"]) == 0
    volume, voxel = read_mrc(os.path.join(outdir, "volume_backprojected.mrc"))
    assert volume.shape == (BOX,) * 3 and voxel == pytest.approx(VOXEL)
    for name in ("half1.mrc", "half2.mrc", "fsc_halves.png"):
        assert os.path.getsize(os.path.join(outdir, name)) > 0
    with open(os.path.join(outdir, "resolution.json")) as handle:
        document = json.load(handle)
    assert document["particles_per_half"] == [200, 200]
    # Reconstructed at 24 px (2 Å/px): Nyquist is 4 Å.
    assert document["resolution_angstrom"] == pytest.approx(4.0, rel=0.05)
    _, fsc = fsc_curve(volume, reference)
    assert fsc[:12].min() > 0.99  # exact up to the 24 px Nyquist, shell 12 of the 32 px box
    assert "FSC=0.143 resolution" in capsys.readouterr().out


def test_backproject_keeps_the_split_of_the_file(noise_free, tmp_path):
    table, _, _ = noise_free
    subset = table.subset(np.arange(120))
    halves = np.where(np.arange(120) < 40, 1, 2)
    star = str(tmp_path / "split.star")
    write_star(star, dataclasses.replace(subset, extra_columns=dict(subset.extra_columns, rlnRandomSubset=halves)))
    outdir = str(tmp_path / "bp")
    assert main(["backproject", star, "-o", outdir, "--half-maps-rounds", "0", "--no-progress"]) == 0
    with open(os.path.join(outdir, "resolution.json")) as handle:
        document = json.load(handle)
    assert document["particles_per_half"] == [40, 80] and document["gold_standard_rounds"] == 0
    shells = len(document["fsc"])
    assert len(document["fsc_uncorrected"]) == len(document["fsc_phases_randomized"]) == shells
    assert 0 < document["phases_randomized_beyond_shell"] <= shells - 1
    assert document["resolution_pixels_uncorrected"] >= 2.0


def test_backproject_needs_poses(tmp_path, noise_free, capsys):
    table, _, _ = noise_free
    star = str(tmp_path / "no_poses.star")
    write_star(star, dataclasses.replace(table, euler_angles_degrees=None, origins_angstrom=None))
    assert main(["backproject", star, "-o", str(tmp_path / "never")]) == 2
    assert "has no poses" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "never")


def test_noise_substitution_takes_out_what_the_crop_carries_from_low_to_high_shells():
    """Half maps that share only shells ≤ 3 (a random field filling the padded box, as noise aligned alike
    does) and differ everywhere else: cropping and the gridding correction carry the shared part into the
    shells beyond, where the plain FSC claims agreement; the noise-substituted FSC does not."""
    box, padding = 32, 2
    size = box * padding
    generator = torch.Generator().manual_seed(0)

    def field(scale):
        noise = torch.randn((size, size, size), generator=generator, dtype=torch.float64)
        return fft3_centered(noise).reshape(-1) * scale

    halves = [FourierAccumulator(box, 1.0, padding) for _ in range(2)]
    shells, _ = halves[0]._shells()
    shared = torch.where(shells <= 3, field(1.0), 0.0)
    for half in halves:
        spectrum = shared + field(0.1)
        half.numerator = torch.stack([spectrum.real, spectrum.imag])
        half.weight = torch.ones(size ** 3, dtype=torch.float64)
    measured = noise_substituted_fsc(halves[0], halves[1], torch.full((box // 2 + 1,), 1e-3))
    frequencies = measured.frequencies
    assert resolution_at(frequencies, measured.fsc_uncorrected, 0.143) < 4.5   # shells 5-8 agree
    assert resolution_at(frequencies, measured.fsc, 0.143) > 6.0               # they share shells ≤ 3-4
    assert measured.randomized_beyond == 4
    np.testing.assert_array_equal(measured.fsc[:5], measured.fsc_uncorrected[:5])


def test_insertion_spreads_each_point_over_its_eight_corners_and_drops_those_off_the_grid():
    # A plain loop over points and corners, with points within a voxel of every face and beyond them.
    accumulator = FourierAccumulator(8, 1.0, 2)
    m = accumulator.size
    generator = torch.Generator().manual_seed(0)
    coords = torch.rand(300, 3, generator=generator, dtype=torch.float64) * (m + 2.0) - 1.5
    data = torch.complex(torch.randn(300, generator=generator, dtype=torch.float64),
                         torch.randn(300, generator=generator, dtype=torch.float64))
    weights = torch.rand(300, generator=generator, dtype=torch.float64)
    accumulator._splat(coords, data, weights)
    numerator, weight = np.zeros(m ** 3, dtype=complex), np.zeros(m ** 3)
    for point, value, w in zip(coords.numpy(), data.numpy(), weights.numpy()):
        base = np.floor(point).astype(int)
        for corner in np.ndindex(2, 2, 2):
            index = base + np.array(corner)
            if ((index >= 0) & (index < m)).all():
                factor = np.prod(np.where(np.array(corner) == 1, point - base, 1.0 - (point - base)))
                flat = (index[2] * m + index[1]) * m + index[0]
                numerator[flat] += factor * value
                weight[flat] += factor * w
    np.testing.assert_allclose(accumulator.numerator[0].numpy(), numerator.real, atol=1e-12)
    np.testing.assert_allclose(accumulator.numerator[1].numpy(), numerator.imag, atol=1e-12)
    np.testing.assert_allclose(accumulator.weight.numpy(), weight, atol=1e-12)
