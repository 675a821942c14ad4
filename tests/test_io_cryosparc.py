"""cryoSPARC .cs particle files: fields, units, paths and the pose convention relative to RELION."""
import os

import mrcfile
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryoai_core.io.cryosparc import read_cs, rodrigues
from cryoai_core.io.readers import read_particles
from cryoai_core.io.star import read_star, write_star
from cryoai_core.relion_euler import matrix_to_euler
from cryoai_core.rotations import euler_to_matrix
from test_io_star import relion31

CS_FIELDS = [("uid", "<u8"), ("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/shape", "<u4", (2,)),
             ("blob/psize_A", "<f4"), ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
             ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
             ("ctf/phase_shift_rad", "<f4"), ("alignments3D/pose", "<f4", (3,)), ("alignments3D/shift", "<f4", (2,))]


def save_cs(path, records):
    """np.save to an exact file name (np.save on a name would append .npy), as cryoSPARC does."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as handle:
        np.save(handle, records)
    return str(path)


def make_stack(path, count, box=16):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.zeros((count, box, box), dtype=np.float32))
        mrc.set_image_stack()
    return str(path)


def particle_records(count, rng, fields=CS_FIELDS):
    records = np.zeros(count, dtype=fields)
    records["uid"] = rng.integers(0, 2**62, count)
    records["blob/path"] = [b">J3/extract/mic1_particles.mrcs" if i % 2 else b"J3/extract/mic2_particles.mrcs"
                            for i in range(count)]
    records["blob/idx"] = np.arange(count) // 2
    records["blob/shape"] = 16
    records["blob/psize_A"] = 1.25
    if "ctf/df1_A" in records.dtype.names:
        records["ctf/accel_kv"], records["ctf/cs_mm"], records["ctf/amp_contrast"] = 300.0, 2.7, 0.07
        records["ctf/df1_A"] = rng.uniform(10000, 20000, count)
        records["ctf/df2_A"] = records["ctf/df1_A"] - 300.0
        records["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, count)
        records["ctf/phase_shift_rad"] = np.pi / 2
    if "alignments3D/pose" in records.dtype.names:
        records["alignments3D/pose"] = Rotation.random(count, random_state=7).as_rotvec()
        records["alignments3D/shift"] = rng.normal(0.0, 2.0, (count, 2))
    return records


@pytest.fixture
def project(tmp_path):
    make_stack(tmp_path / "J3" / "extract" / "mic1_particles.mrcs", 3)
    make_stack(tmp_path / "J3" / "extract" / "mic2_particles.mrcs", 3)
    return tmp_path


def test_fields_units_and_paths(project):
    records = particle_records(6, np.random.default_rng(0))
    path = save_cs(project / "J5" / "J5_particles.cs", records)
    table = read_cs(path)
    assert table.box == 16 and table.pixel_size_angstrom == pytest.approx(1.25)
    assert set(table.stack_files) == {str(project / "J3" / "extract" / "mic1_particles.mrcs"),
                                      str(project / "J3" / "extract" / "mic2_particles.mrcs")}
    for i in range(6):
        assert os.path.basename(table.stack_files[table.stack_ids[i]]) == f"mic{1 if i % 2 else 2}_particles.mrcs"
    np.testing.assert_array_equal(table.image_indices, [0, 0, 1, 1, 2, 2])  # blob/idx is 0-based
    np.testing.assert_allclose(table.ctf[:, 0], records["ctf/df1_A"])
    np.testing.assert_allclose(table.ctf[:, 1], records["ctf/df2_A"])
    np.testing.assert_allclose(table.ctf[:, 2], np.degrees(records["ctf/df_angle_rad"].astype(np.float64)),
                               rtol=1e-6)
    np.testing.assert_allclose(table.ctf[:, 3:], [[300.0, 2.7, 0.07, 90.0, 0.0]] * 6, rtol=1e-6)
    np.testing.assert_allclose(table.origins_angstrom, records["alignments3D/shift"] * 1.25, rtol=1e-6)
    same = read_particles(save_cs(project / "elsewhere" / "p.cs", records), root=str(project))
    assert same.stack_files == table.stack_files


def test_pose_is_the_transposed_rodrigues_matrix(project):
    records = particle_records(6, np.random.default_rng(1))
    table = read_cs(save_cs(project / "J5" / "p.cs", records))
    expected = Rotation.from_rotvec(records["alignments3D/pose"].astype(np.float64)).as_matrix().transpose(0, 2, 1)
    matrices = euler_to_matrix(torch.from_numpy(table.euler_angles_degrees)).numpy()
    np.testing.assert_allclose(matrices, expected, atol=1e-6)


def test_rotation_about_z_is_an_in_plane_angle():
    # R(v) = Rz(θ), so A = Rz(θ)ᵀ = [[c, s, 0], [-s, c, 0], [0, 0, 1]]: RELION's matrix of rot + psi = θ, tilt 0.
    theta = np.radians(30.0)
    matrix = rodrigues(np.array([0.0, 0.0, theta]))
    np.testing.assert_allclose(matrix, [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                                        [0, 0, 1]], atol=1e-12)
    angles = matrix_to_euler(matrix.T)
    np.testing.assert_allclose(angles, [0.0, 0.0, 30.0], atol=1e-9)


@pytest.mark.parametrize("tilt", [0.0, 180.0, 1e-12, 37.0, 90.0])
def test_euler_decomposition_inverts_relion_matrices(tilt):
    angles = np.array([[25.0, tilt, -70.0], [-160.0, tilt, 100.0]])
    matrices = euler_to_matrix(torch.from_numpy(angles)).numpy()
    recovered = matrix_to_euler(matrices)
    np.testing.assert_allclose(euler_to_matrix(torch.from_numpy(recovered)).numpy(), matrices, atol=1e-9)
    assert (recovered[:, 1] >= 0).all() and (recovered[:, 1] <= 180).all()


def test_cs_to_star_round_trip_keeps_poses_and_ctf(project):
    table = read_cs(save_cs(project / "J5" / "p.cs", particle_records(6, np.random.default_rng(2))))
    star = str(project / "converted.star")
    write_star(star, table)
    back = read_star(star)
    assert [back.image_name(i) for i in range(6)] == [table.image_name(i) for i in range(6)]
    np.testing.assert_allclose(back.ctf, table.ctf, atol=1e-5)
    np.testing.assert_allclose(euler_to_matrix(torch.from_numpy(back.euler_angles_degrees)).numpy(),
                               euler_to_matrix(torch.from_numpy(table.euler_angles_degrees)).numpy(), atol=1e-6)
    np.testing.assert_allclose(back.origins_angstrom, table.origins_angstrom, atol=1e-5)


def test_without_ctf_or_poses(project):
    fields = [f for f in CS_FIELDS if not f[0].startswith(("ctf/", "alignments3D/"))]
    table = read_cs(save_cs(project / "J5" / "bare.cs", particle_records(4, np.random.default_rng(3), fields)))
    assert table.ctf is None and table.euler_angles_degrees is None and table.origins_angstrom is None


def test_bad_inputs(project):
    with pytest.raises(FileNotFoundError, match="none.cs"):
        read_cs(str(project / "none.cs"))
    junk = project / "junk.cs"
    junk.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a cryoSPARC"):
        read_cs(str(junk))
    with pytest.raises(ValueError, match="contains no particles"):
        read_cs(save_cs(project / "J5" / "empty.cs", np.zeros(0, dtype=CS_FIELDS)))
    records = particle_records(6, np.random.default_rng(4))
    records["blob/idx"][3] = 3
    with pytest.raises(ValueError,
                       match=r"image 000004@.*\(particle 4 in file order\) is out of range: the stack holds only 3 images"):
        read_cs(save_cs(project / "J5" / "range.cs", records))
    records = particle_records(6, np.random.default_rng(4))
    records["blob/path"][0] = b"J3/extract/lost.mrcs"
    with pytest.raises(FileNotFoundError, match="lost.mrcs"):
        read_cs(save_cs(project / "J5" / "lost.cs", records))


@pytest.mark.parametrize("sizes, message", [((1.25, 1.5), "different pixel sizes"), ((1.25, 0.0), "positive")])
def test_pixel_sizes_are_checked_like_star_files(project, tmp_path, sizes, message):
    records = particle_records(6, np.random.default_rng(4))
    records["blob/psize_A"][3:] = sizes[1]
    records["blob/psize_A"][:3] = sizes[0]
    with pytest.raises(ValueError, match=message):
        read_cs(save_cs(project / "J5" / "mixed.cs", records))
    star = relion31([f"{i + 1:06d}@mic1_particles.mrcs" for i in range(3)], pixel_size=sizes[1],
                    groups=[1, 2, 1], voltages=(300.0, 300.0))
    make_stack(tmp_path / "star" / "mic1_particles.mrcs", 3)
    path = tmp_path / "star" / "mixed.star"
    path.write_text(star.replace(f"2 opticsGroup2 {sizes[1]}", f"2 opticsGroup2 {sizes[0]}"))
    with pytest.raises(ValueError, match=message):
        read_star(str(path))
