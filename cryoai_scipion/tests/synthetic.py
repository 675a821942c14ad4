"""Test data made on the spot: particles simulated by ``cryoai simulate`` and a Scipion sqlite describing them.

Nothing is downloaded. The simulator runs as a subprocess, so the test process never imports torch.
"""
import os
import subprocess

import numpy as np
import starfile
from pwem.objects import Acquisition, CTFModel, Particle, SetOfParticles, Transform

from cryoai_scipion import Plugin

MAGNIFICATION = 50000


def simulateParticles(folder: str, count: int, box: int, pixelSizeA: float, seed: int,
                      snr: float = 1.0, shiftSigmaA: float = 3.0) -> str:
    """Simulate ``count`` particles of the bundled 4AKE map into ``folder``; return the star file path."""
    command = (f"{Plugin.getProgram('simulate')} -o {folder} -n {count} --box {box} "
               f"--pixel-size {pixelSizeA} --shift-sigma {shiftSigmaA} --snr {snr} --seed {seed} --no-progress")
    subprocess.run(command, shell=True, check=True, env=Plugin.getEnviron(gpus=[]))
    return os.path.join(folder, "particles.star")


class StarParticles:
    """The simulator's star file: per particle CTF, true poses, image locations (file order)."""

    def __init__(self, starPath: str):
        blocks = starfile.read(starPath, always_dict=True)
        self.optics = blocks["optics"].iloc[0]
        self.table = blocks["particles"]
        self.folder = os.path.dirname(os.path.abspath(starPath))

    def __len__(self):
        return len(self.table)

    @property
    def pixelSizeA(self) -> float:
        return float(self.optics["rlnImagePixelSize"])

    def angles(self) -> np.ndarray:
        return self.table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64)

    def originsA(self) -> np.ndarray:
        return self.table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)

    def location(self, row: int):
        """``(1-based index, absolute stack path)`` of particle ``row``."""
        index, _, path = self.table["rlnImageName"].iloc[row].partition("@")
        return int(index), os.path.normpath(os.path.join(self.folder, path))


def writeParticlesSqlite(sqlitePath: str, particles: StarParticles, rows, withCtf: bool = True,
                         transformMatrices=None) -> str:
    """A Scipion SetOfParticles sqlite of the simulated particles ``rows``, with a CTFModel per particle
    (unless ``withCtf`` is False) and, when ``transformMatrices`` (one 4x4 per row) is given, a projection
    alignment."""
    if os.path.exists(sqlitePath):
        os.remove(sqlitePath)
    acquisition = Acquisition(voltage=float(particles.optics["rlnVoltage"]),
                              sphericalAberration=float(particles.optics["rlnSphericalAberration"]),
                              amplitudeContrast=float(particles.optics["rlnAmplitudeContrast"]),
                              magnification=MAGNIFICATION)
    output = SetOfParticles(filename=sqlitePath)
    output.setSamplingRate(particles.pixelSizeA)
    output.setAcquisition(acquisition)
    output.setHasCTF(withCtf)
    if transformMatrices is not None:
        output.setAlignmentProj()
    for position, row in enumerate(rows):
        particle = Particle(location=particles.location(row))
        particle.setSamplingRate(particles.pixelSizeA)
        particle.setAcquisition(acquisition)
        if withCtf:
            values = particles.table.iloc[row]
            ctf = CTFModel()
            ctf.setStandardDefocus(float(values["rlnDefocusU"]), float(values["rlnDefocusV"]),
                                   float(values["rlnDefocusAngle"]))
            ctf.setPhaseShift(float(values.get("rlnPhaseShift", 0.0)))
            particle.setCTF(ctf)
        if transformMatrices is not None:
            particle.setTransform(Transform(transformMatrices[position]))
        output.append(particle)
    output.write()
    output.close()
    return sqlitePath
