"""Scipion particles <-> RELION 3.1 star files read and written by the ``cryoai`` command line.

Scipion keeps a projection alignment (``ALIGN_PROJ``) as one 4x4 ``Transform`` per particle whose matrix
is the *inverse* of the projection transform ``[[A, -s], [0, 1]]``: ``A`` is RELION's rotation matrix of
the Euler angles ``(rot, tilt, psi)`` (ZYZ, degrees) and ``s = (originX, originY, 0)`` the RELION origin
in **pixels**, so ``T = [[Aᵀ, Aᵀ s], [0, 1]]``. RELION 3.1 stars hold the origins in Å; the conversion
happens here only. ``A`` equals the transpose of scipy's intrinsic ``'ZYZ'`` rotation of the angles.

Only numpy, scipy, pandas/starfile and pwem are used: this module never imports torch.
"""
import logging
import os

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

from cryoai_scipion.constants import MRC_EXTENSIONS

logger = logging.getLogger(__name__)

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")
"""Particle columns of a RELION 3.1 star that hold a pose."""


def eulerToMatrix(anglesDegrees) -> np.ndarray:
    """RELION rotation matrices ``A`` ``(..., 3, 3)`` of ``(..., 3)`` Euler angles (rot, tilt, psi), degrees."""
    angles = np.asarray(anglesDegrees, dtype=np.float64)
    matrices = Rotation.from_euler("ZYZ", angles.reshape(-1, 3), degrees=True).as_matrix()
    return np.swapaxes(matrices, -1, -2).reshape(angles.shape[:-1] + (3, 3))


def matrixToEuler(matrices) -> np.ndarray:
    """RELION Euler angles ``(..., 3)`` in degrees of rotation matrices ``A`` ``(..., 3, 3)``."""
    matrices = np.asarray(matrices, dtype=np.float64)
    flat = np.swapaxes(matrices.reshape(-1, 3, 3), -1, -2)
    return Rotation.from_matrix(flat).as_euler("ZYZ", degrees=True).reshape(matrices.shape[:-2] + (3,))


def poseToTransformMatrix(anglesDegrees, shiftsPixels) -> np.ndarray:
    """Scipion ``ALIGN_PROJ`` matrix ``[[Aᵀ, Aᵀ s], [0, 1]]`` ``(4, 4)`` of one RELION pose.

    Args:
        anglesDegrees: ``(3,)`` RELION (rot, tilt, psi).
        shiftsPixels: ``(2,)`` RELION (originX, originY) in pixels.
    """
    rotation = eulerToMatrix(anglesDegrees)
    origin = np.array([shiftsPixels[0], shiftsPixels[1], 0.0])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation.T
    matrix[:3, 3] = rotation.T @ origin
    return matrix


def transformMatrixToPose(matrix):
    """Inverse of :func:`poseToTransformMatrix`: ``((3,)`` angles in degrees, ``(2,)`` origins in pixels)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rotation = matrix[:3, :3].T
    origin = rotation @ matrix[:3, 3]
    return matrixToEuler(rotation), origin[:2]


def stackPath(fileName: str) -> str:
    """Absolute path of a Scipion image file name, without a ``:format`` suffix."""
    return os.path.abspath(fileName.split(":")[0])


def _mrcStacks(particles, convertedDir: str) -> dict:
    """Map every stack of ``particles`` to an MRC file the core can read, converting other formats into
    ``convertedDir`` with pwem's ImageHandler (indices are kept)."""
    from pwem.emlib.image import ImageHandler

    stacks = {}
    for fileName in particles.getUniqueValues("_filename"):
        path = stackPath(fileName)
        if path.lower().endswith(MRC_EXTENSIONS):
            stacks[fileName] = path
            continue
        os.makedirs(convertedDir, exist_ok=True)
        base = os.path.splitext(os.path.basename(path))[0]
        target = os.path.join(convertedDir, f"{len(stacks):03d}_{base}.mrcs")
        logger.info("converting %s to %s", path, target)
        ImageHandler().convertStack(fileName, target)
        stacks[fileName] = os.path.abspath(target)
    return stacks


def writeSetOfParticles(particles, starPath: str, convertedDir: str, writePoses: bool = False) -> int:
    """Write ``particles`` (in id order) as a RELION 3.1 star: one optics group from the set's acquisition
    and sampling rate, per-particle CTF, image names ``index@/absolute/stack.mrcs``.

    Args:
        particles: a SetOfParticles with CTF.
        starPath: the star file to write.
        convertedDir: where stacks in formats other than MRC are converted.
        writePoses: also write the projection alignment (angles, origins in Å).

    Returns:
        The number of particles written.
    """
    if not particles.hasCTF():
        raise ValueError("the particles have no CTF; estimate or assign CTFs first")
    if writePoses and not particles.hasAlignmentProj():
        raise ValueError("the particles have no projection alignment to write")
    pixelSize = particles.getSamplingRate()
    box = particles.getXDim()
    acquisition = particles.getAcquisition()
    stacks = _mrcStacks(particles, convertedDir)
    rows = []
    for particle in particles.iterItems(orderBy="id", direction="ASC"):
        index, fileName = particle.getLocation()
        ctf = particle.getCTF()
        row = {"rlnImageName": f"{max(int(index), 1):06d}@{stacks[fileName]}",
               "rlnDefocusU": ctf.getDefocusU(), "rlnDefocusV": ctf.getDefocusV(),
               "rlnDefocusAngle": ctf.getDefocusAngle(), "rlnPhaseShift": ctf.getPhaseShift() or 0.0,
               "rlnOpticsGroup": 1}
        if writePoses:
            angles, shifts = transformMatrixToPose(particle.getTransform().getMatrix())
            row.update(zip(POSE_COLUMNS, [*angles, *(shifts * pixelSize)]))
        rows.append(row)
    if not rows:
        raise ValueError("the set of particles is empty")
    optics = pd.DataFrame([{
        "rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1,
        "rlnMicrographOriginalPixelSize": pixelSize, "rlnVoltage": acquisition.getVoltage(),
        "rlnSphericalAberration": acquisition.getSphericalAberration(),
        "rlnAmplitudeContrast": acquisition.getAmplitudeContrast(), "rlnImagePixelSize": pixelSize,
        "rlnImageSize": box, "rlnImageDimensionality": 2}])
    starfile.write({"optics": optics, "particles": pd.DataFrame(rows)}, starPath, overwrite=True)
    return len(rows)


def readPoses(starPath: str):
    """Poses of a RELION 3.1 star, in file order.

    Returns:
        ``(imageNames (N,) str, angles (N, 3) degrees, origins (N, 2) Å)``.
    """
    blocks = starfile.read(starPath, always_dict=True)
    table = blocks.get("particles")
    if table is None:
        raise ValueError(f"{starPath} has no data_particles block")
    missing = [name for name in ("rlnImageName",) + POSE_COLUMNS if name not in table.columns]
    if missing:
        raise ValueError(f"{starPath} lacks the columns {', '.join(missing)}")
    angles = table[list(POSE_COLUMNS[:3])].to_numpy(dtype=np.float64)
    origins = table[list(POSE_COLUMNS[3:])].to_numpy(dtype=np.float64)
    return table["rlnImageName"].astype(str).to_numpy(), angles, origins


def readImageNames(starPath: str) -> np.ndarray:
    """The ``rlnImageName`` column ``(N,)`` of a RELION 3.1 star, in file order."""
    table = starfile.read(starPath, always_dict=True).get("particles")
    if table is None or "rlnImageName" not in table.columns:
        raise ValueError(f"{starPath} has no data_particles block with rlnImageName")
    return table["rlnImageName"].astype(str).to_numpy()


def sameImage(first: str, second: str, folder: str = ".") -> bool:
    """Whether two RELION image names ``index@path`` point at the same image; relative paths are taken
    from ``folder`` and paths are compared resolved."""
    firstIndex, _, firstPath = first.partition("@")
    secondIndex, _, secondPath = second.partition("@")
    return (int(firstIndex) == int(secondIndex)
            and os.path.realpath(os.path.join(folder, firstPath))
            == os.path.realpath(os.path.join(folder, secondPath)))
