"""STAR text -> compact columns, one chunk of rows at a time (memory flat in the number of rows).

A STAR file is a sequence of ``data_NAME`` blocks. A block holds either ``_label value`` pairs or a
``loop_`` table: ``_label`` lines, then one row per line, fields separated by white space, text with
spaces in double (or single) quotes, ``#`` starting a comment. Loop rows are parsed
:data:`PARSE_CHUNK_ROWS` lines at a time by pandas' C reader, and each chunk is folded at once into
compact columns:

- numbers: a numpy array (int64 when every value is an integer, float64 otherwise);
- text: a ``pandas.Categorical`` (each distinct string stored once: micrograph names, group names);
- ``rlnImageName`` (when asked): :class:`ImageNames`, the 1-based image number as an integer and the
  stack path as a code into the distinct paths.

The parse thus holds one chunk of text at a time, never the whole table as Python strings. Each column
is filled into one array sized by a count of the file's lines (:func:`count_lines`), not gathered as a
list of chunks and joined: joining would hold every column twice, and the chunks, small enough for the
C allocator's heap, would stay in the process's resident memory after they are freed. Values
``nan``, ``NaN`` and ``<NA>`` are missing; any other text is kept as written (as the ``starfile``
package reads it).
"""
import dataclasses
import io
import mmap
import re
import shlex

import numpy as np
import pandas as pd

PARSE_CHUNK_ROWS = 10_000
"""Lines of a loop table parsed at a time."""
MISSING_VALUES = ["nan", "NaN", "<NA>"]
"""Field texts read as missing values."""
IMAGE_NAME_COLUMN = "rlnImageName"
_IMAGE_NAME = re.compile(r"^\s*(\d+)@(.*)$")


@dataclasses.dataclass(frozen=True)
class ImageNames:
    """A compact ``rlnImageName`` column of ``N`` rows (``index@stack``, the index 1-based).

    Attributes:
        numbers: ``(N,)`` int64, the image number as written (1 when the name has no ``index@``).
        stack_codes: ``(N,)`` int32 index into ``stacks``.
        stacks: the distinct stack paths, as written.
        malformed: the first name with an ``@`` but no number before it, or ``None``.
    """

    numbers: np.ndarray
    stack_codes: np.ndarray
    stacks: tuple
    malformed: str | None

    def __len__(self) -> int:
        return len(self.numbers)


class _Text:
    """Distinct strings and the code of each row, filled chunk by chunk."""

    def __init__(self):
        self.codes, self.index = [], {}

    def add(self, values) -> np.ndarray:
        codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
        remap = np.array([self.index.setdefault(value, len(self.index)) for value in uniques], dtype=np.int32)
        return remap[codes] if len(codes) else np.zeros(0, dtype=np.int32)

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=pd.Index(list(self.index), dtype=object))


def _anonymous(count: int, dtype) -> np.ndarray:
    """An uninitialised ``(count,)`` array in its own anonymous memory map: returned to the system when the
    array goes, whatever the C allocator's thresholds (a large ``np.empty`` may come from the heap, whose
    freed middle stays resident), and taking no memory where it is never written."""
    dtype = np.dtype(dtype)
    return np.frombuffer(mmap.mmap(-1, max(count, 1) * dtype.itemsize), dtype=dtype)[:count]


class _Filled:
    """An array filled chunk by chunk, allocated once for ``capacity`` rows (grown, rarely, if that is short).

    Its dtype is that of the first chunk; an integer array becomes float64 when a float chunk follows.
    Pages that are never written (an array sized by the file's line count for a table of few rows) take
    no memory.
    """

    def __init__(self, capacity: int):
        self.capacity, self.count, self.values = max(int(capacity), 1), 0, None

    def add(self, part: np.ndarray) -> None:
        if self.values is None:
            self.values = _anonymous(max(self.capacity, len(part)), part.dtype)
        elif self.values.dtype.kind in "iu" and part.dtype.kind == "f":
            self.values = self.values.astype(np.float64)
        if self.count + len(part) > len(self.values):
            grown = _anonymous(2 * (self.count + len(part)), self.values.dtype)
            grown[:self.count] = self.values[:self.count]
            self.values = grown
        self.values[self.count:self.count + len(part)] = part
        self.count += len(part)

    def finish(self, dtype) -> np.ndarray:
        """The filled rows (``dtype`` when nothing was added); the unused part of the array is released."""
        values, self.values = self.values, None
        if values is None:
            return np.zeros(0, dtype=dtype)
        filled = values[:self.count]
        return filled if 2 * self.count >= len(values) else filled.copy()


class _Column:
    """One loop column being filled: numbers into one array, or text as codes into one :class:`_Text`.

    A column whose chunks mix numbers and text becomes text (numbers written as Python prints them).
    """

    def __init__(self, capacity: int):
        self.numbers, self.codes, self.text = _Filled(capacity), None, _Text()
        self.capacity = capacity

    def add(self, values: pd.Series) -> None:
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
            part = values.to_numpy()
            if self.codes is None:
                self.numbers.add(part)
                return
            self.codes.add(self.text.add(pd.Series(part).astype(str)))
            return
        if self.codes is None:
            self.codes = _Filled(self.capacity)
            numbers = self.numbers.finish(np.float64)
            if len(numbers):
                self.codes.add(self.text.add(pd.Series(numbers).astype(str)))
        self.codes.add(self.text.add(values.fillna("<NA>").astype(str)))

    def finish(self):
        """The whole column."""
        if self.codes is None:
            return self.numbers.finish(np.float64)
        return self.text.categorical(self.codes.finish(np.int32))


class _ImageNameColumn:
    """An ``rlnImageName`` column being filled (see :class:`ImageNames`)."""

    def __init__(self, capacity: int):
        self.numbers, self.codes, self.stacks, self.malformed = _Filled(capacity), _Filled(capacity), _Text(), None

    def add(self, values: pd.Series) -> None:
        names = values.fillna("").astype(str)
        parts = names.str.extract(_IMAGE_NAME)
        numbered = parts[0].notna().to_numpy()
        bad = np.flatnonzero(~numbered & names.str.contains("@", regex=False).to_numpy())
        if len(bad) and self.malformed is None:
            self.malformed = names.iloc[bad[0]]
        numbers = np.ones(len(names), dtype=np.int64)
        numbers[numbered] = parts[0][numbered].to_numpy().astype(np.int64)
        self.numbers.add(numbers)
        self.codes.add(self.stacks.add(parts[1].where(numbered, names)))

    def finish(self) -> ImageNames:
        """The whole column."""
        return ImageNames(self.numbers.finish(np.int64), self.codes.finish(np.int32), tuple(self.stacks.index),
                          self.malformed)


def block_rows(block: dict) -> int:
    """Number of rows of a parsed block (0 for a block without columns)."""
    return len(next(iter(block.values()))) if block else 0


def count_lines(path: str) -> int:
    """Number of lines of a file (an upper bound on the rows of any of its tables), read in binary blocks."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def read_blocks(path: str, split_image_names: bool = False, columns=None, drop=()) -> dict:
    """Every data block of a STAR file: ``{block name: {column name: column}}`` (see the module text).

    ``split_image_names`` stores ``rlnImageName`` columns as :class:`ImageNames` (otherwise as text).
    ``columns`` (a set of names): loop tables keep only these columns; ``drop``: loop tables keep all but
    these. Columns not kept are parsed a chunk at a time and dropped, so memory holds the kept columns
    only. A block of ``_label value`` pairs becomes one row (and is kept whole).

    Raises:
        ValueError: text that is not a STAR file (the message names ``path``).
    """
    try:
        capacity = count_lines(path)
        with open(path, encoding="utf-8") as handle:
            keep = Kept(None if columns is None else frozenset(columns), frozenset(drop))
            return _read(iter(handle), split_image_names, keep, capacity)
    except Exception as error:  # pandas, shlex and the decoder raise assorted errors for malformed text
        raise ValueError(f"{path} cannot be parsed as a STAR file: {error}") from None


@dataclasses.dataclass(frozen=True)
class Kept:
    """The loop columns that a parse keeps: those in ``only`` (all when ``None``) and not in ``drop``."""

    only: frozenset | None
    drop: frozenset

    def __contains__(self, label: str) -> bool:
        return (self.only is None or label in self.only) and label not in self.drop


def _read(lines, split_image_names: bool, keep: Kept, capacity: int) -> dict:
    blocks = {}
    line = next(lines, "")
    while line:
        stripped = line.strip()
        if not stripped.startswith("data_"):
            line = next(lines, "")
            continue
        name = stripped[5:]
        line = next(lines, "")
        while line and not line.strip().startswith(("loop_", "_", "data_")):
            line = next(lines, "")
        if line.strip().startswith("loop_"):
            blocks[name], line = _read_loop(lines, split_image_names, keep, capacity)
        elif line.strip().startswith("_"):
            blocks[name], line = _read_pairs(line, lines)
        else:
            blocks[name] = {}
    return blocks


def _read_pairs(line: str, lines) -> tuple[dict, str]:
    block = {}
    while line and not line.strip().startswith("data_"):
        if line.strip().startswith("_"):
            label, value = shlex.split(line.strip())
            block[label[1:]] = np.array([_number(value)])
        line = next(lines, "")
    return block, line


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_loop(lines, split_image_names: bool, keep: Kept, capacity: int) -> tuple[dict, str]:
    labels = []
    line = next(lines, "")
    while line.strip().startswith("_"):
        labels.append(line.split()[0][1:])
        line = next(lines, "")
    columns = {label: (_ImageNameColumn if split_image_names and label == IMAGE_NAME_COLUMN else _Column)(capacity)
               for label in labels if label in keep}
    rows = []
    while line and not line.strip().startswith("data_"):
        rows.append(line)
        if len(rows) == PARSE_CHUNK_ROWS:
            _add_rows(rows, labels, columns)
            rows = []
        line = next(lines, "")
    _add_rows(rows, labels, columns)
    return {label: column.finish() for label, column in columns.items()}, line


def _add_rows(rows: list, labels: list, columns: dict) -> None:
    text = "".join(rows).replace("'", '"')
    if not text.strip():
        return
    text_columns = {labels.index(IMAGE_NAME_COLUMN): str} if IMAGE_NAME_COLUMN in labels else None
    try:
        frame = pd.read_csv(io.StringIO(text), sep=r"\s+", header=None, comment="#", keep_default_na=False,
                            na_values=MISSING_VALUES, engine="c", dtype=text_columns)
    except pd.errors.EmptyDataError:  # only comments and blank lines
        return
    if frame.shape[1] != len(labels):
        raise ValueError(f"the rows have {frame.shape[1]} fields but the table names {len(labels)} columns")
    for number, label in enumerate(labels):
        if label in columns:
            columns[label].add(frame[number])
