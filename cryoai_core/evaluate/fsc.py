"""Fourier shell correlation (FSC) of two maps and the resolution where it crosses a threshold.

Shells are one Fourier pixel wide: voxel ``k`` of the centred 3D transform (FFT-exact frequencies, see
:mod:`cryoai_core.fourier`) belongs to shell ``round(|k| L)``, ``|k|`` in cycles per pixel. Shells run
from 0 (the DC term) to ``L // 2`` (Nyquist, 0.5 cycles/px for even ``L``); the corners beyond Nyquist
are left out. Resolutions are given in pixels (``1 / frequency = L / shell``, so 2.0 is Nyquist) and in
Å (pixels × pixel size), as in docs/conventions.md ("Resolution and pose-error figures").
"""
import numpy as np
import torch

from cryoai_core.fourier import fft3_centered, frequency_grid_3d

FSC_THRESHOLDS = (0.5, 0.143)
"""0.5 (against a ground truth, the paper's Table 1) and 0.143 (between independent half maps)."""


def _as_cubic_tensor(volume, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(volume) if not torch.is_tensor(volume) else volume)
    if tensor.ndim != 3 or len(set(tensor.shape)) != 1:
        raise ValueError(f"{name} must be a cubic volume (L, L, L), got shape {tuple(tensor.shape)}")
    return tensor.to(torch.float64)


def fsc_curve(map_a, map_b) -> tuple[np.ndarray, np.ndarray]:
    """FSC of two maps on the same grid.

    Args:
        map_a, map_b: ``(L, L, L)`` real maps (numpy or torch), ``[z, y, x]``.

    Returns:
        ``(frequencies, fsc)``, both ``(L // 2 + 1,)`` float64: shell frequencies in cycles per pixel
        (``shell / L``) and ``Re Σ A B* / sqrt(Σ |A|² Σ |B|²)`` per shell (0 for a shell where a map is
        zero).
    """
    first, second = _as_cubic_tensor(map_a, "map_a"), _as_cubic_tensor(map_b, "map_b")
    if first.shape != second.shape:
        raise ValueError(f"maps differ in shape: {tuple(first.shape)} and {tuple(second.shape)}")
    box = first.shape[-1]
    num_shells = box // 2 + 1
    radius = torch.linalg.vector_norm(frequency_grid_3d(box, dtype=torch.float64), dim=-1) * box
    shells = torch.round(radius).to(torch.int64).reshape(-1)
    inside = shells < num_shells
    shells = shells[inside]
    spectrum_a = fft3_centered(first).reshape(-1)[inside]
    spectrum_b = fft3_centered(second).reshape(-1)[inside]
    cross = torch.bincount(shells, (spectrum_a * spectrum_b.conj()).real, minlength=num_shells)
    power_a = torch.bincount(shells, spectrum_a.abs() ** 2, minlength=num_shells)
    power_b = torch.bincount(shells, spectrum_b.abs() ** 2, minlength=num_shells)
    denominator = torch.sqrt(power_a * power_b)
    fsc = torch.where(denominator > 0, cross / denominator.clamp_min(1e-300), torch.zeros_like(cross))
    frequencies = torch.arange(num_shells, dtype=torch.float64) / box
    return frequencies.numpy(), fsc.numpy()


def resolution_at(frequencies, fsc, threshold: float) -> float:
    """Resolution in pixels where the FSC first falls below ``threshold``.

    The crossing frequency is interpolated linearly between the last shell at or above the threshold
    and the first shell below it; the resolution is its inverse. A curve that never falls below the
    threshold gives the last shell's resolution (Nyquist, 2.0 px, for an even box); one that starts
    below it (at the DC shell) gives ``inf``.

    Args:
        frequencies: ``(S,)`` increasing shell frequencies in cycles per pixel.
        fsc: ``(S,)`` FSC values.
        threshold: e.g. 0.5 or 0.143.
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    fsc = np.asarray(fsc, dtype=np.float64)
    if frequencies.shape != fsc.shape or frequencies.ndim != 1 or len(frequencies) < 2:
        raise ValueError("frequencies and fsc must be 1D arrays of the same length (at least 2)")
    below = np.flatnonzero(fsc < threshold)
    if len(below) == 0:
        return float(1.0 / frequencies[-1])
    first = int(below[0])
    if first == 0:
        return float("inf")
    f0, f1 = frequencies[first - 1], frequencies[first]
    c0, c1 = fsc[first - 1], fsc[first]
    crossing = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1)
    return float(1.0 / crossing) if crossing > 0 else float("inf")


def pixels_to_angstrom(resolution_pixels: float, pixel_size_angstrom: float) -> float:
    """A resolution in pixels (``1 / cycles per pixel``) converted to Å."""
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_angstrom}")
    return float(resolution_pixels) * float(pixel_size_angstrom)


def resolution_report(frequencies, fsc, pixel_size_angstrom: float,
                      thresholds=FSC_THRESHOLDS) -> dict:
    """Resolutions at each threshold, ``{"0.5": {"pixels": ..., "angstrom": ...}, ...}``."""
    report = {}
    for threshold in thresholds:
        pixels = resolution_at(frequencies, fsc, threshold)
        report[f"{threshold:g}"] = {"pixels": pixels,
                                    "angstrom": pixels_to_angstrom(pixels, pixel_size_angstrom)}
    return report
