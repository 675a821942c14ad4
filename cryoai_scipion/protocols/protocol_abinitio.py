"""cryoAI ab initio: a map and a pose per particle from particles with CTFs (``cryoai abinit``)."""
import csv
import json
import os
import shlex
import shutil
from enum import Enum

import pyworkflow.protocol.params as params
from pwem.objects import SetOfParticles, Volume
from pwem.protocols import ProtInitialVolume
from pyworkflow.constants import BETA

from cryoai_core.train import config_flags
from cryoai_core.train.config import DEFAULT_MAX_BOX, FORM_EPOCHS, MIN_BOX
from cryoai_scipion.constants import FEW_PARTICLES, HALF_MAPS, MIN_PARTICLES, RESOLUTION_FILE, TRAIN_DIR
from cryoai_scipion.protocols.protocol_base import CryoAIProtBase

CORE_DEFAULTS = config_flags.defaults()
"""Defaults of the ``cryoai abinit`` settings, from ``cryoai_core.train.config`` (which imports no torch)."""

RESERVED_OPTIONS = ("-o", "--outdir", "--resume", "--device", "--gpus")
"""Options the protocol sets itself; they may not appear in the extra arguments."""


class outputs(Enum):
    outputVolume = Volume
    outputParticles = SetOfParticles


class CryoAIProtAbinitio(ProtInitialVolume, CryoAIProtBase):
    """Ab initio reconstruction with cryoAI: an encoder network learns to predict the pose of every particle
    while a neural representation of the map's Fourier transform is fitted to all images (amortized
    inference, no orientation search). Outputs an initial map at the particles' box and pixel size and the
    particles with their predicted poses, ready for RELION 3D auto-refine or cryoSPARC refinement.
    """
    _label = "ab initio"
    _cryoaiCommand = "abinit"
    _devStatus = BETA
    _possibleOutputs = outputs

    # --------------------------- form -------------------------------------------------------
    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputParticles", params.PointerParam, pointerClass="SetOfParticles", important=True,
                      label="Input particles",
                      help="Particles with a CTF per particle (from CTF estimation before extraction). "
                           "Their box must be even. Any previous alignment is ignored.")
        form.addParam("invertContrast", params.BooleanParam, default=CORE_DEFAULTS["invert_contrast"],
                      label="Invert contrast?",
                      help="cryoAI expects white particles on a dark background, as extracted by RELION and "
                           "most Scipion protocols. Choose Yes if your particles are dark.")
        form.addParam("trainingBox", params.IntParam, default=DEFAULT_MAX_BOX, label="Training box (px)",
                      help="The particles are Fourier-cropped to this box for training, which sets the "
                           "speed and the best attainable resolution (Nyquist of the cropped images). "
                           "Must be even. If it is larger than the particle box, the particle box is used. "
                           "The output map always has the particles' box and pixel size.")
        form.addParam("maskRadiusA", params.FloatParam, default=-1, label="Mask radius (Å)",
                      help="Radius of the circular mask applied to the particle images, in Å. "
                           "-1: the default, a soft-edged mask at 90% of half the box. "
                           "Use the wizard to draw it on your particles.")
        form.addParam("numEpochs", params.IntParam, default=FORM_EPOCHS, label="Epochs",
                      help="Passes over the whole data set. 0: no limit (then set a time budget).")
        form.addParam("maxMinutes", params.FloatParam, default=0, label="Time budget (minutes)",
                      help="Stop training after this many minutes, whatever the epoch. 0: no limit. Training "
                           "stops at whichever limit comes first.")
        form.addParam("batchSize", params.IntParam, default=CORE_DEFAULTS["batch_size"], label="Batch size",
                      help="Particles per optimisation step. Larger batches use more GPU memory.")
        form.addParam("seed", params.IntParam, default=CORE_DEFAULTS["seed"], label="Random seed",
                      help="Seed of the network initialisation and of the particle order, for "
                           "reproducible runs.")
        form.addParam("lrEncoder", params.FloatParam, default=CORE_DEFAULTS["lr_encoder"],
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Encoder learning rate",
                      help="Learning rate of the pose encoder (Adam).")
        form.addParam("lrDecoder", params.FloatParam, default=CORE_DEFAULTS["lr_decoder"],
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Map learning rate",
                      help="Learning rate of the neural map representation (Adam).")
        form.addParam("symmetricLoss", params.BooleanParam, default=CORE_DEFAULTS["symmetric_loss"],
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Symmetrized loss?",
                      help="Compare each particle also with its 180° in-plane rotation and keep the better "
                           "match. This avoids the encoder's main failure mode and is recommended; "
                           "it doubles the cost of the loss.")
        form.addParam("poseBootstrap", params.BooleanParam, default=CORE_DEFAULTS["bootstrap"],
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Pose-search bootstrap?",
                      help="Start with a short search of orientations against the current map to guide the "
                           "encoder, then continue with amortized inference only. No: amortized inference "
                           "from the start.")
        form.addParam("numWorkers", params.IntParam, default=CORE_DEFAULTS["num_workers"],
                      expertLevel=params.LEVEL_ADVANCED,
                      label="Data loading workers",
                      help="Processes reading particles in the background (0: read in the training "
                           "process).")
        form.addParam("extraParams", params.StringParam, default="", expertLevel=params.LEVEL_ADVANCED,
                      label="Extra arguments",
                      help="More options for 'cryoai abinit' (see 'cryoai abinit --help'), written as on "
                           "the command line.")
        self._defineComputeParams(form)

    # --------------------------- steps ------------------------------------------------------
    def _insertAllSteps(self):
        # The arguments make a step re-run in "Continue" mode when they change. Training then resumes from
        # its checkpoint: stopping a run and continuing it, or continuing with more epochs, loses nothing.
        self._insertFunctionStep(self.convertInputStep, self.inputParticles.get().getObjId(), needsGPU=False)
        self._insertFunctionStep(self.trainStep, self._getTrainArgs(), needsGPU=True)
        self._insertFunctionStep(self.createOutputStep, needsGPU=False)

    def convertInputStep(self, inputId):
        trainDir = self._getTrainPath()
        if os.path.exists(trainDir):
            self.info(f"new input particles: removing the previous training in {trainDir}")
            shutil.rmtree(trainDir)
        self._writeInputStar(self.inputParticles.get())

    def trainStep(self, trainArgs):
        arguments = [self._inputStarPath(), "-o", self._getTrainPath()] + list(trainArgs)
        if os.path.exists(self._getTrainPath("checkpoint.pt")):
            self.info("continuing the training from its checkpoint")
            arguments.append("--resume")
        self._runCryoai(self._cryoaiCommand, arguments)

    def createOutputStep(self):
        inputSet = self.inputParticles.get()
        volume = Volume()
        volume.setFileName(self._getTrainPath("volume.mrc"))
        volume.setSamplingRate(inputSet.getSamplingRate())
        if volume.getXDim() != inputSet.getXDim():
            raise ValueError(f"the map has a {volume.getXDim()} px box, the particles {inputSet.getXDim()} px")
        halves = [self._getTrainPath(name) for name in HALF_MAPS]
        if all(os.path.exists(path) for path in halves):
            volume.setHalfMaps(halves)
        particles = self._alignedParticles(inputSet, self._getTrainPath("particles.star"))
        self._defineOutputs(**{outputs.outputVolume.name: volume, outputs.outputParticles.name: particles})
        self._defineSourceRelation(self.inputParticles, volume)
        self._defineSourceRelation(self.inputParticles, particles)

    # --------------------------- helpers ----------------------------------------------------
    def _getTrainPath(self, *paths) -> str:
        return self._getExtraPath(TRAIN_DIR, *paths)

    def getCheckpointPath(self) -> str:
        """The trained networks (encoder and map), used by "cryoAI predict poses"."""
        return self._getTrainPath("checkpoint.pt")

    def getEffectiveTrainingBox(self) -> int:
        return min(self.trainingBox.get(), self.inputParticles.get().getXDim())

    def _getTrainArgs(self) -> list:
        """The ``cryoai abinit`` options of the form (camelCase parameters -> kebab-case flags)."""
        args = ["--box", str(self.getEffectiveTrainingBox()), "--batch-size", str(self.batchSize.get()),
                "--seed", str(self.seed.get()), "--lr-encoder", str(self.lrEncoder.get()),
                "--lr-decoder", str(self.lrDecoder.get()), "--num-workers", str(self.numWorkers.get())]
        if self.numEpochs.get() > 0:
            args += ["--epochs", str(self.numEpochs.get())]
        if self.maxMinutes.get() > 0:
            args += ["--max-minutes", str(self.maxMinutes.get())]
        if self.maskRadiusA.get() > 0:
            args += ["--mask-radius-angstrom", str(self.maskRadiusA.get())]
        if self.invertContrast.get():
            args.append("--invert-contrast")
        if not self.symmetricLoss.get():
            args.append("--no-symmetric-loss")
        if not self.poseBootstrap.get():
            args.append("--no-bootstrap")
        return args + shlex.split(self.extraParams.get() or "")

    def _coreSettings(self) -> dict:
        """The form's values as ``cryoai abinit`` settings (flat names of ``cryoai_core.train.config``)."""
        return {"epochs": self.numEpochs.get() or None, "max_minutes": self.maxMinutes.get() or None,
                "batch_size": self.batchSize.get(), "seed": self.seed.get(), "lr_encoder": self.lrEncoder.get(),
                "lr_decoder": self.lrDecoder.get(), "num_workers": self.numWorkers.get(),
                "symmetric_loss": bool(self.symmetricLoss.get()), "bootstrap": bool(self.poseBootstrap.get()),
                "invert_contrast": bool(self.invertContrast.get())}

    def _coreErrors(self) -> list:
        """The core's own checks of the settings (a budget is checked above, with the form's words)."""
        settings = self._coreSettings()
        if settings["epochs"] is None and settings["max_minutes"] is None:
            settings["epochs"] = 1
        try:
            return config_flags.check(**settings)
        except (TypeError, ValueError) as error:
            return [str(error)]

    def readResolution(self):
        """The core's ``resolution.json`` (gold-standard FSC of the half maps) as a dict, or None."""
        path = self._getTrainPath(RESOLUTION_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as handle:
            return json.load(handle)

    def readMetrics(self) -> list:
        """Rows of the core's ``metrics.csv`` (step, epoch, loss, images_per_s, elapsed_s, ...) as dicts;
        numbers are floats, other values (e.g. the training phase) strings."""
        path = self._getTrainPath("metrics.csv")
        if not os.path.exists(path):
            return []
        with open(path, newline="") as handle:
            return [{key: _number(value) for key, value in row.items() if value not in (None, "")}
                    for row in csv.DictReader(handle)]

    # --------------------------- info -------------------------------------------------------
    def _validate(self):
        particles = self.inputParticles.get()
        errors = self._validateParticles(particles) + self._validateGpus()
        if particles is not None and 0 < particles.getSize() < MIN_PARTICLES:
            errors.append(f"Only {particles.getSize()} particles: cryoAI needs at least {MIN_PARTICLES} "
                          f"(and many thousands for a good map).")
        box = self.trainingBox.get()
        if box is None or box < MIN_BOX or box % 2:
            errors.append(f"The training box must be even and at least {MIN_BOX} px, got {box}.")
        if self.numEpochs.get() <= 0 and self.maxMinutes.get() <= 0:
            errors.append("Set a number of epochs, a time budget, or both: training needs a limit.")
        errors += self._coreErrors()
        if particles is not None and particles.getSize() and self.maskRadiusA.get() > 0:
            halfBoxA = particles.getXDim() * particles.getSamplingRate() / 2
            if self.maskRadiusA.get() > halfBoxA:
                errors.append(f"The mask radius ({self.maskRadiusA.get():g} Å) exceeds half the box "
                              f"({halfBoxA:g} Å).")
        try:
            extra = shlex.split(self.extraParams.get() or "")
        except ValueError as error:
            extra = []
            errors.append(f"Extra arguments cannot be parsed: {error}")
        reserved = [arg for arg in extra if arg.split("=")[0] in RESERVED_OPTIONS]
        if reserved:
            errors.append(f"Extra arguments may not contain {', '.join(reserved)}: the protocol sets them.")
        return errors

    def _warnings(self):
        warnings = self._gpuWarnings()
        particles = self.inputParticles.get()
        if particles is not None and MIN_PARTICLES <= particles.getSize() < FEW_PARTICLES:
            warnings.append(f"Only {particles.getSize()} particles: the pose encoder learns from the data "
                            f"set itself and usually needs tens of thousands of particles.")
        if not self.usesGpu():
            warnings.append("Training on the CPU is very slow; use it only for small tests.")
        return warnings

    def _summary(self):
        summary = []
        metrics = self.readMetrics()
        if metrics:
            summary.append(trainingSummary(metrics[-1]))
        if self.hasAttribute(outputs.outputVolume.name):
            particles = self.inputParticles.get()
            summary.append(f"Map: {particles.getXDim()} px box, {particles.getSamplingRate():g} Å/px "
                           f"(trained at {self.getEffectiveTrainingBox()} px).")
            summary.append(f"{getattr(self, outputs.outputParticles.name).getSize()} particles with "
                           f"predicted poses (projection alignment).")
            resolution = self.readResolution()
            if resolution is not None:
                summary.append(halfMapSummary(resolution))
        elif not metrics and not self.isFailed():
            summary.append("Training has not started yet.")
        return self.failureSummary() + summary

    def _methods(self):
        particles = self.inputParticles.get()
        if particles is None or not self.hasAttribute(outputs.outputVolume.name):
            return []
        metrics = self.readMetrics()
        epochs = f"{metrics[-1].get('epoch', 0):g} epochs" if metrics else "its training schedule"
        trainingBox = self.getEffectiveTrainingBox()
        cropped = (f", Fourier-cropped to {trainingBox} px for training," if trainingBox < particles.getXDim()
                   else "")
        return [f"An initial map was reconstructed ab initio with cryoAI [Levy2022] from {particles.getSize()} "
                f"particles ({particles.getXDim()} px, {particles.getSamplingRate():g} Å/px){cropped} over "
                f"{epochs}. cryoAI's encoder predicted the orientation and shift of every particle (amortized "
                f"inference)."]

    def _citations(self):
        return ["Levy2022"]


def halfMapSummary(resolution: dict) -> str:
    """One summary line from the core's ``resolution.json``: the half maps' FSC=0.143 resolution and how
    independent their poses were."""
    line = (f"Half maps: FSC=0.143 at {resolution['resolution_angstrom']:.2f} Å "
            f"({resolution['particles_per_half'][0]} + {resolution['particles_per_half'][1]} particles, "
            f"split kept as _rlnRandomSubset). ")
    if resolution.get("resolution_established") is False:
        line = line.replace("Half maps:", "Half maps (RESOLUTION NOT ESTABLISHED):", 1)
        line += resolution.get("resolution_warning", "") + ". "
    rounds = resolution.get("gold_standard_rounds", 0)
    if rounds:
        return line + (f"Gold standard: each half's poses were refined against its own half map ({rounds} "
                       f"rounds) and the FSC corrected by noise substitution.")
    return line + ("Both halves use poses from one encoder trained on all particles, so this estimate is "
                   "optimistic when the poses are poor.")


def trainingSummary(last: dict) -> str:
    """One line on the training from the last row of ``metrics.csv``: steps, epochs, time, loss, phase and
    the Fourier radius the loss was computed within (it grows during training, so the loss does too)."""
    text = (f"Trained {int(last.get('step', 0))} steps ({last.get('epoch', 0):.3g} epochs) in "
            f"{last.get('elapsed_s', 0) / 60:.1f} min; last loss {last.get('loss', float('nan')):.4g}")
    details = []
    if isinstance(last.get("phase"), str):
        details.append(f"phase {last['phase']}")
    if isinstance(last.get("radius_px"), float):
        details.append(f"Fourier radius {last['radius_px']:g} px")
    return text + (f" ({', '.join(details)})." if details else ".")


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return text
