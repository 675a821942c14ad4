"""Independent reference formulas shared by the physics tests (numpy, written from docs/conventions.md)."""
import numpy as np


def relion_matrix(rot_deg: float, tilt_deg: float, psi_deg: float) -> np.ndarray:
    """RELION's ``Euler_angles2matrix`` written out from docs/conventions.md."""
    ca, sa = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    cb, sb = np.cos(np.radians(tilt_deg)), np.sin(np.radians(tilt_deg))
    cg, sg = np.cos(np.radians(psi_deg)), np.sin(np.radians(psi_deg))
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


def blob_volume(blobs, box: int = 32, voxel: float = 1.5) -> np.ndarray:
    """Gaussian blobs ``(amplitudes, centres Å (x, y, z), sigmas Å)`` sampled on the voxel grid ``[z, y, x]``,
    centre at index ``box // 2``."""
    coords = (np.arange(box) - box // 2) * voxel
    z, y, x = np.meshgrid(coords, coords, coords, indexing="ij")
    volume = np.zeros((box,) * 3)
    for amplitude, (cx, cy, cz), sigma in zip(*blobs):
        volume += amplitude * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma ** 2))
    return volume
