"""What a Scipion user trips on (issue 11): stacks behind ``../`` paths, failures whose reason must reach
the GUI, the GPU check of the form, the methods text, the package name and logo. Protocols run on a tiny
simulated set and stop early (or fail on purpose); nothing trains for long."""
import os
import shutil
from unittest import mock

import pandas as pd
import pyworkflow as pw
import starfile
from pwem.protocols import ProtImportParticles
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


class TestCryoAIUsability(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        folder = os.path.abspath(cls.proj.getTmpPath("simulated"))
        cls.truth = StarParticles(simulateParticles(folder, COUNT, BOX, PIXEL_SIZE_A, seed=3))
        cls.particles = cls._importSqlite("particles", cls.truth)

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
        data = os.path.abspath(self.proj.getTmpPath("relion_data"))
        os.makedirs(os.path.join(data, "Extract"), exist_ok=True)
        shutil.copy(self.truth.location(0)[1], os.path.join(data, "Extract", "stack.mrcs"))
        star = self._writeStar(os.path.join(data, "Particles", "particles.star"), "../Extract/stack.mrcs")
        protocol = self.newProtocol(ProtImportParticles, objLabel="import ../ star",
                                    importFrom=ProtImportParticles.IMPORT_FROM_RELION, starFile=star,
                                    samplingRate=PIXEL_SIZE_A, magnification=MAGNIFICATION)
        self.launchProtocol(protocol)
        imported = protocol.outputParticles
        fileName = imported.getFirstItem().getFileName()
        self.assertIn("..", fileName)
        self.assertFalse(os.path.exists(os.path.abspath(fileName)))  # what the plugin used to look for
        outStar = os.path.abspath(self.proj.getTmpPath("parent_paths", "input_particles.star"))
        os.makedirs(os.path.dirname(outStar), exist_ok=True)
        self.assertEqual(convert.writeSetOfParticles(imported, outStar, os.path.join(os.path.dirname(outStar),
                                                                                      "input")), COUNT)
        table = read_star(outStar)
        self.assertEqual(len(table), COUNT)
        self.assertEqual(os.path.realpath(table.stack_files[0]),
                         os.path.realpath(os.path.join(data, "Extract", "stack.mrcs")))

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

    def test_device_report_is_the_core_answer(self):
        import torch
        cryoai_scipion._deviceReports.clear()
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

    def _writeStar(self, path: str, stackName: str) -> str:
        """A RELION 3.1 star of the simulated particles whose images are in ``stackName`` (as written)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        particles = self.truth.table.assign(rlnImageName=[f"{i + 1:06d}@{stackName}" for i in range(COUNT)])
        starfile.write({"optics": pd.DataFrame([self.truth.optics]), "particles": particles}, path,
                       overwrite=True)
        return path
