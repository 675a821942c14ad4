"""The physics-based decoder (cryoAI paper, eq. 8): slice FourierNet at a pose, times the CTF, times
the phase shift of the particle's origin.

Images are real, so their transforms are Hermitian; the decoder only renders the half-disk
``H = {ky > 0} ∪ {ky = 0, kx > 0} ∪ {0}`` inside a radius, and the loss weights every point of ``H`` but
the origin twice, which equals the L2 distance over the full disk.
"""
import torch

from cryoai_core.fourier import frequency_grid_2d, origin_phase
from cryoai_core.slicing import central_slice_coords


class HalfDisk:
    """Fourier points of an ``L x L`` image on the half-disk of radius ``radius_px`` (Fourier pixels).

    Attributes:
        flat_index: ``(N,)`` indices into the flattened centred ``L x L`` spectrum.
        freqs_px: ``(N, 2)`` frequencies ``(kx, ky)`` in cycles per pixel.
        radius_px: ``(N,)`` radius in Fourier pixels.
        max_radius_px: the largest of them, a Python float (read without waiting for a device).
        weights: ``(N,)`` 1 at the origin, 2 elsewhere.
    """

    def __init__(self, box: int, radius_px: float, device=None):
        freqs = frequency_grid_2d(box, device=device).reshape(-1, 2)
        kx, ky = freqs[:, 0] * box, freqs[:, 1] * box
        radius = torch.sqrt(kx ** 2 + ky ** 2)
        upper = (ky > 0) | ((ky == 0) & (kx >= 0))
        keep = upper & (radius <= radius_px + 1e-6)
        self.box = box
        self.flat_index = torch.nonzero(keep).squeeze(1)
        self.freqs_px = freqs[self.flat_index]
        self.radius_px = radius[self.flat_index]
        self.max_radius_px = float(self.radius_px.max()) if len(self.radius_px) else 0.0
        self.weights = torch.where(self.radius_px == 0, 1.0, 2.0)

    def __len__(self) -> int:
        return len(self.flat_index)

    def gather(self, spectra: torch.Tensor) -> torch.Tensor:
        """Values ``(B, N)`` of centred spectra ``(B, L, L)`` on the half-disk."""
        return spectra.reshape(spectra.shape[0], -1)[:, self.flat_index]


def render(volume, rotations: torch.Tensor, origins_px: torch.Tensor, ctf: torch.Tensor | None,
           disk: HalfDisk) -> torch.Tensor:
    """Predicted image transforms on the half-disk, ``(B, N)`` complex.

    Args:
        volume: a callable mapping coordinates ``(B, N, 3)`` (cycles/px) to complex values (FourierNet).
        rotations: ``(B, 3, 3)`` RELION matrices A.
        origins_px: ``(B, 2)`` RELION origins in pixels.
        ctf: ``(B, N)`` CTF values on the half-disk, or ``None`` for no CTF.
        disk: the Fourier points to render.
    """
    coords = central_slice_coords(rotations, disk.freqs_px.to(rotations.dtype))
    values = volume(coords) * origin_phase(disk.freqs_px, origins_px)
    if ctf is not None:
        values = values * ctf
    return values
