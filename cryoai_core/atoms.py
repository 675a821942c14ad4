"""Density maps from atomic models (PDB or mmCIF), through gemmi's electron-scattering density calculator.

The model's first chain set (model 1, hydrogens removed) is centred: the mean atom position goes to the
map centre, index ``L // 2`` on every axis (:mod:`cryoai_core.fourier`). The density is summed on a grid
``oversampling`` times finer than the target, then Fourier cropped to the target box
(:func:`cryoai_core.fourier.resample_volume`), so the map is band-limited to its Nyquist frequency.
Maps are ``[z, y, x]``; the model's ``x`` is the map's fast axis, so the hand is kept.

gemmi is an optional dependency (``pip install 'scipion-em-cryoai[benchmarks]'``).
"""
import logging
import math

import numpy as np
import torch

from cryoai_core.fourier import resample_volume

logger = logging.getLogger(__name__)

FINE_SPACING_ANGSTROM = 2.0
"""Largest spacing of the grid the atoms are summed on before Fourier cropping to the target pixel size."""


def read_atoms(path: str):
    """The first model of a PDB / mmCIF file (hydrogens removed) as a gemmi ``Structure``."""
    try:
        import gemmi
    except ImportError:
        raise ValueError("reading atomic models needs gemmi: pip install gemmi") from None
    try:
        structure = gemmi.read_structure(path)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as a PDB or mmCIF model: {error}") from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise ValueError(f"{path} holds no atoms")
    structure.remove_hydrogens()
    while len(structure) > 1:
        del structure[1]
    return structure


def atom_positions(structure) -> np.ndarray:
    """``(A, 3)`` float64 ``(x, y, z)`` positions in Å of the first model's atoms."""
    return np.array([[atom.pos.x, atom.pos.y, atom.pos.z] for chain in structure[0] for residue in chain
                     for atom in residue], dtype=np.float64)


def atoms_to_map(path: str, box: int, pixel_size_angstrom: float) -> np.ndarray:
    """The model's density on a ``(box, box, box)`` grid ``[z, y, x]`` of ``pixel_size_angstrom``, centred.

    Raises:
        ValueError: unreadable model, or a model that does not fit in the box.
    """
    import gemmi

    if box < 8 or box % 2:
        raise ValueError(f"the box must be even and at least 8, got {box}")
    structure = read_atoms(path)
    positions = atom_positions(structure)
    centre = positions.mean(axis=0)
    radius = float(np.linalg.norm(positions - centre, axis=1).max())
    if radius > 0.5 * box * pixel_size_angstrom:
        raise ValueError(f"{path}: the model reaches {radius:.0f} Å from its centre, beyond the half box of "
                         f"{0.5 * box * pixel_size_angstrom:.0f} Å")
    oversampling = max(1, math.ceil(pixel_size_angstrom / FINE_SPACING_ANGSTROM))
    fine_box = box * oversampling
    spacing = pixel_size_angstrom / oversampling
    offset = np.full(3, (fine_box // 2) * spacing) - centre
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                atom.pos = gemmi.Position(atom.pos.x + offset[0], atom.pos.y + offset[1], atom.pos.z + offset[2])
    side = fine_box * spacing
    structure.cell = gemmi.UnitCell(side, side, side, 90.0, 90.0, 90.0)
    structure.spacegroup_hm = "P 1"
    calculator = gemmi.DensityCalculatorE()
    calculator.d_min = 0.0
    calculator.set_grid_cell_and_spacegroup(structure)
    calculator.grid.set_size(fine_box, fine_box, fine_box)
    calculator.put_model_density_on_grid(structure[0])
    density = np.array(calculator.grid, copy=True).transpose(2, 1, 0)
    logger.info("%s: %d atoms, radius %.0f Å, density on %d³ at %.2f Å, cropped to %d³ at %.2f Å", path,
                len(positions), radius, fine_box, spacing, box, pixel_size_angstrom)
    volume = torch.from_numpy(density.astype(np.float64))
    return resample_volume(volume, box).numpy().astype(np.float32)
