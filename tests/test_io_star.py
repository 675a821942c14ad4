"""RELION star files 3.0 and 3.1: poses, CTF, optics groups, paths, round trips and input errors."""
import os

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.readers import read_particles
from cryoai_core.io import star as star_module
from cryoai_core.io.star import read_star, read_star_poses, require_ctf, write_star
from cryoai_core.rotations import euler_to_matrix

ANGLES = np.array([[10.0, 20.0, 30.0], [-120.5, 95.25, 170.0], [0.0, 0.0, 45.0]])
ORIGINS_ANGSTROM = np.array([[4.0, -2.0], [0.5, 6.0], [-3.0, 0.0]])
DEFOCUS = np.array([[15000.0, 14000.0, 30.0], [20000.0, 19500.0, -45.0], [12000.0, 12000.0, 0.0]])


def make_stack(path, count, box=16, rows=None, pixel_size=2.0, value=None):
    """A stack of ``count`` images whose pixel values encode their 0-based index (mrcfile directly)."""
    rows = box if rows is None else rows
    images = np.stack([np.full((rows, box), float(i) if value is None else value) for i in range(count)])
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(images.astype(np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return str(path)


def write_text(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    return str(path)


def relion30(names, origin_columns=True, ctf=True, extra=""):
    """RELION 3.0 text: pixel size 5 µm / 25000x = 2 Å, origins in pixels (Å / 2)."""
    labels = ["rlnImageName", "rlnDetectorPixelSize", "rlnMagnification", "rlnAngleRot", "rlnAngleTilt",
              "rlnAnglePsi"]
    if origin_columns:
        labels += ["rlnOriginX", "rlnOriginY"]
    if ctf:
        labels += ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnVoltage", "rlnSphericalAberration",
                   "rlnAmplitudeContrast"]
    rows = []
    for i, name in enumerate(names):
        values = [name, "5.0", "25000", *map(str, ANGLES[i])]
        if origin_columns:
            values += [str(v) for v in ORIGINS_ANGSTROM[i] / 2.0]
        if ctf:
            values += [*map(str, DEFOCUS[i]), "300", "2.7", "0.1"]
        rows.append(" ".join(values))
    header = "\n".join(f"_{label} #{n}" for n, label in enumerate(labels, 1))
    return f"\ndata_images\n\nloop_\n{header}\n{extra}" + "\n".join(rows) + "\n"


def relion31(names, pixel_size=2.0, box=16, groups=None, voltages=(300.0,), ctf_columns=None):
    """RELION 3.1 text with optics groups and origins in Å."""
    groups = [1] * len(names) if groups is None else groups
    optics = "\n".join(f"{g} opticsGroup{g} {pixel_size} {box} 2 {v} 2.7 0.1"
                       for g, v in enumerate(voltages, 1))
    ctf_columns = ctf_columns or ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
    labels = ["rlnImageName", "rlnOpticsGroup", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
              "rlnOriginXAngst", "rlnOriginYAngst", *ctf_columns, "rlnClassNumber"]
    rows = []
    for i, name in enumerate(names):
        ctf = {"rlnDefocusU": DEFOCUS[i, 0], "rlnDefocusV": DEFOCUS[i, 1], "rlnDefocusAngle": DEFOCUS[i, 2]}
        values = [name, str(groups[i]), *map(str, ANGLES[i]), *map(str, ORIGINS_ANGSTROM[i]),
                  *(str(ctf[c]) for c in ctf_columns), str(i + 1)]
        rows.append(" ".join(values))
    header = "\n".join(f"_{label} #{n}" for n, label in enumerate(labels, 1))
    return ("# version 30001\n\ndata_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnOpticsGroupName #2\n"
            "_rlnImagePixelSize #3\n_rlnImageSize #4\n_rlnImageDimensionality #5\n_rlnVoltage #6\n"
            f"_rlnSphericalAberration #7\n_rlnAmplitudeContrast #8\n{optics}\n\n"
            f"# version 30001\n\ndata_particles\n\nloop_\n{header}\n" + "\n".join(rows) + "\n")


NAMES = ["000002@stacks/a.mrcs", "1@stacks/a.mrcs", "3@stacks/b.mrcs"]


@pytest.fixture
def stacks(tmp_path):
    make_stack(tmp_path / "stacks" / "a.mrcs", 2)
    make_stack(tmp_path / "stacks" / "b.mrcs", 3)
    return tmp_path


def test_relion30_and_31_give_the_same_physical_particles(stacks):
    old = read_star(write_text(stacks / "old.star", relion30(NAMES)))
    new = read_star(write_text(stacks / "new.star", relion31(NAMES)))
    for table in (old, new):
        assert table.pixel_size_angstrom == pytest.approx(2.0)
        assert table.box == 16
        assert table.stack_files == (str(stacks / "stacks" / "a.mrcs"), str(stacks / "stacks" / "b.mrcs"))
        np.testing.assert_array_equal(table.stack_ids, [0, 0, 1])
        np.testing.assert_array_equal(table.image_indices, [1, 0, 2])
        np.testing.assert_allclose(table.euler_angles_degrees, ANGLES)
        np.testing.assert_allclose(table.origins_angstrom, ORIGINS_ANGSTROM)
        np.testing.assert_allclose(table.ctf[:, :3], DEFOCUS)
        np.testing.assert_allclose(table.ctf[:, 3:], [[300.0, 2.7, 0.1, 0.0, 0.0]] * 3)
    assert new.optics["rlnVoltage"] == 300.0
    np.testing.assert_array_equal(new.extra_columns["rlnClassNumber"], [1, 2, 3])
    assert old.image_name(0) == "000002@" + str(stacks / "stacks" / "a.mrcs")


def test_origins_default_to_zero_and_pixel_size_column(stacks):
    text = relion30(NAMES, origin_columns=False).replace("rlnDetectorPixelSize", "rlnPixelSize") \
        .replace(" 5.0 ", " 1.5 ").replace("_rlnMagnification #3\n", "").replace(" 25000 ", " ")
    table = read_star(write_text(stacks / "nooffsets.star", text))
    assert table.pixel_size_angstrom == pytest.approx(1.5)
    np.testing.assert_array_equal(table.origins_angstrom, np.zeros((3, 2)))


def test_write_read_round_trip_with_poses_ctf_and_optics_groups(stacks):
    ctf = np.zeros((3, 8))
    ctf[:, :3] = DEFOCUS
    ctf[:, 3:6] = [[300.0, 2.7, 0.07], [200.0, 2.7, 0.1], [300.0, 2.7, 0.07]]
    ctf[:, 6] = [0.0, 45.0, 90.0]
    ctf[:, 7] = [0.0, 10.0, 0.0]
    table = ParticleTable(
        stack_files=(str(stacks / "stacks" / "a.mrcs"), str(stacks / "stacks" / "b.mrcs")),
        stack_ids=np.array([1, 0, 1], dtype=np.int32), image_indices=np.array([2, 1, 0]),
        pixel_size_angstrom=2.0, box=16, ctf=ctf, euler_angles_degrees=ANGLES, origins_angstrom=ORIGINS_ANGSTROM,
        extra_columns={"rlnMicrographName": np.array(["m1.mrc", "m2.mrc", "m1.mrc"], dtype=object)})
    path = str(stacks / "out" / "particles.star")
    os.makedirs(os.path.dirname(path))
    write_star(path, table)
    text = open(path).read()
    assert text.count("# version 30001") == 2
    blocks = starfile.read(path, always_dict=True)  # what RELION-reading tools see
    optics, particles = blocks["optics"], blocks["particles"]
    assert len(optics) == 2 and set(optics["rlnImageDimensionality"]) == {2}
    assert list(particles["rlnImageName"]) == ["000003@../stacks/b.mrcs", "000002@../stacks/a.mrcs",
                                               "000001@../stacks/b.mrcs"]  # relative, as RELION writes them
    np.testing.assert_allclose(particles["rlnOriginXAngst"], ORIGINS_ANGSTROM[:, 0])
    back = read_star(path)
    assert back.stack_files == (table.stack_files[1], table.stack_files[0])
    np.testing.assert_array_equal(back.image_indices, table.image_indices)
    np.testing.assert_allclose(back.ctf, ctf, atol=1e-6)
    np.testing.assert_allclose(back.euler_angles_degrees, ANGLES, atol=1e-6)
    np.testing.assert_allclose(back.origins_angstrom, ORIGINS_ANGSTROM, atol=1e-6)
    assert list(back.extra_columns["rlnMicrographName"]) == ["m1.mrc", "m2.mrc", "m1.mrc"]


def test_written_paths_are_relative_inside_the_star_folder(stacks):
    table = read_star(write_text(stacks / "in.star", relion31(NAMES)))
    path = str(stacks / "copy.star")
    write_star(path, table)
    assert starfile.read(path, always_dict=True)["particles"]["rlnImageName"][0] == "000002@stacks/a.mrcs"
    back = read_star(path)
    assert back.stack_files == table.stack_files
    write_star(path, table, relative_to=str(stacks / "stacks"))
    assert starfile.read(path, always_dict=True)["particles"]["rlnImageName"][0] == "000002@a.mrcs"
    elsewhere = ParticleTable(stack_files=("/cryoai-no-such-root/a.mrcs",), stack_ids=np.zeros(1, np.int32),
                              image_indices=np.zeros(1, np.int64), pixel_size_angstrom=2.0, box=16)
    write_star(path, elsewhere)  # nothing but "/" in common: a relative path would not survive a move
    assert starfile.read(path, always_dict=True)["particles"]["rlnImageName"][0] == "000001@" + \
        elsewhere.stack_files[0]


def test_written_star_survives_moving_its_project(stacks):
    """Stars written next to their stacks' folder name them with ``../``: the project folder can move."""
    table = read_star(write_text(stacks / "in.star", relion31(NAMES)))
    os.makedirs(stacks / "Job" / "out")
    write_star(str(stacks / "Job" / "out" / "particles.star"), table)
    assert starfile.read(str(stacks / "Job" / "out" / "particles.star"),
                         always_dict=True)["particles"]["rlnImageName"][0] == "000002@../../stacks/a.mrcs"
    moved = stacks.parent / f"{stacks.name}_moved"
    os.rename(stacks, moved)
    back = read_star(str(moved / "Job" / "out" / "particles.star"))
    assert back.stack_files == tuple(str(moved / "stacks" / os.path.basename(f)) for f in table.stack_files)


def test_table_without_ctf_writes_optics_constants(stacks):
    table = ParticleTable(stack_files=(str(stacks / "stacks" / "a.mrcs"),), stack_ids=np.zeros(2, np.int32),
                          image_indices=np.arange(2), pixel_size_angstrom=2.0, box=16,
                          optics={"rlnVoltage": 200.0, "rlnSphericalAberration": 2.0, "rlnAmplitudeContrast": 0.1})
    path = str(stacks / "noctf.star")
    write_star(path, table)
    back = read_star(path)
    assert back.ctf is None and not back.has_poses
    assert back.optics["rlnVoltage"] == 200.0
    with pytest.raises(ValueError, match="missing column.*rlnDefocusU, rlnDefocusV, rlnDefocusAngle"):
        require_ctf(back, path)


def test_relative_paths_from_star_folder_root_and_project(tmp_path):
    make_stack(tmp_path / "project" / "Extract" / "job002" / "a.mrcs", 2)
    make_stack(tmp_path / "project" / "Extract" / "job002" / "b.mrcs", 3)
    names = [n.replace("stacks/", "Extract/job002/") for n in NAMES]
    star = write_text(tmp_path / "project" / "Refine3D" / "job005" / "run_data.star", relion31(names))
    table = read_star(star)  # RELION project layout: paths relative to the project folder
    assert table.stack_files[0] == str(tmp_path / "project" / "Extract" / "job002" / "a.mrcs")
    elsewhere = write_text(tmp_path / "other" / "p.star", relion31([n.replace("stacks/", "") for n in NAMES]))
    assert read_particles(elsewhere, root=str(tmp_path / "project" / "Extract" / "job002")).stack_files \
        == table.stack_files
    absolute = write_text(tmp_path / "abs.star", relion31([n.replace("stacks/", os.path.dirname(table.stack_files[0])
                                                                       + "/") for n in NAMES]))
    assert read_star(absolute).stack_files == table.stack_files


def test_missing_stack_names_the_file(stacks):
    star = write_text(stacks / "missing.star", relion31(["1@stacks/a.mrcs", "1@stacks/c.mrcs", "1@stacks/b.mrcs"]))
    with pytest.raises(FileNotFoundError, match=str(stacks / "stacks" / "c.mrcs")):
        read_star(star)
    with pytest.raises(FileNotFoundError, match="nothere.star"):
        read_star(str(stacks / "nothere.star"))


def test_box_errors(tmp_path):
    make_stack(tmp_path / "s16.mrcs", 3, box=16)
    make_stack(tmp_path / "s18.mrcs", 3, box=18)
    make_stack(tmp_path / "rect.mrcs", 3, box=16, rows=12)
    make_stack(tmp_path / "odd.mrcs", 3, box=15)
    mixed = write_text(tmp_path / "mixed.star", relion31(["1@s16.mrcs", "2@s18.mrcs", "3@s16.mrcs"]))
    with pytest.raises(ValueError, match="different box sizes"):
        read_star(mixed)
    with pytest.raises(ValueError, match="square"):
        read_star(write_text(tmp_path / "rect.star", relion31(["1@rect.mrcs", "2@rect.mrcs", "3@rect.mrcs"])))
    with pytest.raises(ValueError, match="odd"):
        read_star(write_text(tmp_path / "odd.star", relion31(["1@odd.mrcs", "2@odd.mrcs", "3@odd.mrcs"], box=15)))
    wrong_size = write_text(tmp_path / "size.star", relion31(["1@s18.mrcs", "2@s18.mrcs", "3@s18.mrcs"], box=16))
    with pytest.raises(ValueError, match="rlnImageSize"):
        read_star(wrong_size)


def test_index_errors(stacks):
    with pytest.raises(ValueError,
                       match=r"image 000004@.*b.mrcs \(particle 3 in file order\) is out of range.*only 3 images"):
        read_star(write_text(stacks / "range.star", relion31(["1@stacks/a.mrcs", "2@stacks/a.mrcs",
                                                              "4@stacks/b.mrcs"])))
    with pytest.raises(ValueError, match="start at 1"):
        read_star(write_text(stacks / "zero.star", relion31(["0@stacks/a.mrcs", "2@stacks/a.mrcs",
                                                             "1@stacks/b.mrcs"])))


def test_missing_ctf_columns_give_no_ctf_and_a_clear_requirement(stacks):
    star = write_text(stacks / "partial.star", relion31(NAMES, ctf_columns=["rlnDefocusU", "rlnDefocusAngle"]))
    table = read_star(star)
    assert table.ctf is None and table.has_poses
    with pytest.raises(ValueError, match="missing column.*rlnDefocusV"):
        require_ctf(table, star)
    assert "rlnDefocusU" in table.extra_columns  # kept for writing
    require_ctf(read_star(write_text(stacks / "full.star", relion31(NAMES))), "full.star")
    old = read_star(write_text(stacks / "old_noctf.star", relion30(NAMES, ctf=False)))
    with pytest.raises(ValueError, match="rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage"):
        require_ctf(old, "old_noctf.star")


def test_empty_star_and_unknown_group(stacks):
    with pytest.raises(ValueError, match="contains no particles"):
        read_star(write_text(stacks / "empty.star", relion31([])))
    with pytest.raises(ValueError, match="contains no particles"):
        read_star(write_text(stacks / "blank.star", ""))
    bad_group = write_text(stacks / "group.star", relion31(NAMES, groups=[1, 2, 1]))
    with pytest.raises(ValueError, match=r"optics group\(s\) \[2\]"):
        read_star(bad_group)


def test_several_optics_groups_merge_per_particle(stacks):
    table = read_star(write_text(stacks / "groups.star", relion31(NAMES, groups=[2, 1, 2], voltages=(300.0, 200.0))))
    np.testing.assert_allclose(table.ctf[:, 3], [200.0, 300.0, 200.0])
    assert "rlnVoltage" not in table.optics
    assert not table.ctf.is_constant(3) and table.ctf.is_constant(4)  # two voltages, one Cs


def test_one_optics_groups_constants_are_held_once(stacks):
    table = read_star(write_text(stacks / "one.star", relion31(NAMES)))
    assert [table.ctf.is_constant(index) for index in range(8)] == [False] * 3 + [True] * 5
    assert table.ctf.nbytes == 3 * 8 * len(NAMES) + 5 * 8


def test_unknown_extension_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown particle file type '.txt'"):
        read_particles(str(tmp_path / "particles.txt"))


def test_simulated_star_carries_the_true_poses(tmp_path):
    from cryoai_core.simulate import SimulationConfig, simulate

    volume = np.zeros((16, 16, 16), dtype=np.float32)
    volume[5:11, 6:9, 4:12] = 1.0
    config = SimulationConfig(num_particles=12, shift_sigma_angstrom=3.0, seed=3)
    truth = simulate(volume, 2.0, config, str(tmp_path / "sim"), progress=False)
    table = read_star(str(tmp_path / "sim" / "particles.star"))
    assert table.box == 16 and table.pixel_size_angstrom == pytest.approx(2.0)
    matrices = euler_to_matrix(torch.from_numpy(table.euler_angles_degrees))
    expected = euler_to_matrix(torch.from_numpy(truth.euler_angles_degrees))
    torch.testing.assert_close(matrices, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(table.origins_angstrom, truth.origins_angstrom, atol=1e-5)
    np.testing.assert_allclose(table.ctf, truth.ctf, atol=1e-5)
    with mrcfile.open(table.stack_files[0]) as mrc:
        assert mrc.data.shape == (12, 16, 16)


@pytest.mark.parametrize("chunk_rows", [1, 2, 10_000])
def test_optics_groups_are_the_same_whatever_the_chunk_of_rows(stacks, monkeypatch, chunk_rows):
    """The distinct CTF constants are gathered chunk by chunk; each particle's group holds its own constants."""
    monkeypatch.setattr(star_module, "STAR_CHUNK_ROWS", chunk_rows)
    ctf = np.zeros((3, 8))
    ctf[:, :3] = DEFOCUS
    ctf[:, 3:6] = [[300.0, 2.7, 0.07], [200.0, 2.7, 0.1], [300.0, 2.7, 0.07]]
    table = ParticleTable(
        stack_files=(str(stacks / "stacks" / "a.mrcs"), str(stacks / "stacks" / "b.mrcs")),
        stack_ids=np.array([1, 0, 1], dtype=np.int32), image_indices=np.array([2, 1, 0]),
        pixel_size_angstrom=2.0, box=16, ctf=ctf)
    path = str(stacks / "groups_out.star")
    write_star(path, table)
    blocks = starfile.read(path, always_dict=True)
    optics = blocks["optics"].set_index("rlnOpticsGroup")
    assert optics["rlnVoltage"].tolist() == [200.0, 300.0]  # sorted constants, as before chunking
    voltages = optics.loc[blocks["particles"]["rlnOpticsGroup"], "rlnVoltage"].to_numpy()
    np.testing.assert_array_equal(voltages, ctf[:, 3])
    np.testing.assert_allclose(read_star(path).ctf, ctf, atol=1e-6)


@pytest.mark.parametrize("version", ["30", "31"])
def test_read_star_poses_reads_the_poses_of_read_star(stacks, version):
    text = relion30(NAMES) if version == "30" else relion31(NAMES)
    path = write_text(stacks / f"poses{version}.star", text)
    table = read_star(path)
    angles, origins, extra = read_star_poses(path, table.pixel_size_angstrom, ("rlnClassNumber", "rlnAbsent"))
    np.testing.assert_array_equal(angles, table.euler_angles_degrees)
    np.testing.assert_allclose(origins, table.origins_angstrom)
    np.testing.assert_allclose(origins, ORIGINS_ANGSTROM)
    if "rlnClassNumber" in table.extra_columns:
        np.testing.assert_array_equal(extra["rlnClassNumber"], table.extra_columns["rlnClassNumber"])
    assert "rlnAbsent" not in extra


def test_read_star_poses_needs_poses(stacks, tmp_path):
    table = read_star(write_text(stacks / "new.star", relion31(NAMES)))
    path = str(tmp_path / "noposes.star")
    write_star(path, table.without_poses())
    with pytest.raises(ValueError, match="has no poses"):
        read_star_poses(path, 2.0)
    with pytest.raises(FileNotFoundError):
        read_star_poses(str(tmp_path / "missing.star"), 2.0)


def test_reading_without_poses_skips_the_pose_columns(tmp_path):
    make_stack(tmp_path / "stacks" / "a.mrcs", 2)
    make_stack(tmp_path / "stacks" / "b.mrcs", 3)
    path = write_text(tmp_path / "in.star", relion31(NAMES))
    whole, lean = read_star(path), read_star(path, poses=False)
    assert whole.has_poses and not lean.has_poses and lean.origins_angstrom is None
    assert not set(lean.extra_columns) & {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
                                          "rlnOriginYAngst", "rlnOriginX", "rlnOriginY"}
    np.testing.assert_array_equal(lean.ctf, whole.ctf)
    np.testing.assert_array_equal(lean.image_indices, whole.image_indices)
    assert lean.stack_files == whole.stack_files and set(lean.extra_columns) == set(whole.extra_columns)
    assert read_particles(path, poses=False).euler_angles_degrees is None
