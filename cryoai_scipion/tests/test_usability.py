"""What a Scipion user trips on (issue 11): stacks behind ``../`` paths, failures whose reason must reach
the GUI, the GPU check of the form, the methods text, the package name and logo. Protocols run on a tiny
simulated set and stop early (or fail on purpose); nothing trains for long."""
import os
import shutil
import time
from unittest import mock

import numpy as np
import pandas as pd
import pyworkflow as pw
import starfile
from pwem.protocols import ProtImportParticles
from pyworkflow.protocol import HostConfig, getProtocolFromDb
from pyworkflow.tests import BaseTest, setupTestProject

import cryoai_scipion
from cryoai_scipion import Plugin, convert
from cryoai_scipion.protocols import CryoAIProtAbinitio, CryoAIProtPredictPoses
from cryoai_scipion.tests.synthetic import MAGNIFICATION, StarParticles, simulateParticles, \
    writeParticlesSqlite

BOX = 16
PIXEL_SIZE_A = 4.0
COUNT = 120
CPU_RUN = dict(useGpu=False, trainingBox=BOX, numEpochs=1, batchSize=32)
QUEUE_SUBMIT_LIMIT_S = 20
"""Launching through the queue must return once the job is submitted (the job itself takes longer)."""
QUEUE_RUN_LIMIT_S = 300

FAKE_SBATCH = """#!/bin/bash
# Stands in for SLURM's sbatch: runs the job script on this machine, in the background.
nohup bash "$1" > "$1.out" 2>&1 < /dev/null &
echo "Submitted batch job $!"
"""
FAKE_SQUEUE = """#!/bin/bash
# Stands in for squeue -h -j JOB: prints the job while it runs, nothing once it has ended.
ps -p "$1" -o pid= || true
"""
HOSTS_CONF = """[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s
NAME = SLURM
MANDATORY = False
SUBMIT_COMMAND = {sbatch} %_(JOB_SCRIPT)s
CANCEL_COMMAND = kill %_(JOB_ID)s
CHECK_COMMAND = {squeue} %_(JOB_ID)s
SUBMIT_TEMPLATE = #!/bin/bash
    #SBATCH --job-name=%_(JOB_NAME)s
    #SBATCH --partition=%_(JOB_QUEUE)s
    #SBATCH --output=%_(JOB_LOGS)s.out
    #SBATCH --error=%_(JOB_LOGS)s.err
    #SBATCH --ntasks=%_(JOB_NODES)d
    #SBATCH --cpus-per-task=%_(JOB_THREADS)d
    #SBATCH --mem=%_(JOB_MEMORY)s
    #SBATCH --gres=gpu:%_(GPU_COUNT)s
    %_(JOB_COMMAND)s
QUEUES = {{"gpu": [["JOB_MEMORY", "8192", "Memory (MB)", "Memory of the job in MB"]]}}
"""


def writeFakeSlurm(folder: str) -> str:
    """A hosts.conf with a SLURM-like queue whose commands run jobs locally; returns its path."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        paths[name] = os.path.join(folder, name)
        with open(paths[name], "w") as handle:
            handle.write(text)
        os.chmod(paths[name], 0o755)
    hosts = os.path.join(folder, "hosts.conf")
    with open(hosts, "w") as handle:
        handle.write(HOSTS_CONF.format(**paths))
    return hosts


class TestCryoAIUsability(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        folder = os.path.abspath(cls.proj.getTmpPath("simulated"))
        cls.truth = StarParticles(simulateParticles(folder, COUNT, BOX, PIXEL_SIZE_A, seed=3))
        cls.truthColumns = pd.DataFrame({
            "rlnMicrographName": [f"MotionCorr/job002/mic{i // 30:03d}.mrc" for i in range(COUNT)],
            "rlnCoordinateX": [float(100 + 7 * i) for i in range(COUNT)],
            "rlnCoordinateY": [float(900 - 5 * i) for i in range(COUNT)],
            "rlnGroupName": [f"group_{i // 60}" for i in range(COUNT)],
            "rlnRandomSubset": [1 + i % 2 for i in range(COUNT)]})
        cls.particles = cls._importSqlite("particles", cls.truth)
        cls.relionData = os.path.abspath(cls.proj.getTmpPath("relion_data"))
        os.makedirs(os.path.join(cls.relionData, "Extract"), exist_ok=True)
        shutil.copy(cls.truth.location(0)[1], os.path.join(cls.relionData, "Extract", "stack.mrcs"))
        star = cls._writeStar(os.path.join(cls.relionData, "Particles", "particles.star"), "../Extract/stack.mrcs",
                              withMicrographs=True)
        protocol = cls.newProtocol(ProtImportParticles, objLabel="import ../ star",
                                   importFrom=ProtImportParticles.IMPORT_FROM_RELION, starFile=star,
                                   samplingRate=PIXEL_SIZE_A, magnification=MAGNIFICATION)
        cls.launchProtocol(protocol)
        cls.relionParticles = protocol.outputParticles

    @classmethod
    def _importSqlite(cls, name, truth):
        sqlite = writeParticlesSqlite(os.path.abspath(cls.proj.getTmpPath(f"{name}.sqlite")), truth, range(COUNT))
        protocol = cls.newProtocol(ProtImportParticles, objLabel=f"import {name}",
                                   importFrom=ProtImportParticles.IMPORT_FROM_SCIPION, sqliteFile=sqlite,
                                   **cls._acquisition(truth))
        cls.launchProtocol(protocol)
        return protocol.outputParticles

    @staticmethod
    def _acquisition(truth):
        return dict(samplingRate=PIXEL_SIZE_A, voltage=float(truth.optics["rlnVoltage"]),
                    sphericalAberration=float(truth.optics["rlnSphericalAberration"]),
                    amplitudeContrast=float(truth.optics["rlnAmplitudeContrast"]),
                    magnification=MAGNIFICATION, haveDataBeenPhaseFlipped=False)

    # --------------------------- 11.1: stacks named with ../ ------------------------------------
    def test_relion_import_with_parent_paths_converts(self):
        """A RELION star in Particles/ naming ``../Extract/stack.mrcs``: Scipion's import keeps the ``..``
        behind its link folder; the star written for cryoai names files that exist, read by the core."""
        from cryoai_core.io.star import read_star
        fileName = self.relionParticles.getFirstItem().getFileName()
        self.assertIn("..", fileName)
        self.assertFalse(os.path.exists(os.path.abspath(fileName)))  # what the plugin used to look for
        outStar = os.path.abspath(self.proj.getTmpPath("parent_paths", "input_particles.star"))
        os.makedirs(os.path.dirname(outStar), exist_ok=True)
        self.assertEqual(convert.writeSetOfParticles(self.relionParticles, outStar,
                                                     os.path.join(os.path.dirname(outStar), "input")), COUNT)
        table = read_star(outStar)
        self.assertEqual(len(table), COUNT)
        self.assertEqual(os.path.realpath(table.stack_files[0]),
                         os.path.realpath(os.path.join(self.relionData, "Extract", "stack.mrcs")))

    # --------------------------- 11.7: the exported star ---------------------------------------------
    def test_exported_star_keeps_columns_and_moves(self):
        """The run's particles.star keeps the input's RELION columns, names images relative to its folder,
        and the run folder, moved elsewhere, imports with Scipion's RELION importer (micrographs,
        coordinates and poses)."""
        run = self.newProtocol(CryoAIProtAbinitio, objLabel="export", **CPU_RUN)
        run.inputParticles.set(self.relionParticles)
        self.launchProtocol(run)
        table = starfile.read(run._getExtraPath("cryoai", "particles.star"), always_dict=True)["particles"]
        for column in ("rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnGroupName", "rlnRandomSubset"):
            self.assertIn(column, table.columns)
        np.testing.assert_allclose(table["rlnCoordinateX"], self.truthColumns["rlnCoordinateX"])
        # Scipion's particles keep the micrograph's file name only (as its RELION writer does).
        self.assertEqual(list(table["rlnMicrographName"]),
                         [os.path.basename(name) for name in self.truthColumns["rlnMicrographName"]])
        self.assertEqual(list(table["rlnGroupName"]), list(self.truthColumns["rlnGroupName"]))
        self.assertTrue(all(name.split("@")[1].startswith("../input/") for name in table["rlnImageName"]))
        moved = os.path.abspath(self.proj.getTmpPath("moved_run"))
        shutil.copytree(run._getPath(), moved, symlinks=True)
        importer = self.newProtocol(ProtImportParticles, objLabel="import exported star",
                                    importFrom=ProtImportParticles.IMPORT_FROM_RELION,
                                    starFile=os.path.join(moved, "extra", "cryoai", "particles.star"),
                                    samplingRate=PIXEL_SIZE_A, magnification=MAGNIFICATION)
        self.launchProtocol(importer)
        imported = importer.outputParticles
        self.assertEqual(imported.getSize(), COUNT)
        self.assertTrue(imported.hasAlignmentProj())
        self.assertEqual(importer.outputMicrographs.getSize(), len(set(self.truthColumns["rlnMicrographName"])))
        first = imported.getFirstItem()
        self.assertEqual(first.getCoordinate().getPosition(),
                         tuple(int(v) for v in self.truthColumns.iloc[0][["rlnCoordinateX", "rlnCoordinateY"]]))
        self.assertTrue(os.path.exists(os.path.realpath(first.getFileName())))

    def test_missing_stack_fails_with_its_name(self):
        """convertInputStep stops on a stack that does not exist, and says which; the summary says why."""
        folder = os.path.abspath(self.proj.getTmpPath("vanishing"))
        os.makedirs(folder, exist_ok=True)
        stack = os.path.join(folder, "vanishing.mrcs")
        shutil.copy(self.truth.location(0)[1], stack)
        star = self._writeStar(os.path.join(folder, "vanishing.star"), "vanishing.mrcs")
        particles = self._importSqlite("vanishing", StarParticles(star))
        os.remove(stack)
        run = self.newProtocol(CryoAIProtAbinitio, objLabel="missing stack", **CPU_RUN)
        run.inputParticles.set(particles)
        self._launchExpectingFailure(run)
        self.assertIn("particle stack(s) not found", run.getErrorMessage())
        self.assertIn("vanishing.mrcs", run.getErrorMessage())
        self.assertTrue(run.summary()[0].startswith("FAILED: "), run.summary())

    # --------------------------- 11.2: the core's reason reaches the GUI ----------------------------
    def test_core_error_reaches_error_message_and_summary(self):
        run = self.newProtocol(CryoAIProtAbinitio, objLabel="core error", extraParams="--box 64", **CPU_RUN)
        run.inputParticles.set(self.particles)
        self._launchExpectingFailure(run)
        reason = f"--box must be even, at least 16 and at most the particle box ({BOX}); got 64"
        self.assertIn(f"cryoai abinit failed: {reason}", run.getErrorMessage())
        summary = run.summary()
        self.assertEqual(summary[0], f"FAILED: cryoai abinit failed: {reason}")
        self.assertNotIn("Training has not started yet.", summary)

    def test_failure_reason_from_stderr(self):
        from cryoai_scipion.protocols.protocol_base import failureReason
        log = "12:00:01 INFO cryoai_core: reading\ncryoai abinit: error: --device cuda: CUDA is not available\n"
        self.assertEqual(failureReason(log), "--device cuda: CUDA is not available")
        self.assertEqual(failureReason("Traceback (most recent call last):\n  File x\nKeyError: 'rlnX'\n"),
                         "KeyError: 'rlnX'")
        self.assertEqual(failureReason("12:00:01 INFO nothing wrong\n"), "")
        self.assertEqual(failureReason("cryoai abinit: interrupted: received SIGTERM\n"),
                         "interrupted: received SIGTERM")

    def test_device_report_is_the_core_answer(self):
        import torch
        cryoai_scipion._answers.clear()
        report = Plugin.getDeviceReport()
        self.assertEqual(report["cuda"], torch.cuda.is_available())
        self.assertEqual(report["gpus"], torch.cuda.device_count() if torch.cuda.is_available() else 0)
        with mock.patch("subprocess.run", side_effect=AssertionError("asked twice")):
            self.assertEqual(Plugin.getDeviceReport(), report)  # cached

    def test_gpu_validation_follows_check_device(self):
        noCuda = {"cuda": False, "gpus": 0, "torch": "2.13.0+cpu", "cuda_version": None}
        twoGpus = {"cuda": True, "gpus": 2, "torch": "2.13.0", "cuda_version": "12.1"}
        for protocolClass in (CryoAIProtAbinitio, CryoAIProtPredictPoses):
            protocol = self.newProtocol(protocolClass, useGpu=True, gpuList="0")
            with mock.patch.object(Plugin, "getDeviceReport", return_value=noCuda):
                self.assertIn("finds no CUDA GPU", " ".join(protocol._validateGpus()))
                protocol.useGpu.set(False)
                self.assertEqual(protocol._validateGpus(), [])
                protocol.useGpu.set(True)
                protocol._useQueue.set(True)  # the queue's node has its own GPUs
                self.assertEqual(protocol._validateGpus(), [])
                protocol._useQueue.set(False)
            with mock.patch.object(Plugin, "getDeviceReport", return_value=twoGpus):
                self.assertEqual(protocol._validateGpus(), [])
                protocol.gpuList.set("0 3")
                self.assertIn("GPU 3 not found", " ".join(protocol._validateGpus()))

    # --------------------------- 11.3 / 11.4: live log, summary ----------------------------------------
    def test_job_output_is_unbuffered(self):
        self.assertEqual(Plugin.getEnviron(gpus=[])["PYTHONUNBUFFERED"], "1")

    def test_training_summary_from_last_metrics_row(self):
        from cryoai_scipion.protocols.protocol_abinitio import trainingSummary
        row = {"step": 56.0, "epoch": 5.0, "phase": "amortized", "radius_px": 12.0, "loss": 0.25,
               "elapsed_s": 90.0}
        self.assertEqual(trainingSummary(row), "Trained 56 steps (5 epochs) in 1.5 min; last loss 0.25 "
                                               "(phase amortized, Fourier radius 12 px).")
        self.assertEqual(trainingSummary({"step": 3.0, "epoch": 0.5, "loss": 1.0}),
                         "Trained 3 steps (0.5 epochs) in 0.0 min; last loss 1.")

    # --------------------------- 9.2: several GPUs, queue ---------------------------------------------
    def test_gpu_list_runs_data_parallel(self):
        """GPU IDs "2 3": both visible to the job, ``--gpus 0,1`` when the core has the option; else one
        GPU. Through a queue the node's CUDA_VISIBLE_DEVICES is left to the queue."""
        def command(options, useQueue=False):
            protocol = self.newProtocol(CryoAIProtAbinitio, useGpu=True, gpuList="2 3")
            protocol._useQueue.set(useQueue)
            with mock.patch.object(Plugin, "getOptions", return_value=options), \
                    mock.patch.object(protocol, "runJob") as runJob:
                protocol._runCryoai("abinit", ["particles.star"])
            (_, arguments), keywords = runJob.call_args
            return arguments.split(), keywords["env"]

        arguments, environ = command({"--device", "--gpus"})
        self.assertEqual(arguments[arguments.index("--device") + 1], "cuda")
        self.assertEqual(arguments[arguments.index("--gpus") + 1], "0,1")
        self.assertEqual(environ["CUDA_VISIBLE_DEVICES"], "2,3")
        arguments, environ = command({"--device"})
        self.assertNotIn("--gpus", arguments)
        self.assertEqual(environ["CUDA_VISIBLE_DEVICES"], "2")
        with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "5,7"}):
            arguments, environ = command({"--device", "--gpus"}, useQueue=True)
        self.assertEqual(arguments[arguments.index("--gpus") + 1], "0,1")
        self.assertEqual(environ["CUDA_VISIBLE_DEVICES"], "5,7")

    def test_runs_through_a_queue(self):
        """"Use queue" with a SLURM-like hosts.conf whose sbatch runs the job here, in the background:
        launching returns at submission (the GUI is not blocked) and the job produces the outputs."""
        folder = os.path.abspath(self.proj.getTmpPath("queue"))
        # The project submits with these hosts; Scipion's own config files are left alone.
        savedHosts = self.proj._hosts
        self.proj._hosts = HostConfig.load(writeFakeSlurm(folder))
        self.addCleanup(setattr, self.proj, "_hosts", savedHosts)
        run = self.newProtocol(CryoAIProtAbinitio, objLabel="queued", **CPU_RUN)
        run.inputParticles.set(self.particles)
        run._useQueue.set(True)
        run.setQueueParams(["gpu", {"JOB_MEMORY": "2048"}])
        started = time.time()
        self.proj.launchProtocol(run, wait=False)
        self.assertLess(time.time() - started, QUEUE_SUBMIT_LIMIT_S)
        self.assertTrue(run.getJobIds() and int(run.getJobIds()[0]) > 0)
        deadline = time.time() + QUEUE_RUN_LIMIT_S
        job = run
        while job.isActive() and time.time() < deadline:  # what the GUI's refresh reads: the run's db
            time.sleep(2)
            job = getProtocolFromDb(self.proj.path, run.getDbPath(), run.getObjId())
            job.getProject().closeMapper()
            job.closeMappers()
        self.assertTrue(job.isFinished(), f"{job.getStatus()}: {job.getErrorMessage()}")
        self.assertTrue(job.hasAttribute("outputVolume"))
        with open(run._getLogsPath(f"{run.strId()}.job")) as handle:
            script = handle.read()
        self.assertIn("#SBATCH --mem=2048", script)
        self.assertIn(f"#SBATCH --gres=gpu:{len(run.getGpuList())}", script)

    # --------------------------- 11.6: methods -------------------------------------------------------
    def test_methods_mention_cropping_only_when_cropped(self):
        for trainingBox, expected in ((BOX, False), (BOX - 4, True)):
            protocol = self.newProtocol(CryoAIProtAbinitio, **dict(CPU_RUN, trainingBox=trainingBox))
            protocol.inputParticles.set(self.particles)
            with mock.patch.object(protocol, "hasAttribute", return_value=True), \
                    mock.patch.object(protocol, "readMetrics", return_value=[{"epoch": 3.0}]):
                methods = " ".join(protocol._methods())
            self.assertIn("3 epochs", methods)
            self.assertEqual("Fourier-cropped" in methods, expected, methods)
            if expected:
                self.assertIn(f"Fourier-cropped to {BOX - 4} px", methods)

    # --------------------------- 11.9: name and logo --------------------------------------------------
    def test_package_shown_as_cryoai_with_logo(self):
        from PIL import Image
        pw.Config.getDomain().getProtocols()
        self.assertEqual(CryoAIProtAbinitio.getClassLabel(), "cryoAI - ab initio")
        self.assertEqual(CryoAIProtPredictPoses.getClassLabel(), "cryoAI - predict poses")
        logo = CryoAIProtAbinitio.getPluginLogoPath()
        self.assertTrue(logo and os.path.isfile(logo), logo)
        with Image.open(logo) as image:
            self.assertEqual(image.format, "PNG")
            self.assertLessEqual(max(image.size), 256)

    # --------------------------- helpers ---------------------------------------------------------------
    def _launchExpectingFailure(self, protocol):
        with self.assertRaises(Exception):
            self.launchProtocol(protocol)
        self.assertTrue(protocol.isFailed())

    @classmethod
    def _writeStar(cls, path: str, stackName: str, withMicrographs: bool = False) -> str:
        """A RELION 3.1 star of the simulated particles whose images are in ``stackName`` (as written);
        ``withMicrographs`` adds the columns of an extraction job (micrograph, coordinates, group, subset)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        particles = cls.truth.table.assign(rlnImageName=[f"{i + 1:06d}@{stackName}" for i in range(COUNT)])
        if withMicrographs:
            particles = particles.assign(**cls.truthColumns)
        starfile.write({"optics": pd.DataFrame([cls.truth.optics]), "particles": particles}, path,
                       overwrite=True)
        return path
