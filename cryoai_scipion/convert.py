"""Scipion particles <-> RELION 3.1 star files read and written by the ``cryoai`` command line.

Scipion keeps a projection alignment (``ALIGN_PROJ``) as one 4x4 ``Transform`` per particle whose matrix
is the *inverse* of the projection transform ``[[A, -s], [0, 1]]``: ``A`` is RELION's rotation matrix of
the Euler angles ``(rot, tilt, psi)`` (ZYZ, degrees) and ``s = (originX, originY, 0)`` the RELION origin
in **pixels**, so ``T = [[Aᵀ, Aᵀ s], [0, 1]]``. RELION 3.1 stars hold the origins in Å; the conversion
happens here only. ``A`` comes from :mod:`cryoai_core.relion_euler` (the one implementation of the
convention, numpy only).

Only numpy, pandas/starfile, pwem and the numpy-only ``cryoai_core.relion_euler`` are used: this module
never imports torch.
"""
import logging
import os

import numpy as np
import pandas as pd
import starfile

from cryoai_core import relion_euler
from cryoai_scipion.constants import MRC_EXTENSIONS

logger = logging.getLogger(__name__)

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")
"""Particle columns of a RELION 3.1 star that hold a pose."""
SCORE_COLUMN = "rlnCryoaiScore"
"""The core's per-particle score column (``cryoai_core.train.score.SCORE_COLUMN``; torch-free copy of the name)."""
SCORE_ATTRIBUTE = "_cryoai_score"
"""The Float attribute of each output particle that holds the score (for Scipion's subset tools)."""
SUBSET_COLUMN = "rlnRandomSubset"
"""The core's half-map split column (``cryoai_core.reconstruct.SUBSET_COLUMN``): the half, 1 or 2, of each
particle in the gold-standard half maps."""
SUBSET_ATTRIBUTE = "_" + SUBSET_COLUMN
"""The Integer attribute of each output particle that holds its half; named the way the RELION plugin names
star columns, so that its particle writer (and :func:`writeSetOfParticles`) passes the split on."""

RESERVED_COLUMNS = frozenset(("rlnImageName", "rlnOpticsGroup", "rlnOpticsGroupName", "rlnDefocusU",
                              "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift", "rlnOriginX", "rlnOriginY",
                              "rlnOriginZAngst") + POSE_COLUMNS)
"""Columns :func:`writeSetOfParticles` derives from Scipion's own fields: a stray ``_rln*`` attribute
of the same name is not copied over them."""


def eulerToMatrix(anglesDegrees) -> np.ndarray:
    """RELION rotation matrices ``A`` ``(..., 3, 3)`` of ``(..., 3)`` Euler angles (rot, tilt, psi), degrees."""
    return relion_euler.euler_to_matrix(anglesDegrees)


def matrixToEuler(matrices) -> np.ndarray:
    """RELION Euler angles ``(..., 3)`` in degrees of rotation matrices ``A`` ``(..., 3, 3)``."""
    return relion_euler.matrix_to_euler(matrices)


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
    """The file a Scipion image file name points at, without a ``:format`` suffix, resolved like the
    operating system does: symbolic links are followed before ``..`` is applied (an import's link folder
    followed by ``../`` is another folder than ``os.path.abspath`` would say)."""
    return os.path.realpath(fileName.split(":")[0])


def linkStacks(particles, stackDir: str) -> dict:
    """Make every stack of ``particles`` available in ``stackDir`` as a file the core reads.

    MRC stacks are linked there (``NNN_name.mrcs`` -> the resolved stack), others are converted to
    ``.mrcs`` with pwem's ImageHandler (indices are kept). Links keep a run folder self-contained: star
    files inside it can name images by relative paths.

    Returns:
        Scipion file name -> path in ``stackDir``.

    Raises:
        FileNotFoundError: naming the stacks that do not exist.
    """
    fileNames = list(particles.getUniqueValues("_filename"))
    missing = [name for name in fileNames if not os.path.isfile(stackPath(name))]
    if missing:
        shown = ", ".join(f"{name} ({stackPath(name)})" for name in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} particle stack(s) not found: {shown}{more}")
    os.makedirs(stackDir, exist_ok=True)
    stacks = {}
    for number, fileName in enumerate(fileNames):
        path = stackPath(fileName)
        base, extension = os.path.splitext(os.path.basename(path))
        if extension.lower() in MRC_EXTENSIONS:
            target = os.path.join(stackDir, f"{number:03d}_{base}{extension}")
            if os.path.lexists(target):
                os.remove(target)
            os.symlink(path, target)
        else:
            target = os.path.join(stackDir, f"{number:03d}_{base}.mrcs")
            logger.info("converting %s to %s", path, target)
            from pwem.emlib.image import ImageHandler
            ImageHandler().convertStack(fileName, target)
        stacks[fileName] = target
    return stacks


def writeSetOfParticles(particles, starPath: str, stackDir: str, writePoses: bool = False) -> int:
    """Write ``particles`` (in id order) as a RELION 3.1 star: one optics group from the set's acquisition
    and sampling rate, per-particle CTF, image names ``index@stack`` relative to the star's folder (the
    stacks are linked or converted into ``stackDir`` by :func:`linkStacks`), and the particles' other
    RELION columns (:func:`relionColumns`), which ``cryoai`` carries into its output star.

    Args:
        particles: a SetOfParticles with CTF.
        starPath: the star file to write.
        stackDir: folder for the links to (or conversions of) the stacks.
        writePoses: also write the projection alignment (angles, origins in Å).

    Returns:
        The number of particles written.
    """
    if not particles.hasCTF():
        raise ValueError("the particles have no CTF; estimate or assign CTFs first")
    if writePoses and not particles.hasAlignmentProj():
        raise ValueError("the particles have no projection alignment to write")
    if particles.getSize() == 0:
        raise ValueError("the set of particles is empty")
    pixelSize = particles.getSamplingRate()
    box = particles.getXDim()
    acquisition = particles.getAcquisition()
    starFolder = os.path.dirname(os.path.abspath(starPath))
    stacks = {name: os.path.relpath(os.path.abspath(path), starFolder)
              for name, path in linkStacks(particles, stackDir).items()}
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
        for name, value in relionColumns(particle).items():
            row.setdefault(name, value)
        rows.append(row)
    optics = pd.DataFrame([{
        "rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1,
        "rlnMicrographOriginalPixelSize": pixelSize, "rlnVoltage": acquisition.getVoltage(),
        "rlnSphericalAberration": acquisition.getSphericalAberration(),
        "rlnAmplitudeContrast": acquisition.getAmplitudeContrast(), "rlnImagePixelSize": pixelSize,
        "rlnImageSize": box, "rlnImageDimensionality": 2}])
    starfile.write({"optics": optics, "particles": pd.DataFrame(rows)}, starPath, overwrite=True)
    return len(rows)


def relionColumns(particle) -> dict:
    """The RELION columns a Scipion particle carries besides image, CTF and pose: its coordinate
    (``rlnCoordinateX/Y``, ``rlnMicrographName``) and every ``_rln*`` attribute a RELION import gave it
    or its coordinate (``rlnGroupName``, ``rlnRandomSubset``, ``rlnClassNumber``...)."""
    columns = {}
    coordinate = particle.getCoordinate()
    if coordinate is not None and coordinate.getX() is not None:
        columns["rlnCoordinateX"], columns["rlnCoordinateY"] = coordinate.getPosition()
        micName = coordinate.getMicName() or (str(coordinate.getMicId()) if coordinate.getMicId() else None)
        if micName:
            columns["rlnMicrographName"] = micName.replace(" ", "")
    for item in (particle, coordinate):
        if item is None:
            continue
        for name, attribute in item.getAttributes():
            if name.startswith("_rln") and name[1:] not in RESERVED_COLUMNS and attribute.hasValue():
                columns.setdefault(name[1:], attribute.get())
    return columns


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


def readScores(starPath: str):
    """The per-particle cryoAI score column ``(N,)`` (nats) of a star written by ``cryoai``, in file order, or
    ``None`` when the star has none."""
    return readColumn(starPath, SCORE_COLUMN, np.float64)


def readSubsets(starPath: str):
    """The half-map split ``(N,)`` (1 or 2, :data:`SUBSET_COLUMN`) of a star written by ``cryoai``, in file
    order, or ``None`` when the star has none."""
    return readColumn(starPath, SUBSET_COLUMN, np.int64)


def readColumn(starPath: str, column: str, dtype):
    """The particle column ``column`` ``(N,)`` of a RELION 3.1 star as ``dtype``, or ``None`` when absent."""
    table = starfile.read(starPath, always_dict=True).get("particles")
    if table is None or column not in table.columns:
        return None
    return table[column].to_numpy(dtype=dtype)


def readImageNames(starPath: str) -> np.ndarray:
    """The ``rlnImageName`` column ``(N,)`` of a RELION 3.1 star, in file order."""
    table = starfile.read(starPath, always_dict=True).get("particles")
    if table is None or "rlnImageName" not in table.columns:
        raise ValueError(f"{starPath} has no data_particles block with rlnImageName")
    return table["rlnImageName"].astype(str).to_numpy()


def sameImage(first: str, second: str, firstFolder: str = ".", secondFolder: str | None = None) -> bool:
    """Whether two RELION image names ``index@path`` point at the same image; relative paths are taken
    from their star file's folder (``firstFolder``, ``secondFolder``; the second defaults to the first)
    and paths are compared resolved."""
    firstIndex, _, firstPath = first.partition("@")
    secondIndex, _, secondPath = second.partition("@")
    secondFolder = firstFolder if secondFolder is None else secondFolder
    return (int(firstIndex) == int(secondIndex)
            and os.path.realpath(os.path.join(firstFolder, firstPath))
            == os.path.realpath(os.path.join(secondFolder, secondPath)))
