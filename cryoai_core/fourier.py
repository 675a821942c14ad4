"""Centred discrete Fourier transforms, FFT-exact frequency grids, phase shifts and Fourier resampling.

Conventions (written here once; every other module uses these functions):

- Images are ``[..., y, x]`` and volumes ``[..., z, y, x]``; ``x`` is the fast (column) axis, as in MRC.
- The centre of a box of side ``L`` is index ``L // 2`` on every axis, in real and in Fourier space
  (RELION / cryoDRGN). Centred transforms are ``fftshift(fftn(ifftshift(x)))``.
- The forward transform is unnormalised (numpy's "backward" norm); the inverse carries ``1 / L**d``.
- Frequencies are FFT-exact: ``(arange(L) - L // 2) / (L * pixel_size)``, in 1/Å when ``pixel_size`` is in Å
  and in cycles per pixel when ``pixel_size`` is 1. Frequency grids store ``(kx, ky[, kz])`` in their last axis.
- Translating an image by ``t`` (its content moves by ``+t``) multiplies its transform by ``exp(-2πi k·t)``.
- A particle with RELION origin ``o`` sits at ``-o`` from the box centre: its transform is the centred
  one times ``exp(+2πi k·o)`` (:func:`origin_phase`).
"""
import math

import torch

_DIMS_2D = (-2, -1)
_DIMS_3D = (-3, -2, -1)


def fft2_centered(images: torch.Tensor) -> torch.Tensor:
    """Centred 2D DFT over the last two axes. ``(..., L, L)`` real or complex -> ``(..., L, L)`` complex."""
    shifted = torch.fft.ifftshift(images, dim=_DIMS_2D)
    return torch.fft.fftshift(torch.fft.fft2(shifted, dim=_DIMS_2D), dim=_DIMS_2D)


def ifft2_centered(spectra: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_centered`. ``(..., L, L)`` complex -> ``(..., L, L)`` complex."""
    shifted = torch.fft.ifftshift(spectra, dim=_DIMS_2D)
    return torch.fft.fftshift(torch.fft.ifft2(shifted, dim=_DIMS_2D), dim=_DIMS_2D)


def fft3_centered(volume: torch.Tensor) -> torch.Tensor:
    """Centred 3D DFT over the last three axes. ``(..., L, L, L)`` -> complex ``(..., L, L, L)``."""
    shifted = torch.fft.ifftshift(volume, dim=_DIMS_3D)
    return torch.fft.fftshift(torch.fft.fftn(shifted, dim=_DIMS_3D), dim=_DIMS_3D)


def ifft3_centered(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3_centered`. Complex ``(..., L, L, L)`` -> complex ``(..., L, L, L)``."""
    shifted = torch.fft.ifftshift(spectrum, dim=_DIMS_3D)
    return torch.fft.fftshift(torch.fft.ifftn(shifted, dim=_DIMS_3D), dim=_DIMS_3D)


def frequencies_1d(box: int, pixel_size: float = 1.0, *, dtype=torch.float32,
                   device=None) -> torch.Tensor:
    """FFT-exact centred frequencies ``(arange(L) - L // 2) / (L * pixel_size)``, shape ``(L,)``."""
    return (torch.arange(box, dtype=dtype, device=device) - box // 2) / (box * pixel_size)


def frequency_grid_2d(box: int, pixel_size: float = 1.0, *, dtype=torch.float32,
                      device=None) -> torch.Tensor:
    """Centred 2D frequency grid of shape ``(L, L, 2)``; ``[iy, ix] = (kx, ky)``, x being the column."""
    k = frequencies_1d(box, pixel_size, dtype=dtype, device=device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def frequency_grid_3d(box: int, pixel_size: float = 1.0, *, dtype=torch.float32,
                      device=None) -> torch.Tensor:
    """Centred 3D frequency grid of shape ``(L, L, L, 3)``; ``[iz, iy, ix] = (kx, ky, kz)``."""
    k = frequencies_1d(box, pixel_size, dtype=dtype, device=device)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    return torch.stack([kx, ky, kz], dim=-1)


def radial_frequency_2d(box: int, pixel_size: float = 1.0, **kwargs) -> torch.Tensor:
    """``|k|`` on the centred 2D grid, shape ``(L, L)``, in the units of :func:`frequencies_1d`."""
    return torch.linalg.vector_norm(frequency_grid_2d(box, pixel_size, **kwargs), dim=-1)


def translation_phase(freqs: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Phase factors ``exp(-2πi k·t)`` that translate content by ``+t``.

    Args:
        freqs: ``(..., N, 2)`` frequencies ``(kx, ky)`` (1/Å, or cycles/px).
        shifts: ``(B, 2)`` translations ``(tx, ty)`` in the reciprocal unit of ``freqs`` (Å, or px).

    Returns:
        ``(B, *freqs.shape[:-1])`` complex factors.
    """
    flat = freqs.reshape(-1, 2)
    phase = -2.0 * math.pi * (shifts.to(flat.dtype) @ flat.T)
    return torch.polar(torch.ones_like(phase), phase).reshape(shifts.shape[0], *freqs.shape[:-1])


def origin_phase(freqs: torch.Tensor, origins: torch.Tensor) -> torch.Tensor:
    """Phase factors ``exp(+2πi k·o)`` of particles with RELION origins ``o`` (translated by ``-o``).

    Args:
        freqs: ``(..., N, 2)`` frequencies ``(kx, ky)``.
        origins: ``(B, 2)`` RELION ``(originX, originY)`` in the reciprocal unit of ``freqs``.

    Returns:
        ``(B, *freqs.shape[:-1])`` complex factors.
    """
    return translation_phase(freqs, -origins)


def translate_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate real images ``(B, L, L)`` by ``shifts_px`` ``(B, 2)`` pixels (content moves by +t)."""
    box = images.shape[-1]
    freqs = frequency_grid_2d(box, dtype=images.dtype, device=images.device)
    spectra = fft2_centered(images) * translation_phase(freqs, shifts_px)
    return ifft2_centered(spectra).real


def translate_volume(volume: torch.Tensor, shift_px) -> torch.Tensor:
    """Translate a real map ``(L, L, L)`` ``[z, y, x]`` by ``shift_px`` ``(3,)`` voxels ``(x, y, z)`` (content
    moves by ``+t``): ``exp(-2πi k·t)`` on its transform, exact for band-limited content, periodic (what
    leaves one face of the box comes back through the opposite one)."""
    box = volume.shape[-1]
    freqs = frequency_grid_3d(box, dtype=torch.float64, device=volume.device)
    shift = torch.as_tensor(shift_px, dtype=torch.float64, device=volume.device).reshape(3)
    phase = torch.exp(-2j * math.pi * (freqs @ shift))
    moved = ifft3_centered(fft3_centered(volume.to(torch.float64)) * phase).real
    return moved.to(volume.dtype)


def rotate_180_in_plane(images: torch.Tensor) -> torch.Tensor:
    """Rotate images ``(..., L, L)`` by 180° about the box centre (index ``L // 2``).

    ``out[y, x] = in[-y, -x]`` with coordinates relative to the centre. For even ``L`` this is a flip
    followed by a roll of one pixel (the reference code forgot the roll). The transform of the result
    is ``F(-k)``, the complex conjugate of ``F(k)`` for a real image.
    """
    flipped = torch.flip(images, dims=_DIMS_2D)
    if images.shape[-1] % 2 == 0:
        flipped = torch.roll(flipped, shifts=(1, 1), dims=_DIMS_2D)
    return flipped


def rotate_quarter_turns_in_plane(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate images ``(B, L, L)`` by ``turns`` ``(B,)`` quarter turns (90°, from +x towards +y) about the box
    centre (index ``L // 2``); exact, no interpolation.

    With coordinates relative to the centre, one turn gives ``out[y, x] = in[-x, y]`` (indices modulo ``L``,
    as in :func:`rotate_180_in_plane`): the content at ``(x, y)`` moves to ``(-y, x)``. The pose of the
    result is :func:`cryoai_core.rotations.compose_in_plane_quarter_turns` of the image's pose.
    """
    box = images.shape[-1]
    if images.shape[-2] != box:
        raise ValueError(f"quarter turns need square images, got {tuple(images.shape[-2:])}")
    relative = torch.arange(box, device=images.device) - box // 2
    rows, cols = torch.meshgrid(relative, relative, indexing="ij")
    source_rows, source_cols = rows, cols
    sources = []
    for _ in range(4):
        sources.append(((source_rows + box // 2) % box * box + (source_cols + box // 2) % box).reshape(-1))
        source_rows, source_cols = -source_cols, source_rows
    table = torch.stack(sources)                                                    # (4, L*L)
    index = table[turns.to(images.device).long() % 4]                               # (B, L*L)
    return images.reshape(images.shape[0], -1).gather(1, index).reshape(images.shape)


def _crop_or_pad_centered(spectrum: torch.Tensor, new_box: int, ndim: int) -> torch.Tensor:
    old_box = spectrum.shape[-1]
    if new_box == old_box:
        return spectrum
    if new_box < old_box:
        start = old_box // 2 - new_box // 2
        index = slice(start, start + new_box)
        return spectrum[(Ellipsis,) + (index,) * ndim]
    start = new_box // 2 - old_box // 2
    out = spectrum.new_zeros(spectrum.shape[:-ndim] + (new_box,) * ndim)
    index = slice(start, start + old_box)
    out[(Ellipsis,) + (index,) * ndim] = spectrum
    return out


def resample_images(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Fourier-crop (downsample) or zero-pad (upsample) real images ``(..., L, L)`` to ``new_box``.

    The field of view is kept, so the pixel size becomes ``pixel_size * L / new_box``. Values are scaled
    by ``(new_box / L)**2`` so that the mean pixel value is preserved.
    """
    old_box = images.shape[-1]
    if new_box == old_box:
        return images
    spectra = _crop_or_pad_centered(fft2_centered(images), new_box, 2)
    return ifft2_centered(spectra).real * (new_box / old_box) ** 2


def resample_volume(volume: torch.Tensor, new_box: int) -> torch.Tensor:
    """Fourier-crop or zero-pad a real volume ``(..., L, L, L)`` to ``new_box`` (see :func:`resample_images`)."""
    old_box = volume.shape[-1]
    if new_box == old_box:
        return volume
    spectrum = _crop_or_pad_centered(fft3_centered(volume), new_box, 3)
    return ifft3_centered(spectrum).real * (new_box / old_box) ** 3


def crop_or_pad_real(array: torch.Tensor, new_box: int, ndim: int) -> torch.Tensor:
    """Centred real-space window (crop or zero-pad) of the last ``ndim`` axes to ``new_box``."""
    return _crop_or_pad_centered(array, new_box, ndim)
