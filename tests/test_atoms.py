"""Atomic models to maps (gemmi): centring, axis order (hand) and the box check."""
import numpy as np
import pytest

pytest.importorskip("gemmi")

from cryoai_core.atoms import atoms_to_map  # noqa: E402

PDB_LINE = "ATOM  {serial:5d}  CA  ALA A{serial:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00 20.00           C\n"


def write_pdb(path, positions):
    with open(path, "w") as handle:
        for serial, (x, y, z) in enumerate(positions, start=1):
            handle.write(PDB_LINE.format(serial=serial, x=x, y=y, z=z))
        handle.write("END\n")


def test_atoms_land_centred_at_their_x_y_z_voxels(tmp_path):
    # Three atoms around (10, 10, 10): the centroid goes to index 16; +12 Å along x is +4 voxels of 3 Å.
    positions = np.array([[22.0, 10.0, 10.0], [10.0, 10.0, 10.0], [-2.0, 10.0, 10.0]])
    write_pdb(tmp_path / "x.pdb", positions)
    volume = atoms_to_map(str(tmp_path / "x.pdb"), 32, 3.0)
    assert volume.shape == (32, 32, 32)
    profile_x = volume.sum(axis=(0, 1))
    for index in (12, 16, 20):
        assert profile_x[index] > 5 * profile_x[8]
    # Off the x axis, nothing: the three atoms lie on the line y = z = centre.
    assert volume.sum(axis=(0, 2))[16] > 10 * volume.sum(axis=(0, 2))[22]
    assert volume.sum(axis=(1, 2))[16] > 10 * volume.sum(axis=(1, 2))[22]


def test_models_larger_than_the_box_and_bad_files_are_refused(tmp_path):
    write_pdb(tmp_path / "wide.pdb", [[0.0, 0.0, 0.0], [200.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="beyond the half box"):
        atoms_to_map(str(tmp_path / "wide.pdb"), 16, 3.0)
    (tmp_path / "empty.pdb").write_text("END\n")
    with pytest.raises(ValueError, match="no atoms"):
        atoms_to_map(str(tmp_path / "empty.pdb"), 16, 3.0)
