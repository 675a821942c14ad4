"""Simulations with real pose, shift and defocus tables (star, .cs, cryoDRGN pkl) and junk particles.

Tables are written here from known poses; the simulated star file and images are read back and checked
with the independent formulas of ``reference_formulas`` (RELION's Euler matrix, Gaussian blob projections).
"""
import os
import pickle

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoai_core.io.mrc import open_stack
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.pose_tables import read_defocus_table, read_pose_table
from cryoai_core.io.star import read_star, write_star
from cryoai_core.simulate import JUNK_COLUMN, SimulationConfig, simulate
from reference_formulas import blob_volume, relion_matrix
from test_simulate import BLOBS, particle_image, relative_error

BOX = 32
VOXEL = 1.5
TABLE_BOX = 256
"""Box of the source data set the tables describe: shifts scale by BOX / TABLE_BOX."""


def known_poses(count=5, seed=0):
    rng = np.random.default_rng(seed)
    angles = np.column_stack([rng.uniform(-180, 180, count), rng.uniform(5, 175, count),
                              rng.uniform(-180, 180, count)])
    fractions = rng.uniform(-0.05, 0.05, (count, 2))
    defocus = np.column_stack([rng.uniform(8000, 20000, count), rng.uniform(8000, 20000, count),
                               rng.uniform(0, 180, count), np.zeros(count)])
    return angles, fractions, defocus


def write_pose_pkl(path, angles, fractions):
    matrices = np.stack([relion_matrix(*row) for row in angles])
    with open(path, "wb") as handle:
        pickle.dump((matrices, fractions.astype(np.float32)), handle)


def write_ctf_pkl(path, defocus, pixel=2.0):
    count = len(defocus)
    array = np.column_stack([np.full(count, TABLE_BOX), np.full(count, pixel), defocus[:, 0], defocus[:, 1],
                             defocus[:, 2], np.full(count, 300.0), np.full(count, 2.7), np.full(count, 0.1),
                             defocus[:, 3]]).astype(np.float32)
    with open(path, "wb") as handle:
        pickle.dump(array, handle)


def write_pose_star(path, angles, fractions, defocus, pixel=2.0):
    count = len(angles)
    ctf = np.column_stack([defocus[:, :3], np.full(count, 300.0), np.full(count, 2.7), np.full(count, 0.1),
                           defocus[:, 3], np.zeros(count)])
    table = ParticleTable(stack_files=(str(path) + ".absent.mrcs",), stack_ids=np.zeros(count, dtype=np.int32),
                          image_indices=np.arange(count), pixel_size_angstrom=pixel, box=TABLE_BOX, ctf=ctf,
                          euler_angles_degrees=angles, origins_angstrom=fractions * TABLE_BOX * pixel)
    write_star(str(path), table)


def write_pose_cs(path, angles, fractions, defocus, pixel=2.0):
    count = len(angles)
    fields = [("blob/path", "S32"), ("blob/idx", "u4"), ("blob/shape", "u4", (2,)), ("blob/psize_A", "f4"),
              ("alignments3D/pose", "f4", (3,)), ("alignments3D/shift", "f4", (2,)), ("ctf/df1_A", "f4"),
              ("ctf/df2_A", "f4"), ("ctf/df_angle_rad", "f4"), ("ctf/accel_kv", "f4"), ("ctf/cs_mm", "f4"),
              ("ctf/amp_contrast", "f4")]
    records = np.zeros(count, dtype=fields)
    records["blob/shape"] = TABLE_BOX
    records["blob/psize_A"] = pixel
    # cryoSPARC's pose v has Rodrigues matrix R(v) = Aᵀ (cryoai_core.io.cryosparc).
    records["alignments3D/pose"] = Rotation.from_matrix(
        np.stack([relion_matrix(*row).T for row in angles])).as_rotvec()
    records["alignments3D/shift"] = fractions * TABLE_BOX
    records["ctf/df1_A"], records["ctf/df2_A"] = defocus[:, 0], defocus[:, 1]
    records["ctf/df_angle_rad"] = np.radians(defocus[:, 2])
    records["ctf/accel_kv"], records["ctf/cs_mm"], records["ctf/amp_contrast"] = 300.0, 2.7, 0.1
    with open(path, "wb") as handle:
        np.save(handle, records)


@pytest.fixture
def tables(tmp_path):
    angles, fractions, defocus = known_poses()
    paths = {"pkl": str(tmp_path / "poses.pkl"), "star": str(tmp_path / "poses.star"),
             "cs": str(tmp_path / "poses.cs"), "ctf": str(tmp_path / "ctf.pkl")}
    write_pose_pkl(paths["pkl"], angles, fractions)
    write_pose_star(paths["star"], angles, fractions, defocus)
    write_pose_cs(paths["cs"], angles, fractions, defocus)
    write_ctf_pkl(paths["ctf"], defocus)
    return paths, angles, fractions, defocus


def simulate_from(tmp_path, name, count=12, **options):
    config = SimulationConfig(**{"num_particles": count, "seed": 5, **options})
    outdir = str(tmp_path / name)
    simulate(blob_volume(BLOBS).astype(np.float32), VOXEL, config, outdir, progress=False)
    table = read_star(os.path.join(outdir, "particles.star"))
    images = np.asarray(open_stack(os.path.join(outdir, "particles.mrcs")), dtype=np.float64)
    return table, images


@pytest.mark.parametrize("kind", ["pkl", "star", "cs"])
def test_every_table_format_gives_the_same_relion_poses_and_box_fractions(tables, kind):
    paths, angles, fractions, _ = tables
    read = read_pose_table(paths[kind])
    expected = np.stack([relion_matrix(*row) for row in angles])
    np.testing.assert_allclose(read.rotations, expected, atol=1e-5)
    np.testing.assert_allclose(read.shift_fractions, fractions, atol=1e-5)


@pytest.mark.parametrize("kind", ["ctf", "star", "cs"])
def test_every_table_format_gives_the_same_defocus(tables, kind):
    paths, _, _, defocus = tables
    np.testing.assert_allclose(read_defocus_table(paths[kind]).defocus, defocus, rtol=1e-5, atol=1e-3)


def test_simulated_particles_have_table_poses_shifts_rescaled_to_the_box_and_matching_images(tmp_path, tables):
    paths, angles, fractions, _ = tables
    table, images = simulate_from(tmp_path, "pkl", poses_from=paths["pkl"], apply_ctf=False)
    true_matrices = np.stack([relion_matrix(*row) for row in angles])
    drawn = []
    for row_angles, origin, image in zip(table.euler_angles_degrees, table.origins_angstrom, images):
        matrix = relion_matrix(*row_angles)
        row = int(np.argmin(np.abs(true_matrices - matrix).sum(axis=(1, 2))))
        assert np.abs(true_matrices[row] - matrix).max() < 1e-5
        np.testing.assert_allclose(origin, fractions[row] * BOX * VOXEL, atol=1e-5)
        assert relative_error(image, particle_image(BLOBS, matrix, origin)) < 0.01
        drawn.append(row)
    assert len(set(drawn)) > 1


def test_defocus_rows_come_from_the_table_and_keep_their_pose_when_from_one_file(tmp_path, tables):
    paths, angles, _, defocus = tables
    table, _ = simulate_from(tmp_path, "star", poses_from=paths["star"], defocus_from=paths["star"],
                             voltage_kv=200.0)
    true_matrices = np.stack([relion_matrix(*row) for row in angles])
    for row_angles, ctf in zip(table.euler_angles_degrees, table.ctf):
        row = int(np.argmin(np.abs(true_matrices - relion_matrix(*row_angles)).sum(axis=(1, 2))))
        np.testing.assert_allclose(ctf[[0, 1, 2, 6]], defocus[row], rtol=1e-5, atol=1e-3)
        assert ctf[3] == pytest.approx(200.0)
    other, _ = simulate_from(tmp_path, "ctf", defocus_from=paths["ctf"])
    assert all(any(np.allclose(ctf[:2], row[:2], rtol=1e-5) for row in defocus) for ctf in other.ctf)


def test_junk_particles_are_flagged_pure_noise_and_leave_the_others_unchanged(tmp_path):
    clean, clean_images = simulate_from(tmp_path, "plain", count=40, snr=0.5, apply_ctf=False)
    junk, junk_images = simulate_from(tmp_path, "junk", count=40, snr=0.5, apply_ctf=False, junk_fraction=0.25)
    flags = np.asarray(junk.extra_columns[JUNK_COLUMN])
    assert flags.sum() == 10 and set(np.unique(flags)) == {0, 1}
    assert JUNK_COLUMN not in clean.extra_columns
    np.testing.assert_allclose(junk_images[flags == 0], clean_images[flags == 0], atol=1e-6)
    _, noise_free = simulate_from(tmp_path, "noise_free", count=40, apply_ctf=False)
    # The same noise stream: a junk image is exactly the noise the particle image would have carried.
    noise = clean_images - noise_free
    np.testing.assert_allclose(junk_images[flags == 1], noise[flags == 1], atol=1e-4)
    assert abs(junk_images[flags == 1].std() / noise[flags == 0].std() - 1) < 0.05


def test_bad_tables_are_rejected_before_anything_is_written(tmp_path, tables):
    paths, angles, fractions, _ = tables
    matrices = np.stack([relion_matrix(*row) for row in angles])
    cases = {"short.pkl": (matrices, fractions[:3]), "scaled.pkl": (2 * matrices, fractions),
             "flat.pkl": (matrices.reshape(-1, 9), fractions)}
    for name, content in cases.items():
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(content, handle)
    (tmp_path / "text.pkl").write_text("not a pickle")
    (tmp_path / "poses.txt").write_text("")
    expectations = [
        ({"poses_from": str(tmp_path / "short.pkl")}, ValueError, "5 rotations but 3 shifts"),
        ({"poses_from": str(tmp_path / "scaled.pkl")}, ValueError, "not rotations"),
        ({"poses_from": str(tmp_path / "flat.pkl")}, ValueError, r"shape \(N, 3, 3\)"),
        ({"poses_from": str(tmp_path / "text.pkl")}, ValueError, "cannot be read as a pickle"),
        ({"poses_from": str(tmp_path / "poses.txt")}, ValueError, "unknown table type"),
        ({"poses_from": str(tmp_path / "absent.pkl")}, FileNotFoundError, "table not found"),
        ({"poses_from": paths["ctf"]}, ValueError, "not a cryoDRGN pose pkl"),
        ({"defocus_from": paths["pkl"]}, ValueError, "pose pkl, not a CTF pkl"),
    ]
    for options, error, message in expectations:
        with pytest.raises(error, match=message):
            simulate_from(tmp_path, "never", **options)
        assert not os.path.exists(tmp_path / "never")


def test_star_without_poses_is_rejected(tmp_path):
    table = ParticleTable(stack_files=(str(tmp_path / "a.mrcs"),), stack_ids=np.zeros(2, dtype=np.int32),
                          image_indices=np.arange(2), pixel_size_angstrom=1.0, box=16)
    write_star(str(tmp_path / "plain.star"), table)
    with pytest.raises(ValueError, match="has no poses"):
        read_pose_table(str(tmp_path / "plain.star"))
    with pytest.raises(ValueError, match="has no CTF"):
        read_defocus_table(str(tmp_path / "plain.star"))


@pytest.mark.parametrize("options, message", [
    ({"junk_fraction": 0.2}, "needs an SNR"),
    ({"junk_fraction": 1.0, "snr": 0.1}, "junk fraction"),
    ({"poses_from": "x.pkl", "shift_sigma_angstrom": 2.0}, "either a pose table or a shift sigma"),
    ({"defocus_from": "x.pkl", "apply_ctf": False}, "needs the CTF"),
])
def test_bad_combinations_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(num_particles=4, **options)


def test_cli_flags_reach_the_simulation(tmp_path, tables):
    import argparse

    from cryoai_core.cli import simulate as simulate_cli
    from cryoai_core.io.mrc import write_mrc

    paths, _, _, _ = tables
    map_path = str(tmp_path / "map.mrc")
    write_mrc(map_path, blob_volume(BLOBS, box=16, voxel=3.0).astype(np.float32), 3.0)
    parser = argparse.ArgumentParser()
    simulate_cli.add_args(parser)
    outdir = str(tmp_path / "cli")
    args = parser.parse_args([map_path, "-o", outdir, "-n", "10", "--snr", "1", "--poses-from", paths["cs"],
                              "--defocus-from", paths["ctf"], "--junk-fraction", "0.3", "--no-progress"])
    assert simulate_cli.main(args) == 0
    table = read_star(os.path.join(outdir, "particles.star"))
    assert int(np.sum(table.extra_columns[JUNK_COLUMN])) == 3
    assert np.abs(table.origins_angstrom).max() <= 0.05 * 16 * 3.0 + 1e-6
