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


def central_slices(volume, rotations: torch.Tensor, freqs_2d: torch.Tensor) -> torch.Tensor:
    """Values ``(B, N)`` of ``volume`` on the central slices of ``B`` poses (``rotations (B, 3, 3)``) at the
    in-plane frequencies ``freqs_2d (N, 2)``: through the volume's own ``slices`` when it has one (a
    :class:`FoldedGrid`), else by calling it on :func:`central_slice_coords`."""
    slices = getattr(volume, "slices", None)
    return slices(rotations, freqs_2d) if slices is not None else volume(central_slice_coords(rotations, freqs_2d))


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

    Each plane is followed by two zero rows and columns, and the planes past the grid are all zero. A point off
    the grid is clamped, per axis, to the index -1.5 or ``M + 0.5``, between two zeros, so it reads exact zeros
    (as with the 3D sampler) whatever the float32 rounding of its 2D coordinates, which run up to ~``M^1.5``
    pixels and so carry about 1e-4 pixel.
    """

    _MARGIN = 2
    """Zero rows and columns after each plane, and zero planes on each side of the grid."""

    def __init__(self, grid: FourierGrid):
        m, margin = grid.size, self._MARGIN
        self.size, self.spacing = m, grid.spacing
        self.block = m + margin
        self.columns = math.ceil(math.sqrt(m + 1))
        rows = -(-(m + 1) // self.columns)
        planes = F.pad(grid._grid[0], (0, margin, 0, margin, 0, rows * self.columns - m))   # (2, P, m+2, m+2)
        image = planes.reshape(2, rows, self.columns, self.block, self.block).permute(0, 1, 3, 2, 4)
        self.image = image.reshape(1, 2, rows * self.block, self.columns * self.block).contiguous()
        height, width = self.image.shape[-2:]
        # Grid index i of x (y) -> the sampler's normalised coordinate of the first plane, i * step - 1.
        step = torch.tensor([2.0 / (width - 1), 2.0 / (height - 1)])
        self._xy_step = step.repeat(2)                                                     # (4,): x, y, x, y
        self._xy_origin = (m // 2) * self._xy_step - 1.0
        self._reach = half = margin - 0.5                                       # index -1.5 and m + 0.5
        self._xy_low, self._xy_high = -half * self._xy_step - 1.0, (m - 1 + half) * self._xy_step - 1.0
        self._z_low, self._z_high = margin - half, m - 1 + margin + half                     # z index + margin
        # Plane j - margin (below) and j - margin + 1 (above) of a point whose z index + margin has floor j; planes
        # off the grid read the zero plane m.
        plane = torch.arange(-margin, m + margin + 1)
        plane = plane.masked_fill((plane < 0) | (plane >= m), m)
        row = torch.div(plane, self.columns, rounding_mode="floor")
        corner = torch.stack([plane - row * self.columns, row], dim=-1) * self.block * step   # (m + 2 margin + 1, 2)
        self._plane_offsets = torch.cat([corner[:-1], corner[1:]], dim=-1)                   # (m + 2 margin, 4)

    def sample(self, coords: torch.Tensor) -> torch.Tensor:
        """Complex values ``(...,)`` at ``(..., 3)`` frequencies ``(kx, ky, kz)``; zero beyond the grid."""
        flat = coords.reshape(-1, 3).to(torch.float32)
        device = flat.device
        xy = torch.addcmul(self._xy_origin.to(device), flat[:, [0, 1, 0, 1]], self._xy_step.to(device) / self.spacing)
        z = flat[:, 2] * (1.0 / self.spacing) + (self.size // 2 + self._MARGIN)
        return self._lookup(xy, z, clamp=True).reshape(coords.shape[:-1])

    __call__ = sample

    def slices(self, rotations: torch.Tensor, freqs_2d: torch.Tensor) -> torch.Tensor:
        """Values ``(B, N)`` on the central slices of ``B`` poses (``rotations (B, 3, 3)``) at the in-plane
        frequencies ``freqs_2d (N, 2)``: :meth:`sample` of :func:`central_slice_coords`, with the grid's units
        folded into two small matrix products."""
        device = freqs_2d.device
        count, m = len(rotations), self.size
        scale = torch.cat([self._xy_step.to(device)[:2], torch.ones(1, device=device)]) / self.spacing
        axes = rotations[:, :2, :].to(torch.float32) * scale                                  # (B, 2, 3)
        plane = torch.cat([freqs_2d.to(torch.float32), torch.ones(len(freqs_2d), 1, device=device)], dim=-1)
        xy_origin = self._xy_origin.to(device).expand(count, 1, 4)
        xy = (plane @ torch.cat([axes[:, :, [0, 1, 0, 1]], xy_origin], dim=1)).reshape(-1, 4)   # (B N, 4)
        z_origin = torch.full((count, 1, 1), m // 2 + self._MARGIN, dtype=torch.float32, device=device)
        z = (plane @ torch.cat([axes[:, :, 2:], z_origin], dim=1)).reshape(-1)                   # (B N,)
        # A rotation keeps a frequency's norm: points within the clamp's bounds need no clamping.
        reach = float(torch.linalg.vector_norm(freqs_2d.float(), dim=-1).max()) / self.spacing if len(plane) else 0.0
        clamp = reach + 1e-3 > min(m // 2, m - 1 - m // 2) + self._reach
        return self._lookup(xy, z, clamp).reshape(count, len(freqs_2d))

    def _lookup(self, xy: torch.Tensor, z: torch.Tensor, clamp: bool) -> torch.Tensor:
        """Complex ``(S,)`` at points given as ``xy (S, 4)`` (the normalised coordinates of x, y in the first
        plane, twice) and ``z (S,)`` (the z index plus the margin); both are overwritten."""
        if clamp:
            torch.clamp(xy, self._xy_low.to(xy.device), self._xy_high.to(xy.device), out=xy)
            z.clamp_(self._z_low, self._z_high)
        # z ≥ 0, so truncation is the floor; NaN (a diverged run's poses) reads the first row and stays NaN below.
        below = z.to(torch.int64).clamp_(0, len(self._plane_offsets) - 1)
        weight = z - below
        xy += self._plane_offsets.to(xy.device).index_select(0, below)
        values = F.grid_sample(self.image, xy.view(1, -1, 2, 2), mode="bilinear", padding_mode="zeros",
                               align_corners=True)[0]                                 # (re/im, S, below/above)
        out = torch.empty(len(z), dtype=torch.complex64, device=z.device)
        torch.lerp(values[..., 0], values[..., 1], weight, out=torch.view_as_real(out).T)
        return out


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

