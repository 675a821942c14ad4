"""cryoAI predict poses: the encoder of a finished ab initio run assigns poses to other particles."""
import os
from enum import Enum

import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles
from pwem.protocols import ProtParticles
from pyworkflow.constants import BETA

from cryoai_scipion.constants import PREDICTED_STAR
from cryoai_scipion.protocols.protocol_abinitio import CryoAIProtAbinitio
from cryoai_scipion.protocols.protocol_base import CryoAIProtBase

FIELD_OF_VIEW_TOLERANCE = 0.05
"""Relative difference of box size in Å (box × pixel size) above which the form warns."""


class outputs(Enum):
    outputParticles = SetOfParticles


class CryoAIProtPredictPoses(ProtParticles, CryoAIProtBase):
    """Predict the orientation and shift of new particles with the pose encoder trained by a finished
    "cryoAI ab initio" run (amortized inference: one pass of the network, no retraining, no search).
    The particles are Fourier-resampled to the encoder's box and pixel size; they should show the same
    molecule, imaged under similar conditions, in a box of about the same size in Å.
    """
    _label = "predict poses"
    _cryoaiCommand = "predict-poses"
    _devStatus = BETA
    _possibleOutputs = outputs

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        project = kwargs.get("project")
        if project is not None and "abinitioRun" not in kwargs and self.abinitioRun.get() is None:
            latest = latestFinishedRun(project, CryoAIProtAbinitio)
            if latest is not None:
                self.abinitioRun.set(latest)

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("abinitioRun", params.PointerParam, pointerClass="CryoAIProtAbinitio", important=True,
                      label="cryoAI ab initio run",
                      help="A finished cryoAI ab initio run: its trained encoder predicts the poses.")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles", important=True,
                      label="Input particles",
                      help="Particles with a CTF per particle and an even box. Their contrast is inverted "
                           "or not as in the ab initio run.")
        form.addParam("batchSize", params.IntParam, default=256, label="Batch size",
                      help="Particles per network evaluation; lower it if the GPU runs out of memory.")
        self._defineComputeParams(form)

    def _insertAllSteps(self):
        self._insertFunctionStep(self.convertInputStep, self.inputParticles.get().getObjId(), needsGPU=False)
        self._insertFunctionStep(self.predictStep, needsGPU=True)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self, inputId):
        self._writeInputStar(self.inputParticles.get())

    def predictStep(self):
        checkpoint = os.path.abspath(self.abinitioRun.get().getCheckpointPath())
        self._runCryoai(self._cryoaiCommand, ["--checkpoint", checkpoint, self._inputStarPath(),
                                          "-o", self._getExtraPath(PREDICTED_STAR),
                                          "--batch-size", str(self.batchSize.get())])

    def createOutputStep(self):
        particles = self._alignedParticles(self.inputParticles.get(), self._getExtraPath(PREDICTED_STAR))
        self._defineOutputs(**{outputs.outputParticles.name: particles})
        self._defineSourceRelation(self.inputParticles, particles)

    def _validate(self):
        errors = self._validateParticles(self.inputParticles.get()) + self._validateGpus()
        run = self.abinitioRun.get()
        if run is not None and not os.path.exists(run.getCheckpointPath()):
            errors.append(f"The run {run.getRunName()} has no trained networks ({run.getCheckpointPath()}); "
                          f"choose a finished cryoAI ab initio run.")
        if self.batchSize.get() < 1:
            errors.append("The batch size must be at least 1.")
        return errors

    def _warnings(self):
        warnings = self._gpuWarnings()
        run, particles = self.abinitioRun.get(), self.inputParticles.get()
        if run is None or particles is None or run.inputParticles.get() is None:
            return warnings
        trained = run.inputParticles.get()
        trainedA = trained.getXDim() * trained.getSamplingRate()
        newA = particles.getXDim() * particles.getSamplingRate()
        if abs(newA - trainedA) > FIELD_OF_VIEW_TOLERANCE * trainedA:
            warnings.append(f"The particle box is {newA:.0f} Å, the ab initio run's {trainedA:.0f} Å: the "
                            f"encoder has not seen particles framed like these and may predict poorly.")
        return warnings

    def _summary(self):
        if self.isFailed():
            return self.failureSummary()
        if not self.hasAttribute(outputs.outputParticles.name):
            return ["Poses not predicted yet."]
        return [f"Poses of {self.outputParticles.getSize()} particles predicted by the encoder of "
                f"{self.abinitioRun.get().getRunName()}."]

    def _methods(self):
        if not self.hasAttribute(outputs.outputParticles.name):
            return []
        return [f"The poses of {self.outputParticles.getSize()} particles were predicted by the encoder of a "
                f"cryoAI [Levy2022] ab initio run, without further training (amortized inference)."]

    def _citations(self):
        return ["Levy2022"]


def latestFinishedRun(project, protocolClass):
    """The run of ``protocolClass`` in ``project`` that finished last (None when none has finished)."""
    finished = [run for run in project.mapper.selectByClass(protocolClass.__name__, iterate=True)
                if run.isFinished()]
    if not finished:
        return None
    return max(finished, key=lambda run: (run.endTime.get() or "", run.getObjId()))
