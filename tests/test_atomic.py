"""Crash-safe writes: a failed write leaves the previous file and no temporary file."""
import os

import numpy as np
import pytest

from cryoai_core.io.atomic import atomic_open
from cryoai_core.io.mrc import StackWriter, read_mrc, write_mrc


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path)) as handle:
            handle.write("new, half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_written_file_has_the_usual_permissions(tmp_path):
    path = tmp_path / "map.mrc"
    write_mrc(str(path), np.ones((4, 4, 4)), 1.5)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask
    data, voxel = read_mrc(str(path))
    assert data.shape == (4, 4, 4) and voxel == pytest.approx(1.5)


def test_full_disk_while_writing_a_stack_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CRYOAI_TEST_FAULT", "write:particles.mrcs:enospc")
    with pytest.raises(OSError, match="No space left"):
        with StackWriter(str(tmp_path / "particles.mrcs"), 2, 4, 1.0) as writer:
            writer.write(0, np.ones((2, 4, 4)))
    assert os.listdir(tmp_path) == []
