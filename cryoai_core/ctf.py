"""Contrast transfer function, RELION convention, per particle, on the FFT grid of any box.

With ``s`` the spatial frequency (1/Å), ``α = atan2(ky, kx)`` (x = column axis) and
``Δf(α) = ½(dfU + dfV) + ½(dfU − dfV) cos(2(α − angle))`` (Å, positive = underfocus)::

    γ   = π λ Δf s² − (π/2) Cs λ³ s⁴ + phase_shift
    CTF = sqrt(1 − w²) sin γ + w cos γ            (times exp(−B s² / 4) when a B-factor is given)

``λ = 12.2643 / sqrt(V (1 + 0.978466e-6 V))`` Å with ``V`` in volts. The CTF is positive at low frequency:
it applies to particles with inverted contrast (protein white), RELION's usual extraction output. Images
with dark particles are negated on input (``--invert-contrast``).
"""
import dataclasses
import math

import torch

from cryoai_core.io.ctf_table import CTF_FIELDS

def electron_wavelength_angstrom(voltage_kv):
    """Relativistic electron wavelength in Å for an acceleration voltage in kV (float, array or tensor)."""
    volts = voltage_kv * 1e3
    return 12.2643 / (volts * (1.0 + 0.978466e-6 * volts)) ** 0.5


@dataclasses.dataclass(frozen=True)
class CTFParams:
    """Per-particle CTF parameters; every field is a tensor of shape ``(B,)``."""

    defocus_u_angstrom: torch.Tensor
    defocus_v_angstrom: torch.Tensor
    defocus_angle_degrees: torch.Tensor
    voltage_kv: torch.Tensor
    spherical_aberration_mm: torch.Tensor
    amplitude_contrast: torch.Tensor
    phase_shift_degrees: torch.Tensor
    bfactor_angstrom2: torch.Tensor

    @classmethod
    def from_array(cls, array) -> "CTFParams":
        """Build from an ``(B, 8)`` array in :data:`CTF_FIELDS` order."""
        array = torch.as_tensor(array)
        if array.ndim != 2 or array.shape[1] != len(CTF_FIELDS):
            raise ValueError(f"CTF array must have shape (N, {len(CTF_FIELDS)}), got {tuple(array.shape)}")
        return cls(*array.unbind(dim=1))

    def to_array(self) -> torch.Tensor:
        """``(B, 8)`` tensor in :data:`CTF_FIELDS` order."""
        return torch.stack([getattr(self, name) for name in CTF_FIELDS], dim=1)


def compute_ctf(freqs: torch.Tensor, params: CTFParams) -> torch.Tensor:
    """Evaluate the CTF of ``B`` particles on a frequency grid.

    Args:
        freqs: ``(..., 2)`` frequencies ``(kx, ky)`` in 1/Å (e.g. ``frequency_grid_2d(L, pixel_size)``).
        params: CTF parameters, each field ``(B,)``.

    Returns:
        ``(B, *freqs.shape[:-1])`` real CTF values, in the dtype of ``freqs``.
    """
    dtype = freqs.dtype
    work = torch.float64
    kx = freqs[..., 0].to(work).unsqueeze(0)
    ky = freqs[..., 1].to(work).unsqueeze(0)
    extra = (1,) * (freqs.ndim - 1)

    def column(value: torch.Tensor) -> torch.Tensor:
        return value.to(device=freqs.device, dtype=work).reshape(-1, *extra)

    s2 = kx ** 2 + ky ** 2
    alpha = torch.atan2(ky, kx)
    defocus_u, defocus_v = column(params.defocus_u_angstrom), column(params.defocus_v_angstrom)
    angle = torch.deg2rad(column(params.defocus_angle_degrees))
    defocus = 0.5 * (defocus_u + defocus_v) + 0.5 * (defocus_u - defocus_v) * torch.cos(2.0 * (alpha - angle))
    wavelength = electron_wavelength_angstrom(column(params.voltage_kv))
    cs_angstrom = column(params.spherical_aberration_mm) * 1e7
    gamma = (math.pi * wavelength * defocus * s2
             - 0.5 * math.pi * cs_angstrom * wavelength ** 3 * s2 ** 2
             + torch.deg2rad(column(params.phase_shift_degrees)))
    w = column(params.amplitude_contrast)
    ctf = torch.sqrt(1.0 - w ** 2) * torch.sin(gamma) + w * torch.cos(gamma)
    bfactor = column(params.bfactor_angstrom2)
    ctf = ctf * torch.exp(-bfactor * s2 / 4.0)
    return ctf.to(dtype)
