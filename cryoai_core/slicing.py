"""Central slices (Fourier-slice theorem) and projections of voxel maps.

The transform of the projection ``image(x, y) = ∫ V(Aᵀ (x, y, z)) dz`` is the central slice
``V̂(Aᵀ (kx, ky, 0))`` (see :mod:`cryoai_core.rotations` for ``A``). With row vectors this is
``(kx, ky, 0) @ A``, which is what :func:`central_slice_coords` computes for a batch of poses.
"""
import math

import torch
import torch.nn.functional as F

from cryoai_core.fourier import crop_or_pad_real, fft3_centered, frequency_grid_2d, frequency_grid_3d, ifft2_centered


def central_slice_coords(rotations: torch.Tensor, freqs_2d: torch.Tensor) -> torch.Tensor:
    """3D frequencies of the central slices of ``B`` poses.

    Args:
        rotations: ``(B, 3, 3)`` RELION matrices ``A``.
        freqs_2d: ``(N, 2)`` in-plane frequencies ``(kx, ky)`` in any unit.

    Returns:
        ``(B, N, 3)`` frequencies ``Aᵀ (kx, ky, 0)`` in the unit of ``freqs_2d``.
    """
    plane = torch.cat([freqs_2d, torch.zeros_like(freqs_2d[:, :1])], dim=-1).to(rotations.dtype)
    return plane.unsqueeze(0) @ rotations


def trilinear_apodization(box: int, padded_box: int, dtype, device) -> torch.Tensor:
    """Real-space weight ``sinc²(x/M) sinc²(y/M) sinc²(z/M)`` that trilinear Fourier interpolation imposes."""
    x = (torch.arange(box, dtype=dtype, device=device) - box // 2) / padded_box
    weight = torch.sinc(x) ** 2
    return weight[:, None, None] * weight[None, :, None] * weight[None, None, :]


EVALUATION_CHUNK = 65536
"""Points per call when a network is evaluated on a whole Fourier grid: activations of a few tens of MiB, which
blocks freed by a training step can hold (see :meth:`FourierGrid.from_function`)."""


def evaluate_in_chunks(function, coords: torch.Tensor, chunk: int = EVALUATION_CHUNK) -> torch.Tensor:
    """``function`` on ``coords`` ``(P, 3)``, ``chunk`` points at a time: complex64 ``(P,)``."""
    parts = coords.split(chunk) if len(coords) else (coords,)
    return torch.cat([function(part).to(torch.complex64) for part in parts])


class FourierGrid:
    """Complex values on a centred cubic Fourier grid, sampled anywhere by trilinear interpolation.

    The one sampler of the package: the simulator and evaluation (maps, 1/Å) and the pose search
    (FourierNet cached in cycles per training pixel) both read their grids through it.

    Args:
        values: complex ``(M, M, M)`` values ``[kz, ky, kx]``; index ``M // 2`` is the zero frequency.
        spacing: frequency step between grid points, in the unit that :meth:`sample` receives.
    """

    def __init__(self, values: torch.Tensor, spacing: float):
        if values.ndim != 3 or len(set(values.shape)) != 1:
            raise ValueError(f"expected a cubic grid, got shape {tuple(values.shape)}")
        self.size = values.shape[-1]
        self.spacing = float(spacing)
        self._grid = torch.stack([values.real, values.imag]).unsqueeze(0).to(torch.float32)

    @classmethod
    @torch.no_grad()
    def from_function(cls, function, size: int, spacing: float, radius: float, device=None,
                      hermitian: bool = False, chunk: int = EVALUATION_CHUNK) -> "FourierGrid":
        """Evaluate ``function`` (coords ``(P, 3)`` -> complex ``(P,)``) on the grid points within ``radius``.

        ``hermitian``: ``function(-k) = conj(function(k))`` holds exactly (the transform of a real map, as
        FourierNet builds it), so only half of the points are evaluated and the others are their mirrors'
        conjugates. On a grid of even size the first plane of each axis has no mirror and is evaluated too.

        ``function`` is called on at most ``chunk`` points at a time: a network's activations on every point of
        the ball at once would be blocks of hundreds of MiB that no block freed by a training step can hold, so
        each refresh would grow the heap (``cryoai_core/allocator.py``) and fault in fresh pages."""
        coords = frequency_grid_3d(size, device=device) * (size * spacing)
        inside = torch.linalg.vector_norm(coords, dim=-1) <= radius
        values = torch.zeros(coords.shape[:-1], dtype=torch.complex64, device=device)
        if not hermitian:
            values[inside] = evaluate_in_chunks(function, coords[inside], chunk)
            return cls(values, spacing)
        # Indices first.. of every axis pair i with 2 (size // 2) - i: on the flattened sub-cube, a with n - 1 - a.
        first = 1 - size % 2
        mirrored = torch.zeros_like(inside)
        count = (size - first) ** 3
        mirrored[first:, first:, first:] = (torch.arange(count, device=device) >= (count + 1) // 2).reshape(
            (size - first,) * 3)
        evaluated = inside & ~mirrored
        values[evaluated] = evaluate_in_chunks(function, coords[evaluated], chunk)
        cube = values[first:, first:, first:]
        cube[mirrored[first:, first:, first:]] = cube.flip(0, 1, 2).conj()[mirrored[first:, first:, first:]]
        return cls(values, spacing)

    def sample(self, coords: torch.Tensor) -> torch.Tensor:
        """Complex values ``(...,)`` at ``(..., 3)`` frequencies ``(kx, ky, kz)``; zero beyond the grid."""
        m = self.size
        index = m // 2 + coords / self.spacing
        normalized = (2.0 * index / (m - 1) - 1.0).to(torch.float32).reshape(1, -1, 1, 1, 3)
        values = F.grid_sample(self._grid, normalized, mode="bilinear", padding_mode="zeros", align_corners=True)
        values = values.reshape(2, *coords.shape[:-1])
        return torch.complex(values[0], values[1])

    __call__ = sample

    def sampler(self):
        """The fastest sampler of this grid on its device: on a CPU its :class:`FoldedGrid` (made once, kept),
        elsewhere the grid itself."""
        if self._grid.device.type != "cpu":
            return self
        if getattr(self, "_folded", None) is None:
            self._folded = FoldedGrid(self)
        return self._folded


class FoldedGrid:
    """A :class:`FourierGrid`'s planes laid side by side in one 2D image, sampled by two bilinear lookups (the
    planes below and above a point) blended along kz: the same trilinear interpolation, about four times faster
    on a CPU, where PyTorch's 2D sampler is vectorised and its 3D one is not.

    Each plane is followed by a zero row and column, and one more plane is all zero, so that a point off the
    grid reads zeros as with the 3D sampler. The 2D coordinates (up to ~``M^1.5`` pixels) carry float32
    rounding of about 1e-4 pixel.
    """

    def __init__(self, grid: FourierGrid):
        m = grid.size
        self.size, self.spacing = m, grid.spacing
        self.block = m + 1
        self.columns = math.ceil(math.sqrt(m + 1))
        rows = -(-(m + 1) // self.columns)
        planes = F.pad(grid._grid[0], (0, 1, 0, 1, 0, rows * self.columns - m))          # (2, P, m+1, m+1)
        image = planes.reshape(2, rows, self.columns, self.block, self.block).permute(0, 1, 3, 2, 4)
        self.image = image.reshape(1, 2, rows * self.block, self.columns * self.block).contiguous()
        self.height, self.width = self.image.shape[-2:]

    def sample(self, coords: torch.Tensor) -> torch.Tensor:
        """Complex values ``(...,)`` at ``(..., 3)`` frequencies ``(kx, ky, kz)``; zero beyond the grid."""
        m = self.size
        x, y, z = (coords.reshape(-1, 3).to(torch.float32) * (1.0 / self.spacing) + m // 2).unbind(-1)
        below = torch.floor(z)
        on_plane = (x > -1.0) & (x < m) & (y > -1.0) & (y < m)
        x, y = x.masked_fill(~on_plane, 0.0), y.masked_fill(~on_plane, 0.0)
        points = torch.empty(2, len(z), 2, dtype=torch.float32, device=coords.device)    # (plane, S, xy)
        for offset in (0, 1):
            plane = below + offset
            plane = plane.masked_fill(~(on_plane & (plane >= 0) & (plane < m)), float(m))     # the zero plane
            row = torch.floor(plane * (1.0 / self.columns) + 1e-3)
            column = plane - row * self.columns
            torch.add(x, column, alpha=self.block, out=points[offset, :, 0])
            torch.add(y, row, alpha=self.block, out=points[offset, :, 1])
        points[..., 0] *= 2.0 / (self.width - 1)
        points[..., 1] *= 2.0 / (self.height - 1)
        points -= 1.0
        values = F.grid_sample(self.image, points.reshape(1, 1, -1, 2), mode="bilinear", padding_mode="zeros",
                               align_corners=True).reshape(2, 2, -1)                               # (re/im, plane, S)
        values = torch.lerp(values[:, 0], values[:, 1], z - below)
        return torch.complex(values[0], values[1]).reshape(coords.shape[:-1])

    __call__ = sample


class VoxelFourierVolume:
    """The Fourier transform of a voxel map, sampled anywhere by trilinear interpolation.

    The map is divided by the trilinear apodization (gridding correction), zero-padded ``oversampling``
    times and transformed once; slices are then cheap. Used by the simulator and the evaluation.

    Args:
        volume: ``(L, L, L)`` real map, ``[z, y, x]``.
        voxel_size_angstrom: voxel size of ``volume``.
        oversampling: padding factor (2 keeps interpolation errors at the per-mille level for smooth maps).
    """

    def __init__(self, volume: torch.Tensor, voxel_size_angstrom: float, oversampling: int = 2):
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"expected a cubic volume, got shape {tuple(volume.shape)}")
        box = volume.shape[-1]
        padded = box * oversampling
        work = volume.to(torch.float64)
        work = work / trilinear_apodization(box, padded, work.dtype, work.device)
        spectrum = fft3_centered(crop_or_pad_real(work, padded, 3))
        self.grid = FourierGrid(spectrum, spacing=1.0 / (padded * voxel_size_angstrom))
        self.box = box
        self.padded_box = padded
        self.voxel_size_angstrom = float(voxel_size_angstrom)

    def sample(self, freqs_3d: torch.Tensor) -> torch.Tensor:
        """Values of the (unnormalised, centred) map transform at ``freqs_3d`` ``(..., 3)`` in 1/Å.

        Returns a complex tensor of shape ``freqs_3d.shape[:-1]``; zero beyond the padded grid.
        """
        return self.grid.sample(freqs_3d)

    def project(self, rotations: torch.Tensor, box: int | None = None,
                pixel_size_angstrom: float | None = None) -> torch.Tensor:
        """Real-space projections (line integrals, density × Å) for ``B`` poses, ``(B, box, box)``.

        The output box and pixel size default to the map's; other values resample the map in Fourier
        space (frequencies beyond the map's Nyquist are zero).
        """
        box = self.box if box is None else int(box)
        pixel = self.voxel_size_angstrom if pixel_size_angstrom is None else float(pixel_size_angstrom)
        freqs = frequency_grid_2d(box, pixel, dtype=torch.float64).reshape(-1, 2)
        nyquist = 0.5 / self.voxel_size_angstrom
        inside = (freqs.abs() < nyquist).all(dim=-1)
        coords = central_slice_coords(rotations.to(torch.float64), freqs)
        spectra = self.sample(coords) * inside.to(torch.float32)
        # A DFT sample of the map is Σ V ≈ V_cont / p³; of a projection image, Σ I ≈ I_cont / P².
        scale = self.voxel_size_angstrom ** 3 / pixel ** 2
        return ifft2_centered(spectra.reshape(-1, box, box) * scale).real

