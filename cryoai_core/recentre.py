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

The particles themselves may also sit off centre on average: picks made against an off-centre
reference, or re-extracted around a sub-complex, share one offset (the EMPIAR-10180 table's origins
average 0.10 of the box on each axis: 6.5 px at 64 px, where the search reaches ±9.6 px). No map
translation absorbs that (``(A c)_xy`` averages to zero over orientations), so training sees the images
moved by the particles' mean origin ``μ`` (:func:`mean_particle_origin_px`), estimated as the point about
which the average image is symmetric: the average projection over many orientations is close to
symmetric about the particle's centre, and its CTF rings are too. An image moved by ``+μ`` has the
origin ``o − μ``; the exported origins add ``μ`` back.
"""
import numpy as np
import torch

from cryoai_core.fourier import translate_images, translate_volume


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


def symmetry_centre_px(image) -> np.ndarray:
    """The point ``p`` ``(2,)`` ``(x, y)`` pixels from the box centre about which an ``(L, L)`` image is most
    nearly symmetric (``I(p + u) ≈ I(p − u)``): the peak of the correlation of the image with its 180°
    rotation, which sits at ``2p``, to sub-pixel by a parabola through the peak on each axis."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"an image must be square (L, L), got shape {array.shape}")
    box = array.shape[0]
    spectrum = np.fft.fft2(np.fft.ifftshift(array - array.mean()))
    correlation = np.fft.fftshift(np.real(np.fft.ifft2(spectrum * spectrum)))
    row, column = np.unravel_index(int(np.argmax(correlation)), correlation.shape)

    def vertex(before, peak, after):
        curvature = before - 2.0 * peak + after
        return 0.5 * (before - after) / curvature if curvature < 0 else 0.0

    x = column - box // 2 + vertex(correlation[row, column - 1], correlation[row, column],
                                   correlation[row, (column + 1) % box])
    y = row - box // 2 + vertex(correlation[row - 1, column], correlation[row, column],
                                correlation[(row + 1) % box, column])
    return np.array([x, y]) / 2.0


def mean_particle_origin_px(dataset, num_samples: int = 1000, generator: torch.Generator | None = None,
                            batch_size: int = 256) -> np.ndarray:
    """``μ`` ``(2,)``: the RELION origin ``(x, y)`` of the average particle, in whole pixels of ``dataset``'s box,
    from a random sample of its images (minus the :func:`symmetry_centre_px` of their average).

    Rounded to whole pixels: moving images by whole pixels is exact (a cyclic shift), the half pixel left
    is well within the search's reach, and particles centred on average are left exactly as they are.

    Args:
        dataset: a :class:`~cryoai_core.io.dataset.ParticleDataset` (at the training box).
        num_samples: images drawn without replacement (all of them if fewer).
        generator: random generator of the draw.
    """
    count = min(int(num_samples), len(dataset))
    chosen = np.sort(torch.randperm(len(dataset), generator=generator)[:count].numpy())
    total = torch.zeros(dataset.box, dataset.box, dtype=torch.float64)
    for start in range(0, count, batch_size):
        total += dataset.__getitems__(chosen[start:start + batch_size])["image"].to(torch.float64).sum(dim=0)
    return -np.round(symmetry_centre_px((total / count).numpy()))


def centred_on_average(images: torch.Tensor, particle_origin_px) -> torch.Tensor:
    """Images ``(B, L, L)`` moved by ``+μ`` (``particle_origin_px`` ``(x, y)``, :func:`mean_particle_origin_px`),
    so that their particles sit at the box centre on average; a particle's origin becomes ``o − μ``. The
    images are returned as they are when ``μ`` is zero."""
    origin = torch.as_tensor(particle_origin_px, dtype=images.dtype).reshape(1, 2)
    if not bool(origin.any()):
        return images
    return translate_images(images, origin.to(images.device).expand(len(images), 2))
