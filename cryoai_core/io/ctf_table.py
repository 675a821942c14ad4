"""Per-particle CTF parameters stored a column at a time, a constant column once.

Voltage, spherical aberration and amplitude contrast are constants of an optics group, and the phase shift
and B-factor are zero for most data sets, yet star files repeat them on every row. A :class:`CtfTable`
keeps a column whose ``N`` values are all equal as one number, so that a table of 10⁶ particles holds
3 × 8 bytes per particle (defocus U, V and angle) instead of 8 × 8.

It reads like a read-only ``(N, 8)`` float64 array in :data:`CTF_FIELDS`
order: ``table[rows]`` and ``table[rows, columns]`` (the rows, then those columns of them, as
``array[rows][..., columns]``) return numpy arrays holding only the rows asked for, and
``np.asarray(table)`` gives the whole array. :meth:`CtfTable.take` selects rows without leaving the
compact form.
"""
import numbers

import numpy as np

CTF_FIELDS = ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_degrees", "voltage_kv",
              "spherical_aberration_mm", "amplitude_contrast", "phase_shift_degrees", "bfactor_angstrom2")
"""Column order of the ``(N, 8)`` CTF parameter arrays (tables, data sets, trainer)."""

FIELD_COUNT = len(CTF_FIELDS)


class CtfTable:
    """``(N, 8)`` float64 CTF parameters; each column is an ``(N,)`` array or, when constant, one number."""

    def __init__(self, columns, count: int):
        """``columns``: 8 items, each an ``(N,)`` array or a number (a column whose values are all that
        number); ``count``: ``N``. Arrays are copied to float64 unless they are float64 already."""
        if len(columns) != FIELD_COUNT:
            raise ValueError(f"a CTF table has {FIELD_COUNT} columns, got {len(columns)}")
        count = int(count)
        stored = []
        for index, column in enumerate(columns):
            column = np.asarray(column, dtype=np.float64)
            if column.ndim == 0:
                stored.append(column.copy())
            elif column.shape == (count,):
                stored.append(column)
            else:
                raise ValueError(f"CTF column {index} has shape {column.shape}, expected ({count},) or a number")
        self._columns = tuple(stored)
        self._count = count

    @classmethod
    def from_columns(cls, columns, count: int) -> "CtfTable":
        """Like the constructor, but an array column whose values are all equal is stored as one number and
        the others are copied (the table never shares memory with ``columns``)."""
        return cls([compact_column(column) for column in columns], count)

    @classmethod
    def from_array(cls, array) -> "CtfTable":
        """A compact table from an ``(N, 8)`` array (a :class:`CtfTable` is returned as is)."""
        if isinstance(array, CtfTable):
            return array
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != FIELD_COUNT:
            raise ValueError(f"CTF parameters must have shape (N, {FIELD_COUNT}), got {array.shape}")
        return cls.from_columns(list(array.T), len(array))

    @property
    def shape(self) -> tuple:
        return (self._count, FIELD_COUNT)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (constants count 8 bytes)."""
        return sum(column.nbytes for column in self._columns)

    def __len__(self) -> int:
        return self._count

    def is_constant(self, index: int) -> bool:
        """Whether column ``index`` is stored as one number."""
        return self._columns[index].ndim == 0

    def column(self, index: int) -> np.ndarray:
        """Column ``index`` as a read-only ``(N,)`` array (a broadcast view when it is constant)."""
        column = self._columns[index]
        if column.ndim == 0:
            return np.broadcast_to(column, (self._count,))
        view = column.view()
        view.flags.writeable = False
        return view

    def take(self, rows) -> "CtfTable":
        """The rows ``rows`` (an index array, a boolean mask or a slice) as a compact table."""
        rows, count = self._rows(rows)
        return CtfTable([column if column.ndim == 0 else column[rows] for column in self._columns], count)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IndexError(f"a CTF table has 2 dimensions, got {len(key)} indices")
            rows, columns = key
        else:
            rows, columns = key, slice(None)
        if isinstance(rows, numbers.Integral):
            if not -self._count <= rows < self._count:
                raise IndexError(f"particle {rows} is out of range for {self._count} particles")
            row = int(rows) % self._count
            return self[row:row + 1, columns][0]
        chosen = np.arange(FIELD_COUNT)[columns]
        rows, count = self._rows(rows)
        out = np.empty((count, np.size(chosen)))
        for place, index in enumerate(np.atleast_1d(chosen)):
            column = self._columns[index]
            out[:, place] = column if column.ndim == 0 else column[rows]
        return out if np.ndim(chosen) else out[:, 0]

    def __iter__(self):
        for row in range(self._count):
            yield self[row]

    def __array__(self, dtype=None, copy=None):
        return self[:].astype(dtype or np.float64, copy=False)

    def __repr__(self) -> str:
        constant = [index for index in range(FIELD_COUNT) if self.is_constant(index)]
        return f"CtfTable({self._count} particles, constant columns {constant})"

    def _rows(self, rows):
        """``rows`` made an index numpy accepts, and how many rows it selects (bounds checked)."""
        if isinstance(rows, slice):
            return rows, len(range(*rows.indices(self._count)))
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self._count,):
                raise IndexError(f"a row mask must have shape ({self._count},), got {rows.shape}")
            return rows, int(np.count_nonzero(rows))
        if rows.ndim != 1 or not (np.issubdtype(rows.dtype, np.integer) or rows.size == 0):
            raise IndexError("rows must be a slice, a 1-D integer array or a boolean mask")
        if rows.size and not (-self._count <= int(rows.min()) and int(rows.max()) < self._count):
            raise IndexError(f"row indices out of range for {self._count} particles")
        return rows.astype(np.int64, copy=False), len(rows)


def compact_column(column):
    """``column`` as one number when its values are all equal, else as a float64 copy."""
    column = np.asarray(column)
    if column.ndim == 1 and len(column) and (column == column[0]).all():
        return column[0]
    return np.array(column, dtype=np.float64)
