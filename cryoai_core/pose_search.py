"""Batch-wise global pose search against the current map, used to bootstrap the amortized encoder.

Plain gradient descent on amortized poses rarely leaves the random-pose basin within a CPU budget (see
the project notes); a cheap exhaustive search over a quasi-uniform SO(3) grid and a small translation
grid, for the images of the current batch only, gives the encoder targets until it agrees with the
search. The cost per step depends on the batch, never on the data set size.

Scores are the Fourier-space L2 distances ``Σ_k w |Y − C·S·V̂|²`` on a half-disk, expanded as
``Σ w C²|V̂|² − 2 Re Σ w conj(Y) C S V̂`` (+ a constant), so that the whole grid is two matrix products.
"""
import dataclasses
import math

import roma
import torch
import torch.nn.functional as F

from cryoai_core.fourier import frequency_grid_3d
from cryoai_core.models.forward_model import HalfDisk, shift_phase
from cryoai_core.slicing import central_slice_coords

_PSI = 1.533751168755204288118041
"""Root of ``x**4 = x + 4``; with sqrt(2) it spreads super-Fibonacci points evenly (Alexa, CVPR 2022)."""


def super_fibonacci_rotations(count: int, dtype=torch.float64) -> torch.Tensor:
    """``count`` quasi-uniform rotations ``(count, 3, 3)`` from a super-Fibonacci spiral of unit quaternions."""
    s = torch.arange(count, dtype=torch.float64) + 0.5
    t = s / count
    r, big_r = torch.sqrt(t), torch.sqrt(1.0 - t)
    alpha, beta = 2.0 * math.pi * s / math.sqrt(2.0), 2.0 * math.pi * s / _PSI
    quaternions = torch.stack([r * torch.sin(alpha), r * torch.cos(alpha),
                               big_r * torch.sin(beta), big_r * torch.cos(beta)], dim=-1)
    return roma.unitquat_to_rotmat(quaternions).to(dtype)


def grid_spacing_degrees(count: int) -> float:
    """Typical angular spacing of ``count`` uniformly spread rotations: ``(8π² / count)^(1/3)`` radians."""
    return math.degrees((8.0 * math.pi ** 2 / count) ** (1.0 / 3.0))


class GridVolume:
    """A map transform cached on an oversampled Cartesian grid, sampled by trilinear interpolation.

    Args:
        values: complex ``(M, M, M)`` transform ``[kz, ky, kx]`` on a grid of spacing ``1 / M`` cycles/px.
    """

    def __init__(self, values: torch.Tensor):
        self.size = values.shape[-1]
        self._grid = torch.stack([values.real, values.imag]).unsqueeze(0).float()

    @classmethod
    @torch.no_grad()
    def from_network(cls, network, box: int, radius_px: float, oversampling: int = 2) -> "GridVolume":
        """Evaluate ``network`` (coords in cycles/px -> complex) inside ``radius_px`` Fourier pixels."""
        size = oversampling * box
        parameter = next(iter(network.parameters()), None) if hasattr(network, "parameters") else None
        device = parameter.device if parameter is not None else torch.device("cpu")
        coords = frequency_grid_3d(size, device=device)
        inside = torch.linalg.vector_norm(coords, dim=-1) * box <= radius_px + 2.0
        values = torch.zeros(coords.shape[:-1], dtype=torch.complex64, device=device)
        values[inside] = network(coords[inside]).to(torch.complex64)
        return cls(values)

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        """Complex values ``(...,)`` at ``(..., 3)`` coordinates in cycles per (training) pixel."""
        index = self.size // 2 + coords.float() * self.size
        normalized = (2.0 * index / (self.size - 1) - 1.0).reshape(1, -1, 1, 1, 3)
        values = F.grid_sample(self._grid, normalized, mode="bilinear", padding_mode="zeros", align_corners=True)
        values = values.reshape(2, *coords.shape[:-1])
        return torch.complex(values[0], values[1])


@dataclasses.dataclass(frozen=True)
class SearchResult:
    rotations: torch.Tensor
    """``(B, 3, 3)`` best RELION matrices."""
    origins_px: torch.Tensor
    """``(B, 2)`` best RELION origins in pixels."""
    distances: torch.Tensor
    """``(B,)`` best weighted L2 distances (up to the image energy)."""


class PoseSearch:
    """Exhaustive search over rotations x translations, then a local refinement around the best.

    Args:
        num_rotations: size of the global rotation grid (randomly re-oriented at every call).
        shift_extent_px: translations searched in ``[-extent, extent]`` pixels per axis.
        shift_step_px: translation grid step.
        refine_steps: number of halvings of the local refinement around the best rotation.
    """

    def __init__(self, num_rotations: int = 4096, shift_extent_px: float = 2.0, shift_step_px: float = 1.0,
                 refine_steps: int = 2):
        self.base_rotations = super_fibonacci_rotations(num_rotations, torch.float32)
        steps = torch.arange(-shift_extent_px, shift_extent_px + 1e-6, shift_step_px)
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        self.shifts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
        self.step_degrees = grid_spacing_degrees(num_rotations)
        self.refine_steps = refine_steps
        offsets = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                               dtype=torch.float32)
        self.local_offsets = offsets

    def _scores(self, weighted_conj_images: torch.Tensor, ctf_energy: torch.Tensor, phases: torch.Tensor,
                slices: torch.Tensor) -> torch.Tensor:
        """Distances ``(B, S, R)`` for slices ``(R, N)`` shared by all images."""
        batch, count = weighted_conj_images.shape
        u = weighted_conj_images.unsqueeze(1) * phases.unsqueeze(0)                  # (B, S, N)
        left = torch.cat([u.real, -u.imag], dim=-1).reshape(-1, 2 * count)
        right = torch.cat([slices.real, slices.imag], dim=-1).T                      # (2N, R)
        cross = (left @ right).reshape(batch, -1, slices.shape[0])
        norm = ctf_energy @ (slices.abs() ** 2).T                                    # (B, R)
        return norm.unsqueeze(1) - 2.0 * cross

    @torch.no_grad()
    def search(self, volume, targets: torch.Tensor, ctf: torch.Tensor | None, disk: HalfDisk,
               generator: torch.Generator | None = None) -> SearchResult:
        """Best poses of ``B`` images given their half-disk transforms ``targets`` ``(B, N)`` and CTFs."""
        device = targets.device
        ctf = torch.ones(targets.shape, dtype=torch.float32, device=device) if ctf is None else ctf.float()
        weights = disk.weights.float()
        weighted = weights * ctf * targets.conj()
        ctf_energy = weights * ctf ** 2
        shifts = self.shifts.to(device)
        phases = shift_phase(disk.freqs_px.float(), shifts)                          # (S, N)
        offset = roma.random_rotmat(generator=generator).float().to(device)
        rotations = self.base_rotations.to(device) @ offset
        slices = volume(central_slice_coords(rotations, disk.freqs_px.float()))      # (R, N)
        scores = self._scores(weighted, ctf_energy, phases, slices)
        flat = scores.reshape(scores.shape[0], -1).argmin(dim=1)
        best_shift, best_rotation = flat // rotations.shape[0], flat % rotations.shape[0]
        current = rotations[best_rotation]
        best_distance = scores.reshape(scores.shape[0], -1).gather(1, flat[:, None]).squeeze(1)
        current_shift = shifts[best_shift]
        step = math.radians(self.step_degrees) / 2.0
        for _ in range(self.refine_steps):
            current, current_shift, best_distance = self._refine(
                volume, weighted, ctf_energy, phases, disk, current, step)
            step /= 2.0
        return SearchResult(current, current_shift, best_distance)

    def _refine(self, volume, weighted, ctf_energy, phases, disk, rotations, step_radians):
        """Try ``27`` small rotations around each image's current best (and every translation)."""
        perturb = roma.rotvec_to_rotmat(self.local_offsets.to(rotations.device) * step_radians)  # (K, 3, 3)
        candidates = rotations.unsqueeze(1) @ perturb.unsqueeze(0)                    # (B, K, 3, 3)
        batch, count = candidates.shape[:2]
        coords = central_slice_coords(candidates.reshape(-1, 3, 3), disk.freqs_px.float())
        slices = volume(coords).reshape(batch, count, -1)                             # (B, K, N)
        u = weighted.unsqueeze(1) * phases.unsqueeze(0)                               # (B, S, N)
        cross = torch.einsum("bsn,bkn->bsk", u, slices).real
        norm = torch.einsum("bn,bkn->bk", ctf_energy, slices.abs() ** 2)
        scores = (norm.unsqueeze(1) - 2.0 * cross).reshape(batch, -1)
        flat = scores.argmin(dim=1)
        shift_index, rotation_index = flat // count, flat % count
        chosen = candidates[torch.arange(batch), rotation_index]
        return chosen, self.shifts.to(chosen.device)[shift_index], scores.gather(1, flat[:, None]).squeeze(1)
