"""What both cryoAI protocols share: GPU parameters, running ``cryoai``, input checks, aligned outputs."""
import os
import re

import pyworkflow.protocol.params as params
from pwem.objects import Transform
from pwem.protocols import EMProtocol
from pyworkflow.exceptions import PyworkflowException
from pyworkflow.object import Float, Integer
from pyworkflow.utils import getListFromRangeString

from cryoai_scipion import Plugin
from cryoai_scipion import convert
from cryoai_scipion.constants import INPUT_STACKS, INPUT_STAR


class CryoAIProtBase(EMProtocol):
    """Base of the cryoAI protocols (hidden from the GUI: it has no ``_label``)."""

    _cryoaiCommand = ""
    """The ``cryoai`` subcommand a protocol runs."""

    def _defineComputeParams(self, form):
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True, label="Use GPU?",
                       help="Train on a GPU (strongly recommended). Choose No to run on the CPU, which is "
                            "only practical for tiny tests.")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0", label="Choose GPU IDs",
                       help="GPUs to use, as numbered by nvidia-smi, e.g. '0 1 2 3'. Training runs on all of "
                            "them (one process per GPU, the batch split between them); they are made "
                            "visible to the job through CUDA_VISIBLE_DEVICES. Through a queue, the queue "
                            "chooses the GPUs and only their number counts.")
        form.addParallelSection(threads=1, mpi=0)

    # --------------------------- running cryoai ----------------------------------------
    def _runCryoai(self, subcommand: str, arguments: list):
        """Run ``cryoai SUBCOMMAND ARGUMENTS`` as a job (its output goes to the run log). When it fails,
        the step fails with the core's one-line reason, taken from what the job wrote to the run's
        stderr log."""
        gpus = self._jobGpus(subcommand)
        # No --no-progress: cryoai prints plain progress lines (epoch, step, loss, phase, ETA) on stdout,
        # which the Output Log shows; its progress bars are for terminals only.
        options = ["--device", "cuda" if gpus else "cpu"]
        if len(gpus) > 1:  # data parallel: one process per GPU, numbered among the visible ones
            options += ["--gpus", ",".join(str(rank) for rank in range(len(gpus)))]
        # Through a queue, the node's CUDA_VISIBLE_DEVICES is the queue's choice: leave it alone.
        visible = None if gpus and self.useQueue() else gpus
        environ = Plugin.getEnviron(gpus=visible, threads=self.numberOfThreads.get())
        stderrLog = self.getStderrLog()
        start = os.path.getsize(stderrLog) if os.path.exists(stderrLog) else 0
        try:
            self.runJob(Plugin.getProgram(subcommand), " ".join(arguments + options),
                        env=environ, numberOfMpi=1, numberOfThreads=1)
        except Exception as error:
            reason = failureReason(_readFrom(stderrLog, start)) or str(error)
            raise PyworkflowException(f"cryoai {subcommand} failed: {reason}") from None

    def _jobGpus(self, subcommand: str) -> list:
        """The GPUs of the form that ``cryoai SUBCOMMAND`` will use: all of them when it has ``--gpus``
        (data-parallel training), else the first; [] on the CPU."""
        gpus = self.getGpuList() if self.usesGpu() else []
        if len(gpus) > 1 and "--gpus" not in Plugin.getOptions(subcommand):
            self.info(f"cryoai {subcommand} uses one GPU: GPU {gpus[0]} of {gpus}")
            return gpus[:1]
        return gpus

    def failureSummary(self) -> list:
        """``["FAILED: <reason>"]`` for a failed run, else ``[]``."""
        if not self.isFailed():
            return []
        message = re.sub(r"\x1b\[[0-9;]*m", "", self.getErrorMessage() or "").strip()
        message = message.removeprefix("Protocol failed:").strip()
        return [f"FAILED: {message or 'see the run log'}"]

    def _inputStarPath(self) -> str:
        return self._getExtraPath(INPUT_STAR)

    def _writeInputStar(self, particles):
        count = convert.writeSetOfParticles(particles, self._inputStarPath(), self._getExtraPath(INPUT_STACKS))
        self.info(f"wrote {count} particles to {self._inputStarPath()}")

    # --------------------------- outputs ------------------------------------------------
    def _alignedParticles(self, inputSet, starPath: str):
        """A new SetOfParticles: ``inputSet`` (same images and CTFs) with the poses of ``starPath`` as a
        projection alignment (Transform per particle, shifts in pixels) and, when the star has them, the
        per-particle score as the Float attribute ``_cryoai_score`` and the half-map split as the Integer
        attribute ``_rlnRandomSubset``."""
        names, angles, originsAngstrom = convert.readPoses(starPath)
        if len(names) != inputSet.getSize():
            raise ValueError(f"{starPath} holds {len(names)} particles, the input {inputSet.getSize()}")
        inputNames = convert.readImageNames(self._inputStarPath())
        mismatch = next((i for i, (a, b) in enumerate(zip(inputNames, names))
                         if not convert.sameImage(a, b, os.path.dirname(self._inputStarPath()),
                                                  os.path.dirname(starPath))), None)
        if mismatch is not None:
            raise ValueError(f"{starPath} row {mismatch + 1} is {names[mismatch]}, expected "
                             f"{inputNames[mismatch]}: cryoai did not keep the input order")
        shiftsPixels = originsAngstrom / inputSet.getSamplingRate()
        scores, subsets = convert.readScores(starPath), convert.readSubsets(starPath)
        outputSet = self._createSetOfParticles()
        outputSet.copyInfo(inputSet)
        outputSet.setAlignmentProj()
        absent = [None] * len(names)
        rows = iter(zip(angles, shiftsPixels, absent if scores is None else scores,
                        absent if subsets is None else subsets))

        def setPose(particle, row):
            rowAngles, rowShifts, score, subset = row
            particle.setTransform(Transform(convert.poseToTransformMatrix(rowAngles, rowShifts)))
            if score is not None:
                setattr(particle, convert.SCORE_ATTRIBUTE, Float(float(score)))
            if subset is not None:
                setattr(particle, convert.SUBSET_ATTRIBUTE, Integer(int(subset)))

        outputSet.copyItems(inputSet, updateItemCallback=setPose, itemDataIterator=rows)
        return outputSet

    # --------------------------- validation helpers -------------------------------------
    def _validateParticles(self, particles) -> list:
        """Errors for a particle set cryoAI cannot use."""
        if particles is None:
            return []
        errors = []
        size = particles.getSize()
        if size == 0:
            return ["The input set of particles is empty."]
        if not particles.hasCTF():
            errors.append("The input particles have no CTF. cryoAI models the CTF of every particle: "
                          "estimate CTFs (e.g. CTFFIND) before extraction, or assign them.")
        if particles.isPhaseFlipped():
            errors.append("The input particles are phase flipped; cryoAI needs particles with the full "
                          "CTF (not phase flipped).")
        box = particles.getXDim()
        if box is not None and box % 2:
            errors.append(f"The particle box is {box} px; cryoAI (like RELION refinement) needs an even "
                          f"box. Re-extract or resize the particles to an even box.")
        return errors

    def _validateGpus(self) -> list:
        """Errors for the GPU choice: a malformed list, or (when the job runs on this machine) no CUDA or
        a GPU number this machine does not have, as ``cryoai check-device`` reports."""
        if not self.usesGpu():
            return []
        try:
            gpus = getListFromRangeString(self.gpuList.get())
        except ValueError:
            gpus = None
        if not gpus or any(not isinstance(gpu, int) or gpu < 0 for gpu in gpus):
            return [f"Invalid GPU list '{self.gpuList.get()}': give GPU numbers such as 0 (as numbered "
                    f"by nvidia-smi), or choose not to use a GPU."]
        if self.useQueue():  # the job runs on a queue's node, whose GPUs cannot be seen from here
            return []
        report = Plugin.getDeviceReport()
        if report is None:
            return []
        if not report.get("cuda"):
            build = (f"CUDA {report.get('cuda_version')} build" if report.get("cuda_version")
                     else "CPU-only build")
            return [f"Use GPU is Yes, but cryoai finds no CUDA GPU on this machine (torch "
                    f"{report.get('torch')}, {build}). Choose No to train on the CPU, or install a CUDA "
                    f"build of torch for cryoai."]
        count = int(report.get("gpus", 0))
        absent = [gpu for gpu in gpus if gpu >= count]
        if absent:
            return [f"GPU {', '.join(map(str, absent))} not found: cryoai sees {count} GPU(s), "
                    f"numbered 0 to {count - 1}."]
        return []

    def _gpuWarnings(self) -> list:
        gpus = self.getGpuList() if self.usesGpu() else []
        if len(gpus) > 1 and "--gpus" not in Plugin.getOptions(self._cryoaiCommand):
            return [f"cryoai {self._cryoaiCommand} runs on one GPU here; only GPU {gpus[0]} will be used."]
        return []



ERROR_LINE = re.compile(r"(?:^|\s)(error|interrupted):\s*(.+)$", re.IGNORECASE)
"""A line of the core's stderr that states why it stopped: ``cryoai SUBCOMMAND: error: REASON`` (or
``interrupted: REASON``)."""


def failureReason(stderrText: str) -> str:
    """The reason a ``cryoai`` job gives for failing: the last ``error:`` line of its stderr, else the
    last line of a Python traceback (``SomeError: message``), else ''."""
    lines = [line.strip() for line in stderrText.splitlines() if line.strip()]
    for line in reversed(lines):
        match = ERROR_LINE.search(line)
        if match:
            kind, reason = match.group(1).lower(), match.group(2).strip()
            return reason if kind == "error" else f"interrupted: {reason}"
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        return lines[-1]
    return ""


def _readFrom(path: str, offset: int) -> str:
    """The text of ``path`` after byte ``offset`` ('' when unreadable)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""
