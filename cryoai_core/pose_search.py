"""Pose search against a map cached on a Fourier grid: a global search and a local refinement.

Plain gradient descent on amortized poses rarely leaves the random-pose basin within a CPU budget (see
the "no bootstrap" run in ``benchmarks/README.md``), so the learner searches poses for the images of the
current batch (the cost per step depends on the batch, never on the data set size):

* **global**: a quasi-uniform SO(3) grid (randomly re-oriented at every call) x a coarse translation grid
  spanning ``±max_shift_px``, scored on a low-frequency disk where the translation grid step is resolved;
  its ``candidates`` closest poses per image are screened on the full disk, and the ``finalists`` closest of
  those are refined locally on the full disk as a knock-out: after each round of refinement the closer half
  goes on, until one is left.
* **local** (:meth:`PoseSearch.refine`): around given poses (the encoder's, or the global winners),
  ``27`` rotations (rotation vectors ``{-1, 0, 1}³ x step``) x ``9`` translations (``{-1, 0, 1}² x step``),
  keeping the best, with both steps halved at each round. The starting pose is a candidate of every
  round, so refining never increases an image's distance.

Distances are the loss's ``Σ_k w |Y − C·S·V̂|² / Σ_k w`` on a half-disk (see :mod:`cryoai_core.train.loss`),
expanded as ``(Σ w C²|V̂|² − 2 Re Σ w conj(Y) C S V̂ + Σ w |Y|²) / Σ w`` so that the global grid is two
matrix products.
"""
import dataclasses
import math

import roma
import torch

from cryoai_core.fourier import origin_phase
from cryoai_core.models.forward_model import HalfDisk
from cryoai_core.slicing import FourierGrid, central_slices

_PSI = 1.533751168755204288118041
"""Root of ``x**4 = x + 4``; with sqrt(2) it spreads super-Fibonacci points evenly (Alexa, CVPR 2022)."""

_UNIT_3D = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)],
                        dtype=torch.float32)
_UNIT_2D = torch.tensor([[i, j] for j in (-1, 0, 1) for i in (-1, 0, 1)], dtype=torch.float32)


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


def _sampler(volume):
    """``volume`` as the search samples it: a :class:`FourierGrid` through its fastest sampler."""
    return volume.sampler() if isinstance(volume, FourierGrid) else volume


def network_grid(network, box: int, radius_px: float, oversampling: int, hermitian: bool = False) -> FourierGrid:
    """FourierNet (coords in cycles/px -> complex) cached on a grid of spacing ``1 / (oversampling·box)``.

    Points within ``radius_px + 2`` Fourier pixels are evaluated (the margin feeds the interpolation);
    ``hermitian``: see :meth:`FourierGrid.from_function` (true of FourierNet by construction).
    """
    parameter = next(iter(network.parameters()), None) if hasattr(network, "parameters") else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    size = oversampling * box
    return FourierGrid.from_function(network, size, 1.0 / size, (radius_px + 2.0) / box, device=device,
                                     hermitian=hermitian)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    rotations: torch.Tensor
    """``(B, 3, 3)`` best RELION matrices."""
    origins_px: torch.Tensor
    """``(B, 2)`` best RELION origins in pixels."""
    distances: torch.Tensor
    """``(B,)`` weighted L2 distances of the best poses (the loss's per-image distance)."""


def _gather(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``values (B, K, ...)`` at the per-image indices ``order (B, M)``: ``(B, M, ...)``."""
    index = order.reshape(order.shape + (1,) * (values.dim() - 2)).expand(order.shape + values.shape[2:])
    return values.gather(1, index)


def _replaced(result: SearchResult, rows: torch.Tensor, part: SearchResult) -> SearchResult:
    """``result`` with its rows ``rows`` (a boolean ``(B,)`` mask) replaced by ``part``."""
    merged = SearchResult(result.rotations.clone(), result.origins_px.clone(), result.distances.clone())
    merged.rotations[rows], merged.origins_px[rows], merged.distances[rows] = \
        part.rotations, part.origins_px, part.distances
    return merged


def _closest(rotations: torch.Tensor, origins_px: torch.Tensor, distances: torch.Tensor) -> SearchResult:
    """The closest of ``M`` poses per image (``(B, M, 3, 3)``, ``(B, M, 2)``, ``(B, M)``)."""
    best, index = distances.min(dim=1)
    rows = torch.arange(len(distances), device=distances.device)
    return SearchResult(rotations[rows, index], origins_px[rows, index], best)


class _Batch:
    """The pose-independent terms of a batch on a disk: ``w C conj(Y)``, ``w C²``, ``Σ w |Y|²`` and ``Σ w``."""

    def __init__(self, targets: torch.Tensor, ctf: torch.Tensor | None, disk: HalfDisk):
        weights = disk.weights.to(targets.device).float()
        ctf = torch.ones(targets.shape, device=targets.device) if ctf is None else ctf.float()
        self.weighted = weights * ctf * targets.conj()
        self.ctf_energy = weights * ctf ** 2
        self.energy = (weights * targets.abs() ** 2).sum(dim=-1)
        self.total_weight = weights.sum()
        self.freqs = disk.freqs_px.to(targets.device).float()
        self.radius_px = disk.radius_px.to(targets.device).float()
        self.max_radius_px = disk.max_radius_px

    def rows(self, keep: torch.Tensor) -> "_Batch":
        """The images ``keep`` of the batch (a boolean ``(B,)`` mask)."""
        part = object.__new__(_Batch)
        part.weighted, part.ctf_energy, part.energy = self.weighted[keep], self.ctf_energy[keep], self.energy[keep]
        part.total_weight, part.freqs, part.radius_px = self.total_weight, self.freqs, self.radius_px
        part.max_radius_px = self.max_radius_px
        return part

    def restricted(self, keep: torch.Tensor) -> "_Batch":
        """The same batch on the points ``keep`` of the disk (a boolean ``(N,)`` mask)."""
        part = object.__new__(_Batch)
        part.weighted, part.ctf_energy = self.weighted[:, keep], self.ctf_energy[:, keep]
        part.energy = self.energy
        part.total_weight, part.freqs, part.radius_px = self.total_weight, self.freqs[keep], self.radius_px[keep]
        part.max_radius_px = float(part.radius_px.max()) if len(part.radius_px) else 0.0
        return part

    def within(self, radius_px: float) -> "_Batch":
        """The batch on the points of the disk within ``radius_px``; itself when that is all of them."""
        return self if radius_px >= self.max_radius_px else self.restricted(self.radius_px <= radius_px + 1e-6)


class PoseSearch:
    """Global and local pose search (see the module docstring).

    Args:
        num_rotations: size of the global rotation grid.
        max_shift_px: the coarse translation grid spans ``[-max_shift_px, max_shift_px]`` per axis.
        shift_points: points per axis of the coarse translation grid (1: the centre only).
        coarse_radius_px: Fourier radius (pixels) of the coarse global stage.
        refine_steps: rounds of local refinement after the global stage.
        candidates: poses of the coarse stage per image (the closest on the coarse disk) screened on the full
            disk.
        finalists: the screening's closest poses per image that are refined: all take the first round of
            local refinement, and after each round the closer half goes on (8 -> 4 -> 2 -> 1). At low SNR the
            right pose is often not the closest before it is refined (``benchmarks/oracle_search.py``).
    """

    def __init__(self, *, num_rotations: int, max_shift_px: float, shift_points: int, coarse_radius_px: float,
                 refine_steps: int, candidates: int = 1, finalists: int = 1):
        if num_rotations < 1 or shift_points < 1 or refine_steps < 0 or candidates < 1 or finalists < 1:
            raise ValueError("the search needs at least one rotation, one translation, one candidate, one "
                             "finalist and refine_steps ≥ 0")
        self.base_rotations = super_fibonacci_rotations(num_rotations, torch.float32)
        steps = torch.linspace(-max_shift_px, max_shift_px, shift_points) if shift_points > 1 else torch.zeros(1)
        gy, gx = torch.meshgrid(steps, steps, indexing="ij")
        self.shifts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
        self.shift_step_px = 2.0 * max_shift_px / (shift_points - 1) if shift_points > 1 else 0.0
        self.step_degrees = grid_spacing_degrees(num_rotations)
        self.coarse_radius_px = coarse_radius_px
        self.refine_steps = refine_steps
        self.candidates = min(candidates, num_rotations * shift_points ** 2)
        self.finalists = min(finalists, self.candidates)

    @torch.no_grad()
    def search(self, volume, targets: torch.Tensor, ctf: torch.Tensor | None, disk: HalfDisk,
               generator: torch.Generator | None = None) -> SearchResult:
        """Best poses of ``B`` images given their half-disk transforms ``targets`` ``(B, N)`` and CTFs ``(B, N)``.

        ``volume`` maps ``(..., 3)`` frequencies in cycles per pixel to complex values (a :class:`FourierGrid`,
        sampled through :meth:`FourierGrid.sampler`).
        """
        volume, batch = _sampler(volume), _Batch(targets, ctf, disk)
        starts = self._global_start(volume, batch, disk, generator)
        return _closest(*self._knockout(volume, batch, *starts, self.step_degrees / 2.0, self.shift_step_px / 2.0,
                                        self.refine_steps))

    @torch.no_grad()
    def search_or_refine(self, volume, targets: torch.Tensor, ctf: torch.Tensor | None, disk: HalfDisk,
                         rotations: torch.Tensor, origins_px: torch.Tensor, rotation_step_degrees: float,
                         shift_step_px: float, steps: int, generator: torch.Generator | None = None,
                         tie_fraction: float = 1.0, edge_px: float = 0.0) -> SearchResult:
        """Per image, the better of a local refinement around the given poses (as :meth:`refine`) and the global
        search (as :meth:`search`). Both starts take their first round of local refinement; then only the one
        closer to the image takes the remaining rounds, unless their distances differ by less than
        ``tie_fraction`` of the power that the closer one explains (the image's distance to an empty prediction,
        ``Σ w |Y|² / Σ w``, less its own): at 0 about half the cost of both, at 1 or more always both.
        ``edge_px``: see :meth:`_refine`.

        The result is never farther from the image than the given pose, nor than the global grid's best."""
        volume, batch = _sampler(volume), _Batch(targets, ctf, disk)
        local_first, global_first = min(1, steps), min(1, self.refine_steps)
        local = self._refine(volume, batch, rotations.float(), origins_px.float(), rotation_step_degrees,
                             shift_step_px, local_first, edge_px=edge_px)
        rotation_step, shift_step = self.step_degrees / 2.0, self.shift_step_px / 2.0
        finalists = self._knockout(volume, batch, *self._global_start(volume, batch, disk, generator),
                                   rotation_step, shift_step, global_first, edge_px)
        found = _closest(*finalists)
        closest = torch.minimum(found.distances, local.distances)
        explained = (batch.energy / batch.total_weight - closest).clamp(min=0.0)
        tie = (found.distances - local.distances).abs() < tie_fraction * explained
        searched = found.distances < local.distances
        rest = self.refine_steps - global_first
        go_on = searched | tie
        if rest > 0 and bool(go_on.any()):
            rotations, origins_px, distances = (part[go_on] for part in finalists)
            found = _replaced(found, go_on, _closest(*self._knockout(
                volume, batch.rows(go_on), rotations, origins_px, distances, rotation_step / 2.0, shift_step / 2.0,
                rest, edge_px)))
        rows, rest = ~searched | tie, steps - local_first
        if rest > 0 and bool(rows.any()):
            local = _replaced(local, rows, self._refine(
                volume, batch.rows(rows), local.rotations[rows], local.origins_px[rows], rotation_step_degrees / 2.0,
                shift_step_px / 2.0, rest, local.distances[rows], edge_px))
        # Where only the leader went on, its distance only fell: it stays ahead of the other's first round.
        better = found.distances < local.distances
        return SearchResult(torch.where(better[:, None, None], found.rotations, local.rotations),
                            torch.where(better[:, None], found.origins_px, local.origins_px),
                            torch.minimum(found.distances, local.distances))

    def _global_start(self, volume, batch: _Batch, disk: HalfDisk, generator: torch.Generator | None) -> tuple:
        """Per image, the starts of the global search's local refinement: ``(rotations (B, M, 3, 3),
        origins_px (B, M, 2), distances (B, M) or None)``, ``M`` the finalists.

        With one candidate, the coarse grid's closest pose (its distance on the full disk not yet known). With
        ``K`` candidates, the coarse grid's ``K`` closest poses are screened on the full disk, each with its
        translation and the 8 around it at half the grid's step (the rotation as it is), and the ``M`` closest
        candidates (each at its best translation) are the finalists. At low SNR the coarse disk often ranks a
        wrong pose first while the right one is among the next few (``benchmarks/oracle_search.py``)."""
        rotations, shifts = self._coarse(volume, batch, disk, generator)                # (B, K, 3, 3), (B, K, 2)
        count, kept = rotations.shape[:2]
        if kept == 1:
            return rotations, shifts, None
        rows = torch.arange(count, device=rotations.device).repeat_interleave(kept)
        offsets = _UNIT_2D.to(shifts.device) * (self.shift_step_px / 2.0)
        around = shifts.reshape(-1, 1, 2) + offsets                                              # (BK, 9, 2)
        scores = self._distances(volume, batch.rows(rows), rotations.reshape(-1, 1, 3, 3), shifts.reshape(-1, 2),
                                 offsets)                                                        # (BK, 9, 1)
        best, shift_index = scores[:, :, 0].min(dim=1)                                                 # (BK,)
        origins_px = around[torch.arange(len(around), device=around.device), shift_index].reshape(count, kept, 2)
        distances, order = best.reshape(count, kept).topk(min(self.finalists, kept), dim=1, largest=False)
        return _gather(rotations, order), _gather(origins_px, order), distances

    def _knockout(self, volume, batch: _Batch, rotations: torch.Tensor, origins_px: torch.Tensor,
                  distances: torch.Tensor | None, rotation_step_degrees: float, shift_step_px: float,
                  rounds: int, edge_px: float = 0.0) -> tuple:
        """``rounds`` rounds of local refinement of ``M`` poses per image (``rotations (B, M, 3, 3)``,
        ``origins_px (B, M, 2)``, their ``distances (B, M)`` or None), steps halved at each round; after each
        round only the closer half of each image's poses goes on. Returns the survivors in the same form."""
        count, alive = rotations.shape[:2]

        def each(poses: int) -> _Batch:
            """The batch with each image repeated once per pose."""
            rows = torch.arange(count, device=rotations.device).repeat_interleave(poses)
            return batch if poses == 1 else batch.rows(rows)

        if distances is None:
            distances = self._refine(volume, each(alive), rotations.reshape(-1, 3, 3), origins_px.reshape(-1, 2),
                                     0.0, 0.0, 0).distances.reshape(count, alive)
        for _ in range(rounds):
            refined = self._refine(volume, each(alive), rotations.reshape(-1, 3, 3), origins_px.reshape(-1, 2),
                                   rotation_step_degrees, shift_step_px, 1, distances.reshape(-1), edge_px)
            rotations = refined.rotations.reshape(count, alive, 3, 3)
            origins_px = refined.origins_px.reshape(count, alive, 2)
            distances = refined.distances.reshape(count, alive)
            if alive > 1:
                alive = max(1, alive // 2)
                distances, order = distances.topk(alive, dim=1, largest=False)
                rotations, origins_px = _gather(rotations, order), _gather(origins_px, order)
            rotation_step_degrees, shift_step_px = rotation_step_degrees / 2.0, shift_step_px / 2.0
        return rotations, origins_px, distances

    def _coarse(self, volume, batch: _Batch, disk: HalfDisk, generator: torch.Generator | None) -> tuple:
        """The global grid's ``candidates`` closest poses on the coarse disk, ``(rotations (B, K, 3, 3),
        origins_px (B, K, 2))``."""
        device = batch.weighted.device
        coarse = batch.restricted(disk.radius_px.to(device) <= self.coarse_radius_px + 1e-6)
        shifts = self.shifts.to(device)
        offset = roma.random_rotmat(generator=generator).float().to(device)
        rotations = self.base_rotations.to(device) @ offset
        slices = central_slices(volume, rotations, coarse.freqs)                        # (R, n)
        u = coarse.weighted.unsqueeze(1) * origin_phase(coarse.freqs, shifts).unsqueeze(0)   # (B, S, n)
        left = torch.cat([u.real, -u.imag], dim=-1).reshape(-1, 2 * coarse.freqs.shape[0])
        right = torch.cat([slices.real, slices.imag], dim=-1).T                       # (2n, R)
        count = len(batch.weighted)
        cross = (left @ right).reshape(count, len(shifts), len(rotations))
        norm = coarse.ctf_energy @ (slices.abs() ** 2).T                              # (B, R)
        scores = (norm.unsqueeze(1) - 2.0 * cross).reshape(count, -1)
        flat = scores.argmin(dim=1, keepdim=True) if self.candidates == 1 else \
            scores.topk(self.candidates, dim=1, largest=False).indices                  # (B, K)
        return rotations[flat % len(rotations)], shifts[flat // len(rotations)]

    @torch.no_grad()
    def refine(self, volume, targets: torch.Tensor, ctf: torch.Tensor | None, disk: HalfDisk,
               rotations: torch.Tensor, origins_px: torch.Tensor, rotation_step_degrees: float,
               shift_step_px: float, steps: int) -> SearchResult:
        """Local refinement of the poses ``rotations`` ``(B, 3, 3)``, ``origins_px`` ``(B, 2)`` (see the module);
        ``shift_step_px = 0`` keeps the origins."""
        return self._refine(_sampler(volume), _Batch(targets, ctf, disk), rotations.float(), origins_px.float(),
                            rotation_step_degrees, shift_step_px, steps)

    @torch.no_grad()
    def distances(self, volume, targets: torch.Tensor, ctf: torch.Tensor | None, disk: HalfDisk,
                  rotations: torch.Tensor, origins_px: torch.Tensor) -> torch.Tensor:
        """Distances ``(B,)`` of the images at the given poses."""
        return self.refine(volume, targets, ctf, disk, rotations, origins_px, 0.0, 0.0, 0).distances

    def _refine(self, volume, batch: _Batch, rotations, origins_px, rotation_step_degrees, shift_step_px,
                steps, best: torch.Tensor | None = None, edge_px: float = 0.0) -> SearchResult:
        """``steps`` rounds around the given poses; ``best``: their distances when already known.

        ``edge_px > 0``: a round whose rotation step ``θ`` (radians) moves the disk's edge by more than
        ``edge_px`` Fourier pixels compares its candidates on the points within radius ``edge_px / θ`` only;
        its winner replaces the pose only if it is closer on the full disk too."""
        device = rotations.device
        index = torch.arange(len(rotations), device=device)
        rotation_step, shift_step = math.radians(rotation_step_degrees), shift_step_px
        still = torch.zeros(1, 2, device=device)
        if best is None:
            best = self._distances(volume, batch, rotations.unsqueeze(1), origins_px, still)[:, 0, 0]
        for _ in range(steps):
            part = batch.within(edge_px / rotation_step) if edge_px > 0 and rotation_step > 0 else batch
            candidates = rotations.unsqueeze(1) @ roma.rotvec_to_rotmat(_UNIT_3D.to(device) * rotation_step)
            unit_shifts = _UNIT_2D if shift_step > 0 else _UNIT_2D[4:5]                        # (0, 0) alone
            offsets = unit_shifts.to(device) * shift_step
            shifts = origins_px.unsqueeze(1) + offsets                                         # (B, 9 or 1, 2)
            scores = self._distances(volume, part, candidates, origins_px, offsets).reshape(len(rotations), -1)
            flat = scores.argmin(dim=1)
            chosen_rotations = candidates[index, flat % candidates.shape[1]]
            chosen_shifts = shifts[index, flat // candidates.shape[1]]
            if part is batch:
                chosen = scores[index, flat]
            else:
                chosen = self._distances(volume, batch, chosen_rotations.unsqueeze(1), chosen_shifts, still)[:, 0, 0]
            improved = chosen < best
            rotations = torch.where(improved[:, None, None], chosen_rotations, rotations)
            origins_px = torch.where(improved[:, None], chosen_shifts, origins_px)
            best = torch.minimum(best, chosen)
            rotation_step, shift_step = rotation_step / 2.0, shift_step / 2.0
        return SearchResult(rotations, origins_px, best)

    @staticmethod
    def _distances(volume, batch: _Batch, rotations: torch.Tensor, origins_px: torch.Tensor,
                   offsets_px: torch.Tensor) -> torch.Tensor:
        """Distances ``(B, S, K)`` of per-image candidates: rotations ``(B, K, 3, 3)`` x translations
        ``origins_px (B, 2) + offsets_px (S, 2)`` (offsets shared by the images).

        The phase of a translation ``o + d`` is the product of those of ``o`` and ``d``, so the cross term
        ``Re Σ_k w C conj(Y) P_o P_d V̂`` is one real matrix product over the ``S`` or the ``K`` side, whichever
        is smaller, without a phase per image and translation."""
        count, candidates = rotations.shape[:2]
        slices = central_slices(volume, rotations.reshape(-1, 3, 3), batch.freqs).reshape(count, candidates, -1)
        size = 2 * slices.shape[-1]
        parts = torch.view_as_real(slices).reshape(count, candidates, size)                     # (re, im) per point
        if len(offsets_px) <= candidates:
            # Re(a b) = (Re a, -Im a)·(Re b, Im b): the conjugate of w C conj(Y) P_o P_d, against the slices.
            image = torch.conj_physical(batch.weighted) * origin_phase(batch.freqs, -origins_px)   # (B, N)
            left = image.unsqueeze(1) * origin_phase(batch.freqs, -offsets_px).unsqueeze(0)       # (B, S, N)
            cross = torch.view_as_real(left).reshape(count, -1, size) @ parts.transpose(1, 2)      # (B, S, K)
        else:
            image = batch.weighted * origin_phase(batch.freqs, origins_px)                       # (B, N)
            right = torch.view_as_real(image.unsqueeze(1) * slices).reshape(-1, size)           # (B K, 2N)
            steps = torch.view_as_real(origin_phase(batch.freqs, -offsets_px)).reshape(-1, size)  # conj P_d (S, 2N)
            cross = (right @ steps.T).reshape(count, candidates, -1).transpose(1, 2)            # (B, S, K)
        energy = batch.ctf_energy.repeat_interleave(2, dim=-1).unsqueeze(-1)                     # (B, 2N, 1)
        norm = (parts * parts) @ energy                                                         # (B, K, 1)
        total = norm.transpose(1, 2) - 2.0 * cross + batch.energy[:, None, None]
        return total / batch.total_weight
