"""Recentring a map and its particles together: the density's centre of mass goes to the box centre.

Particle images fix a map only up to a translation: a map moved by ``c`` explains every image as well once
each particle's origin moves by the projection of ``c``. Nothing in ab initio training holds the learned map
at the box centre, so it drifts (a case-b run at 64 px ended 2.9 px off centre), and the origins follow it:
they are right for the drifted map, off by ``(A c)_xy`` against the particles' true centres, and a refinement
program handed the map and the origins starts from an off-centre reference. Ab initio tools therefore hand
out the map with its density centred and the origins to match; so does cryoAI's export.

Conventions (:mod:`cryoai_core.rotations`, :mod:`cryoai_core.fourier`): a particle with RELION matrix ``A``
and origin ``o`` is the projection ``∫ V(Aᵀ (x, y, z)) dz`` moved to sit at ``−o`` from the box centre;
positions ``(x, y, z)`` are counted from the centre index ``L // 2``. If the density of ``V`` is centred at
``c``, the centred map is ``V'(x) = V(x + c)``. Since ``V'(Aᵀ x) = V(Aᵀ (x + A c))``, the projection of
``V'`` at ``A`` is that of ``V`` moved by ``−(A c)_xy``, so the same image has the origin

    o' = o − (A c)_xy

against ``V'``.
"""
import numpy as np
import torch

from cryoai_core.fourier import translate_volume


def density_centre_px(volume) -> np.ndarray:
    """Centre of mass of the positive part of a map, ``(3,)`` float64 voxels ``(x, y, z)`` from the box centre.

    Negative values (ripples, a solvent level below zero) are left out; positive noise far from the
    particle pulls the centre slightly towards the box centre, never away from the density.

    Args:
        volume: ``(L, L, L)`` map ``[z, y, x]`` (numpy or torch).

    Raises:
        ValueError: the map is not cubic or has no positive value.
    """
    array = np.asarray(volume.detach().cpu() if torch.is_tensor(volume) else volume, dtype=np.float64)
    if array.ndim != 3 or len(set(array.shape)) != 1:
        raise ValueError(f"a map must be cubic (L, L, L), got shape {array.shape}")
    mass = np.clip(array, 0.0, None)
    total = mass.sum()
    if not total > 0:
        raise ValueError("the map has no positive density: its centre is undefined")
    offsets = np.arange(array.shape[0], dtype=np.float64) - array.shape[0] // 2
    return np.array([(mass.sum(axis=(0, 1)) * offsets).sum(), (mass.sum(axis=(0, 2)) * offsets).sum(),
                     (mass.sum(axis=(1, 2)) * offsets).sum()]) / total


def recentred_map(volume: torch.Tensor, centre_px) -> torch.Tensor:
    """``V'(x) = V(x + c)``: the map ``(L, L, L)`` moved by ``−c`` voxels (Fourier phase, periodic), so that
    what sat at ``centre_px`` ``(x, y, z)`` sits at the box centre."""
    return translate_volume(volume, -np.asarray(centre_px, dtype=np.float64))


def recentred_origins(rotations, origins, centre) -> np.ndarray:
    """Origins ``o' = o − (A c)_xy`` against the map recentred on ``centre`` (module docstring).

    Args:
        rotations: ``(N, 3, 3)`` RELION matrices ``A``.
        origins: ``(N, 2)`` RELION origins ``(x, y)``.
        centre: ``(3,)`` the map's density centre ``(x, y, z)``, in the unit of ``origins`` (Å or pixels).

    Returns:
        ``(N, 2)`` float64 origins in the same unit.
    """
    matrices = np.asarray(rotations.detach().cpu() if torch.is_tensor(rotations) else rotations, dtype=np.float64)
    origins = np.asarray(origins.detach().cpu() if torch.is_tensor(origins) else origins, dtype=np.float64)
    centre = np.asarray(centre, dtype=np.float64).reshape(3)
    return origins - (matrices @ centre)[:, :2]
