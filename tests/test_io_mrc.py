"""MRC maps and stacks: voxel size, memory mapping, and clear errors for missing or damaged files."""
import os

import mrcfile
import numpy as np
import pytest

from cryoai_core.io.mrc import StackWriter, common_box, locate_stack, open_stack, read_mrc, stack_shape, \
    write_mrc


def make_stack(path, images, pixel_size=1.0):
    """An image stack written with mrcfile directly (independent of the code under test)."""
    with mrcfile.new(str(path), overwrite=True) as mrc:
        mrc.set_data(np.asarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size
    return str(path)


def test_map_round_trip_keeps_values_and_voxel_size(tmp_path):
    volume = np.random.default_rng(0).normal(size=(6, 8, 10)).astype(np.float32)
    path = str(tmp_path / "map.mrc")
    write_mrc(path, volume, 1.75)
    with mrcfile.open(path) as mrc:  # what other programs will see
        assert mrc.data.shape == (6, 8, 10)
        assert float(mrc.voxel_size.x) == pytest.approx(1.75)
        assert mrc.header.mode == 2
    data, voxel = read_mrc(path)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, volume)
    assert voxel == pytest.approx(1.75)
    write_mrc(path, volume[:2], 3.0)  # overwrite
    data, voxel = read_mrc(path)
    assert data.shape == (2, 8, 10) and voxel == pytest.approx(3.0)


def test_read_mrc_converts_integer_data_and_reports_missing_voxel_size(tmp_path):
    path = str(tmp_path / "int.mrc")
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    data, voxel = read_mrc(path)
    assert data.dtype == np.float32 and data[1, 2, 3] == 23
    assert voxel == 0.0


def test_stack_writer_chunks_header_and_memory_map(tmp_path):
    images = np.random.default_rng(1).normal(size=(7, 12, 12)).astype(np.float32)
    path = str(tmp_path / "particles.mrcs")
    with StackWriter(path, count=7, box=12, pixel_size_angstrom=2.5) as writer:
        writer.write(4, images[4:])
        writer.write(0, images[:4])
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert float(mrc.voxel_size.x) == pytest.approx(2.5)
        assert mrc.header.ispg == 0  # image stack, not a volume
        assert float(mrc.header.dmean) == pytest.approx(images.mean(), abs=1e-5)
        assert float(mrc.header.rms) == pytest.approx(images.std(), rel=1e-5)
        assert float(mrc.header.dmax) == pytest.approx(images.max())
    stack = open_stack(path)
    assert isinstance(stack, np.memmap) and stack.shape == (7, 12, 12)
    assert not stack.flags.writeable
    np.testing.assert_array_equal(stack[[1, 5]], images[[1, 5]])


def test_stack_writer_rejects_bad_chunks_and_removes_partial_file(tmp_path):
    path = str(tmp_path / "bad.mrcs")
    with pytest.raises(ValueError, match="do not fit"):
        with StackWriter(path, count=3, box=8, pixel_size_angstrom=1.0) as writer:
            writer.write(2, np.zeros((2, 8, 8)))
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="shape"):
        with StackWriter(path, count=3, box=8, pixel_size_angstrom=1.0) as writer:
            writer.write(0, np.zeros((1, 8, 6)))


def test_single_image_is_a_stack_of_one(tmp_path):
    image = np.arange(64, dtype=np.float32).reshape(8, 8)
    path = str(tmp_path / "one.mrc")
    with mrcfile.new(path) as mrc:
        mrc.set_data(image)
    stack = open_stack(path)
    assert stack.shape == (1, 8, 8)
    np.testing.assert_array_equal(stack[0], image)
    assert stack_shape(path) == (1, 8, 8)


def test_truncated_stack_is_a_clear_error(tmp_path):
    path = make_stack(tmp_path / "cut.mrcs", np.ones((5, 16, 16)))
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size - 3 * 16 * 16 * 4 - 10)
    for reader in (open_stack, stack_shape):
        with pytest.raises(ValueError, match="truncated: header says 5 images of 16x16 but the file holds only 1"):
            reader(path)


def test_longer_file_still_opens(tmp_path):
    path = make_stack(tmp_path / "long.mrcs", np.ones((2, 8, 8)))
    with open(path, "ab") as handle:
        handle.write(b"\0" * 100)
    assert open_stack(path).shape == (2, 8, 8)


def test_missing_and_corrupt_files(tmp_path):
    missing = str(tmp_path / "nowhere" / "stack.mrcs")
    with pytest.raises(FileNotFoundError, match="nowhere/stack.mrcs"):
        open_stack(missing)
    with pytest.raises(FileNotFoundError, match="nowhere/stack.mrcs"):
        read_mrc(missing)
    junk = tmp_path / "junk.mrcs"
    junk.write_bytes(b"not an mrc file" * 100)
    with pytest.raises(ValueError, match="junk.mrcs"):
        open_stack(str(junk))


def test_non_square_images_are_rejected(tmp_path):
    path = make_stack(tmp_path / "rect.mrcs", np.ones((2, 8, 10)))
    with pytest.raises(ValueError, match="square"):
        open_stack(path)


def test_common_box_checks_every_stack(tmp_path):
    a = make_stack(tmp_path / "a.mrcs", np.ones((3, 8, 8)))
    b = make_stack(tmp_path / "b.mrcs", np.ones((2, 8, 8)))
    ids, indices = np.array([0, 0, 1, 1]), np.array([0, 2, 0, 1])
    assert common_box((a, b), ids, indices, "meta.star") == 8
    with pytest.raises(ValueError,
                       match=r"image 000003@.*b.mrcs \(particle 4 in file order\) is out of range: the stack holds only 2"):
        common_box((a, b), ids, np.array([0, 2, 0, 2]), "meta.star")
    c = make_stack(tmp_path / "c.mrcs", np.ones((2, 10, 10)))
    with pytest.raises(ValueError, match="different box sizes: 8 px .* and 10 px"):
        common_box((a, c), ids, indices[[0, 1, 2, 2]], "meta.star")
    odd = make_stack(tmp_path / "odd.mrcs", np.ones((2, 9, 9)))
    with pytest.raises(ValueError, match="odd"):
        common_box((odd,), np.zeros(1, int), np.zeros(1, int), "meta.star")
    with pytest.raises(FileNotFoundError, match=r"gone.mrcs \(named in meta.star"):
        common_box((str(tmp_path / "gone.mrcs"),), np.zeros(1, int), np.zeros(1, int), "meta.star")


def test_locate_stack_prefers_root_then_folder_then_parents(tmp_path):
    project = tmp_path / "project"
    (project / "Extract" / "job002").mkdir(parents=True)
    (project / "Refine3D" / "job005").mkdir(parents=True)
    stack = project / "Extract" / "job002" / "s.mrcs"
    stack.write_bytes(b"")
    job = str(project / "Refine3D" / "job005")
    assert locate_stack("Extract/job002/s.mrcs", job, search_parents=2) == str(stack)
    assert locate_stack("Extract/job002/s.mrcs", job) == os.path.join(job, "Extract/job002/s.mrcs")
    assert locate_stack("s.mrcs", job, root=str(stack.parent)) == str(stack)
    assert locate_stack(str(stack), "/elsewhere") == str(stack)
