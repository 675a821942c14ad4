"""The chunked STAR parser: same values as the starfile package, whatever the chunk size; compact columns."""
import os

import numpy as np
import pandas as pd
import pytest
import starfile

from cryoai_core.io import star_parser
from cryoai_core.io.star import read_star, write_star
from cryoai_core.io.star_parser import ImageNames, read_blocks
from test_io_star import NAMES, make_stack, relion31, write_text

TEXT = """# version 30001

data_general

_rlnImageSizeX 16
_rlnName 'a b'

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnImagePixelSize #3
1 opticsGroup1 2.0

data_particles

loop_
_rlnImageName #1
_rlnMicrographName #2
_rlnClassNumber #3
_rlnDefocusU #4
_rlnLabel #5
000001@stacks/a.mrcs mics/m1.mrc 1 15000 "two words"
2@stacks/a.mrcs mics/m2.mrc 2 15000.5 x
# a comment between rows

3@stacks/b.mrcs mics/m1.mrc 3 12000 7
4@/abs/c.mrcs mics/m3.mrc 4 13000.25 y
c.mrcs mics/m3.mrc 5 nan z
"""


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100_000])
def test_chunks_give_the_values_of_the_starfile_package(tmp_path, monkeypatch, chunk_rows):
    path = tmp_path / "p.star"
    path.write_text(TEXT)
    monkeypatch.setattr(star_parser, "PARSE_CHUNK_ROWS", chunk_rows)
    blocks = read_blocks(str(path))
    reference = starfile.read(str(path), always_dict=True)
    assert set(blocks) == set(reference) == {"general", "optics", "particles"}
    assert blocks["general"]["rlnImageSizeX"].tolist() == [16] and blocks["general"]["rlnName"].tolist() == ["a b"]
    for name in ("optics", "particles"):
        assert list(blocks[name]) == list(reference[name].columns)
        for column in reference[name].columns:
            ours, theirs = np.asarray(blocks[name][column]), reference[name][column].to_numpy()
            if theirs.dtype == object:
                assert ours.tolist() == theirs.tolist(), column
            else:
                np.testing.assert_array_equal(ours, theirs, err_msg=column)
    particles = blocks["particles"]
    assert isinstance(particles["rlnMicrographName"], pd.Categorical)  # each name stored once
    assert list(particles["rlnMicrographName"].categories) == ["mics/m1.mrc", "mics/m2.mrc", "mics/m3.mrc"]
    assert particles["rlnClassNumber"].dtype == np.int64 and particles["rlnDefocusU"].dtype == np.float64
    assert particles["rlnLabel"].tolist() == ["two words", "x", "7", "y", "z"]  # text as soon as one value is


def test_image_names_split_into_numbers_and_stack_codes(tmp_path, monkeypatch):
    path = tmp_path / "p.star"
    path.write_text(TEXT)
    monkeypatch.setattr(star_parser, "PARSE_CHUNK_ROWS", 2)
    names = read_blocks(str(path), split_image_names=True)["particles"]["rlnImageName"]
    assert isinstance(names, ImageNames) and len(names) == 5 and names.malformed is None
    assert names.numbers.tolist() == [1, 2, 3, 4, 1]
    assert [names.stacks[code] for code in names.stack_codes] == ["stacks/a.mrcs", "stacks/a.mrcs", "stacks/b.mrcs",
                                                                 "/abs/c.mrcs", "c.mrcs"]
    path.write_text(TEXT.replace("3@stacks/b.mrcs", "x3@stacks/b.mrcs"))
    assert read_blocks(str(path), split_image_names=True)["particles"]["rlnImageName"].malformed == "x3@stacks/b.mrcs"


def test_malformed_text_is_one_clear_error(tmp_path):
    for name, text in [("fields.star", "data_\nloop_\n_rlnA #1\n_rlnB #2\n1 2\n1 2 3\n"),
                       ("binary.star", "data_\nloop_\n_rlnA #1\n\udcff\n"),
                       ("pairs.star", "data_\n_rlnA 1 2\n")]:
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(ValueError, match=f"{name} cannot be parsed as a STAR file"):
            read_blocks(str(path))


def test_text_columns_stay_compact_and_are_written_back(tmp_path, monkeypatch):
    make_stack(tmp_path / "stacks" / "a.mrcs", 2)
    make_stack(tmp_path / "stacks" / "b.mrcs", 3)
    text = relion31(NAMES).replace("_rlnClassNumber #11\n", "_rlnClassNumber #11\n_rlnMicrographName #12\n")
    lines = text.splitlines()
    for number, micrograph in zip(range(-3, 0), ["mics/m 1.mrc", "mics/m2.mrc", "mics/m 1.mrc"]):
        lines[number] += f' "{micrograph}"'
    monkeypatch.setattr(star_parser, "PARSE_CHUNK_ROWS", 2)
    table = read_star(write_text(tmp_path / "in.star", "\n".join(lines) + "\n"))
    micrographs = table.extra_columns["rlnMicrographName"]
    assert isinstance(micrographs, pd.Categorical) and len(micrographs.categories) == 2
    np.testing.assert_array_equal(table.extra_columns["rlnClassNumber"], [1, 2, 3])
    write_star(str(tmp_path / "out.star"), table.subset([2, 0]))
    back = starfile.read(str(tmp_path / "out.star"), always_dict=True)["particles"]
    assert back["rlnMicrographName"].tolist() == ["mics/m 1.mrc", "mics/m 1.mrc"]
    assert back["rlnClassNumber"].tolist() == [3, 1]
    assert os.path.basename(read_star(str(tmp_path / "out.star")).stack_files[0]) == "b.mrcs"


def test_a_column_filter_keeps_the_asked_loop_columns_only(tmp_path, monkeypatch):
    path = tmp_path / "p.star"
    path.write_text(TEXT)
    monkeypatch.setattr(star_parser, "PARSE_CHUNK_ROWS", 2)
    whole = read_blocks(str(path))
    kept = read_blocks(str(path), columns={"rlnDefocusU", "rlnMicrographName", "rlnNotThere"})
    assert list(kept["particles"]) == ["rlnMicrographName", "rlnDefocusU"]  # file order
    for column in kept["particles"]:
        np.testing.assert_array_equal(np.asarray(kept["particles"][column]), np.asarray(whole["particles"][column]))
    assert list(kept["general"]) == list(whole["general"])  # a block of pairs is kept whole
    dropped = read_blocks(str(path), drop={"rlnDefocusU", "rlnNotThere"})
    assert list(dropped["particles"]) == [name for name in whole["particles"] if name != "rlnDefocusU"]
    assert list(dropped["optics"]) == list(whole["optics"])


@pytest.mark.parametrize("lines", [0, 1, 3])
def test_columns_are_right_when_the_line_count_is_short(tmp_path, monkeypatch, lines):
    # Each column is one array sized by the file's line count; were that count short, the array grows.
    path = tmp_path / "p.star"
    path.write_text(TEXT)
    monkeypatch.setattr(star_parser, "PARSE_CHUNK_ROWS", 2)
    whole = read_blocks(str(path), split_image_names=True)
    monkeypatch.setattr(star_parser, "count_lines", lambda _: lines)
    short = read_blocks(str(path), split_image_names=True)
    for column, values in whole["particles"].items():
        if isinstance(values, ImageNames):
            assert short["particles"][column].numbers.tolist() == values.numbers.tolist()
            assert short["particles"][column].stack_codes.tolist() == values.stack_codes.tolist()
        else:
            np.testing.assert_array_equal(np.asarray(short["particles"][column]), np.asarray(values), err_msg=column)


def test_count_lines_counts_a_last_line_without_newline(tmp_path):
    path = tmp_path / "t.star"
    for text, count in [("", 0), ("a\n", 1), ("a\nb", 2), ("a\n\nb\n", 3)]:
        path.write_text(text)
        assert star_parser.count_lines(str(path)) == count
