"""Plausible ranges of the CTF parameters (numpy only): errors for impossible values, warnings for unusual.

Units as everywhere in cryoai_core: voltage in kV, spherical aberration Cs in mm, defocus in Å (RELION
convention: positive = underfocus), amplitude contrast as a fraction, B-factor in Å². The limits are
broad: an error means the value cannot describe a transmission electron microscope (or is in the wrong
unit); a warning means it is legal but rare enough that a mistake is likely.
"""
import logging

import numpy as np

from cryoai_core.errors import InputError
from cryoai_core.io.ctf_table import CTF_FIELDS, CtfTable

logger = logging.getLogger(__name__)

VOLTAGE_KV_IMPOSSIBLE = (0.0, 3000.0)
"""Exclusive bounds: no electron microscope accelerates outside them (a value in V lands above)."""
VOLTAGE_KV_USUAL = (60.0, 400.0)
CS_MM_IMPOSSIBLE = (-20.0, 20.0)
"""Exclusive bounds: Cs correctors reach slightly negative values; beyond ±20 mm is a unit error (µm)."""
CS_MM_USUAL = (0.0, 8.0)
AMPLITUDE_CONTRAST_IMPOSSIBLE = (0.0, 1.0)
"""Amplitude contrast w lies in [0, 1): the CTF uses sqrt(1 - w²), which vanishes at 1."""
AMPLITUDE_CONTRAST_USUAL = (0.0, 0.5)
DEFOCUS_ANGSTROM_LIMIT = 1.0e6
"""|defocus| beyond 100 µm is not single-particle data (likely nm or µm written as Å)."""
DEFOCUS_ANGSTROM_USUAL = (1000.0, 100000.0)
BFACTOR_ANGSTROM2_LIMIT = 1.0e4


def check_scalar_ctf(voltage_kv: float, spherical_aberration_mm: float, amplitude_contrast: float,
                     source: str) -> list:
    """Raise :class:`InputError` for impossible optics; return warnings (strings) for unusual ones."""
    ctf = np.array([[10000.0, 10000.0, 0.0, voltage_kv, spherical_aberration_mm, amplitude_contrast, 0.0, 0.0]])
    return check_ctf_parameters(ctf, source)


def _largest_magnitude(values: np.ndarray) -> float:
    """``max |values|`` without a copy of ``values`` (0 when empty)."""
    return max(float(values.max()), -float(values.min())) if len(values) else 0.0


def check_ctf_parameters(ctf, source: str) -> list:
    """Check the ``(N, 8)`` CTF parameters (a :class:`CtfTable`, or an array in :data:`CTF_FIELDS` order) of
    the particles read from ``source``.

    Raises:
        InputError: a non-finite value, voltage ≤ 0 or ≥ 3000 kV, |Cs| ≥ 20 mm, amplitude contrast
            outside [0, 1), |defocus| ≥ 100 µm, or |B-factor| ≥ 10⁴ Å².

    Returns:
        Warnings (also logged): voltage outside 60-400 kV, Cs outside 0-8 mm, amplitude contrast above 0.5,
        every defocus negative (overfocus: a sign convention mix-up?), median |defocus| below 0.1 µm or
        above 10 µm.
    """
    ctf = CtfTable.from_array(ctf)
    columns = {name: ctf.column(index) for index, name in enumerate(CTF_FIELDS)}
    for name, values in columns.items():
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            raise InputError(f"{source}: {name} is not a finite number for {len(bad)} particle(s) "
                             f"(first: particle {bad[0] + 1} in file order)")
    warnings = []
    _check_range(columns["voltage_kv"], "voltage", "kV", source, VOLTAGE_KV_IMPOSSIBLE, VOLTAGE_KV_USUAL,
                 warnings, low_inclusive=False)
    _check_range(columns["spherical_aberration_mm"], "spherical aberration (Cs)", "mm", source,
                 CS_MM_IMPOSSIBLE, CS_MM_USUAL, warnings, low_inclusive=False)
    _check_range(columns["amplitude_contrast"], "amplitude contrast", "", source,
                 AMPLITUDE_CONTRAST_IMPOSSIBLE, AMPLITUDE_CONTRAST_USUAL, warnings, low_inclusive=True)
    defocus_u, defocus_v = columns["defocus_u_angstrom"], columns["defocus_v_angstrom"]
    largest = max(_largest_magnitude(defocus_u), _largest_magnitude(defocus_v))
    if largest >= DEFOCUS_ANGSTROM_LIMIT:
        raise InputError(f"{source}: a defocus of {largest:.4g} Å ({largest / 1e4:.4g} µm) is impossible for "
                         "single-particle data; defocus must be given in Å")
    bfactor = _largest_magnitude(columns["bfactor_angstrom2"])
    if bfactor >= BFACTOR_ANGSTROM2_LIMIT:
        raise InputError(f"{source}: a CTF B-factor of {bfactor:.4g} Å² is impossible "
                         f"(|B| must stay below {BFACTOR_ANGSTROM2_LIMIT:.0f} Å²)")
    if len(ctf) and float(defocus_u.max()) < 0 and float(defocus_v.max()) < 0:
        warnings.append(f"{source}: every defocus is negative (overfocus); RELION's convention is positive "
                        "for underfocus: check the sign of the defocus columns")
    if len(ctf):
        magnitudes = np.concatenate([defocus_u, defocus_v])  # the one copy, made absolute and reordered
        median = float(np.median(np.abs(magnitudes, out=magnitudes), overwrite_input=True))
    else:
        median = DEFOCUS_ANGSTROM_USUAL[0]
    if not DEFOCUS_ANGSTROM_USUAL[0] <= median <= DEFOCUS_ANGSTROM_USUAL[1]:
        warnings.append(f"{source}: the median defocus is {median:.4g} Å, unusual (typical: "
                        f"{DEFOCUS_ANGSTROM_USUAL[0]:.0f}-{DEFOCUS_ANGSTROM_USUAL[1]:.0f} Å); defocus must be in Å")
    for text in warnings:
        logger.warning(text)
    return warnings


def _check_range(values, label: str, unit: str, source: str, impossible: tuple, usual: tuple, warnings: list,
                 low_inclusive: bool) -> None:
    if not len(values):
        return
    low, high = float(values.min()), float(values.max())
    suffix = f" {unit}" if unit else ""
    too_low = low < impossible[0] if low_inclusive else low <= impossible[0]
    if too_low or high >= impossible[1]:
        value = low if too_low else high
        bracket = "[" if low_inclusive else "("
        raise InputError(f"{source}: a {label} of {value:g}{suffix} is impossible; it must lie in "
                         f"{bracket}{impossible[0]:g}, {impossible[1]:g}){suffix}")
    if low < usual[0] or high > usual[1]:
        value = low if low < usual[0] else high
        warnings.append(f"{source}: a {label} of {value:g}{suffix} is unusual (typical: "
                        f"{usual[0]:g}-{usual[1]:g}{suffix})")
