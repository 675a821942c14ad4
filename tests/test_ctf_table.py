"""The compact CTF table reads like the (N, 8) array it stands for, and stores constants once."""
import pickle

import numpy as np
import pytest

from cryoai_core.io.ctf_table import CTF_FIELDS, CtfTable
from cryoai_core.io.particles import ParticleTable


def _array(count=7):
    generator = np.random.default_rng(3)
    array = np.zeros((count, len(CTF_FIELDS)))
    array[:, 0] = generator.uniform(5000, 30000, count)
    array[:, 1] = array[:, 0] - generator.uniform(0, 500, count)
    array[:, 2] = generator.uniform(-180, 180, count)
    array[:, 3:6] = [300.0, 2.7, 0.07]
    array[:, 6] = generator.uniform(0, 90, count)  # a phase plate: varies
    return array


KEYS = [slice(None), slice(2, 5), slice(None, None, -2), np.array([4, 0, 4, -1]), [1, 2],
        np.array([], dtype=np.int64), np.arange(7) % 2 == 0, 3, -1,
        (slice(None), 0), (slice(None), slice(3, 6)), (np.array([5, 1]), [0, 1, 2, 6]), (2, 4), (2, slice(None)),
        (slice(1, 3), -1)]


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
def test_indexing_equals_the_array(key):
    array = _array()
    table = CtfTable.from_array(array)
    expected = array[key[0]][..., key[1]] if isinstance(key, tuple) else array[key]  # rows, then their columns
    got = table[key]
    assert np.shape(got) == np.shape(expected)
    np.testing.assert_array_equal(got, expected)


def test_constant_columns_are_stored_once():
    array = _array(1000)
    table = CtfTable.from_array(array)
    assert [table.is_constant(index) for index in range(8)] == [False] * 3 + [True] * 3 + [False, True]
    assert table.nbytes == 4 * 1000 * 8 + 4 * 8
    assert table.shape == (1000, 8) and len(table) == 1000 and table.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(table), array)
    np.testing.assert_array_equal(table.column(4), np.full(1000, 2.7))
    with pytest.raises(ValueError):
        table.column(0)[0] = 1.0  # read-only views: the table cannot be changed behind its back
    with pytest.raises(ValueError):
        table.column(3)[0] = 1.0


def test_take_stays_compact_and_matches_the_rows():
    array = _array()
    table = CtfTable.from_array(array)
    rows = np.array([6, 2, 2])
    part = table.take(rows)
    assert isinstance(part, CtfTable) and part.is_constant(3) and not part.is_constant(0)
    np.testing.assert_array_equal(np.asarray(part), array[rows])
    np.testing.assert_array_equal(np.asarray(table.take(slice(1, 4))), array[1:4])
    np.testing.assert_array_equal(np.asarray(pickle.loads(pickle.dumps(part))), array[rows])
    assert [list(row) for row in part] == [list(row) for row in array[rows]]


def test_the_table_does_not_share_the_callers_memory():
    array = _array()
    table = CtfTable.from_array(array)
    array[:] = 0.0
    assert table[0, 0] > 5000 and table[0, 3] == 300.0


@pytest.mark.parametrize("key", [7, -8, np.array([0, 7]), np.array([-8]), np.ones(6, dtype=bool), np.array([0.5]),
                                 (slice(None), 8), (0, 0, 0)])
def test_bad_indices_are_index_errors(key):
    with pytest.raises(IndexError):
        CtfTable.from_array(_array())[key]


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        CtfTable.from_array(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="8 columns"):
        CtfTable([1.0] * 7, 3)
    with pytest.raises(ValueError, match="shape"):
        CtfTable([np.zeros(4)] + [1.0] * 7, 3)


def test_particle_tables_hold_compact_ctf_through_subsets():
    array = _array(10)
    table = ParticleTable(stack_files=("/x.mrcs",), stack_ids=np.zeros(10, dtype=np.int32),
                          image_indices=np.arange(10), pixel_size_angstrom=1.5, box=16, ctf=array)
    assert isinstance(table.ctf, CtfTable) and table.ctf.is_constant(5)
    part = table.subset([9, 0])
    assert isinstance(part.ctf, CtfTable)
    np.testing.assert_array_equal(np.asarray(part.ctf), array[[9, 0]])
    with pytest.raises(ValueError, match="rows"):
        ParticleTable(stack_files=("/x.mrcs",), stack_ids=np.zeros(3, dtype=np.int32), image_indices=np.arange(3),
                      pixel_size_angstrom=1.5, box=16, ctf=array)
