"""FourierNet: a neural representation of a map's Fourier transform (cryoAI paper, Sec. 3.4).

``V̂(k) = exp(E(k)) ⊙ M(k)``: two SIRENs on 3D Fourier coordinates, an "envelope" ``E`` whose exponential
carries the high dynamic range of Fourier amplitudes and a "modulant" ``M``; each has two output
channels read as (real, imaginary), multiplied channel by channel.

Hermitian symmetry ``V̂(-k) = conj V̂(k)`` (a real map) holds exactly: the networks are only evaluated on
the half-space ``kz > 0`` (ties broken on ``ky``, then ``kx``) and the other half is its mirror conjugate.
Coordinates are in cycles per pixel of the training grid (Nyquist = 0.5).
"""
import torch
from torch import nn

from cryoai_core.fourier import frequency_grid_3d, ifft3_centered
from cryoai_core.models.siren import Siren
from cryoai_core.slicing import EVALUATION_CHUNK, evaluate_in_chunks
from cryoai_core.train.config import FourierNetConfig


def negative_half_space(coords: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``(...,)`` of coordinates ``(..., 3)`` on the mirrored half (``kz < 0``, then ties)."""
    x, y, z = coords.unbind(-1)
    return (z < 0) | ((z == 0) & ((y < 0) | ((y == 0) & (x < 0))))


class FourierNet(nn.Module):
    """Implicit Fourier-space map.

    Args:
        config: widths, depths (hidden sine layers after the first layer of ``M`` and ``E``) and first-layer
            frequency factors (:class:`~cryoai_core.train.config.FourierNetConfig`).
        box: the training box, which picks the width when ``config.width`` is 0.
    """

    def __init__(self, config: FourierNetConfig, box: int):
        super().__init__()
        width = config.hidden_features(box)
        self.modulant = Siren(3, width, config.modulant_layers, 2, first_omega_0=config.modulant_omega_0)
        self.envelope = Siren(3, width, config.envelope_layers, 2, first_omega_0=config.envelope_omega_0)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Complex values ``(...,)`` at coordinates ``(..., 3)`` (cycles/px, within ``[-0.5, 0.5]``)."""
        mirrored = negative_half_space(coords)
        half = torch.where(mirrored.unsqueeze(-1), -coords, coords)
        scaled = 2.0 * half
        values = torch.exp(self.envelope(scaled)) * self.modulant(scaled)
        imaginary = torch.where(mirrored, -values[..., 1], values[..., 1])
        origin = (coords == 0).all(dim=-1)
        imaginary = torch.where(origin, torch.zeros_like(imaginary), imaginary)
        return torch.complex(values[..., 0], imaginary)

    @torch.no_grad()
    def spectrum(self, box: int, radius_px: float | None = None, chunk: int = EVALUATION_CHUNK) -> torch.Tensor:
        """The centred transform on the ``box³`` grid, complex ``(box, box, box)``, ``[kz, ky, kx]``.

        With ``radius_px``, frequencies beyond that radius (Fourier pixels; e.g. the largest radius the
        loss ever saw) are set to zero instead of the network's untrained extrapolation.
        """
        device = next(self.parameters()).device
        coords = frequency_grid_3d(box, device=device).reshape(-1, 3)
        values = evaluate_in_chunks(self, coords, chunk)
        if radius_px is not None:
            values = values * (torch.linalg.vector_norm(coords, dim=-1) * box <= radius_px)
        spectrum = values.reshape(box, box, box)
        nyquist = torch.arange(box, device=device) == 0
        if box % 2 == 0:
            # The -Nyquist planes have no +Nyquist partner on the grid; zero them for a real map.
            spectrum[nyquist] = 0
            spectrum[:, nyquist] = 0
            spectrum[:, :, nyquist] = 0
        return spectrum

    def volume(self, box: int, radius_px: float | None = None) -> torch.Tensor:
        """Real-space map ``(box, box, box)`` ``[z, y, x]`` whose projections' DFTs are the slices
        (band-limited to ``radius_px`` Fourier pixels when given)."""
        return ifft3_centered(self.spectrum(box, radius_px)).real
