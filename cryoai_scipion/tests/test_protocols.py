"""The cryoAI protocols on simulated particles: ab initio, outputs, chaining into RELION and cryoSPARC,
pose prediction, continuing a run, and the form's validation. Small CPU runs, no downloads."""
import os
from unittest import mock

import numpy as np
import starfile
from pwem.constants import ALIGN_PROJ
from pwem.objects import SetOfParticles, Volume
from pwem.protocols import ProtImportParticles
from pyworkflow.tests import BaseTest, setupTestProject

from cryoai_scipion import Plugin, convert
from cryoai_scipion.protocols import CryoAIProtAbinitio, CryoAIProtPredictPoses
from cryoai_scipion.tests.pose_error import alignedMedianErrorDegrees, randomBaselineDegrees
from cryoai_scipion.tests.synthetic import MAGNIFICATION, StarParticles, simulateParticles, \
    writeParticlesSqlite

BOX = 32
PIXEL_SIZE_A = 3.0
TRAIN_COUNT = 300
PREDICT_COUNT = 100
TRAINING_BOX = 24
TINY_TRAINING = dict(useGpu=False, trainingBox=TRAINING_BOX, numEpochs=6, batchSize=32, seed=1,
                     lrEncoder=1e-3)
"""Trains for a few seconds on the CPU: enough to run every step, not to reach good poses."""


class TestCryoAIProtocols(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        folder = os.path.abspath(cls.proj.getTmpPath("simulated"))
        cls.truth = StarParticles(simulateParticles(folder, TRAIN_COUNT + PREDICT_COUNT, BOX, PIXEL_SIZE_A,
                                                    seed=7))
        cls.trainRows = range(TRAIN_COUNT)
        cls.predictRows = range(TRAIN_COUNT, TRAIN_COUNT + PREDICT_COUNT)
        cls.trainParticles = cls._importParticles("train", cls.trainRows)
        cls.predictParticles = cls._importParticles("predict", cls.predictRows)
        cls.abinitio = cls.newProtocol(CryoAIProtAbinitio, objLabel="cryoAI ab initio (tiny)", **TINY_TRAINING)
        cls.abinitio.inputParticles.set(cls.trainParticles)
        cls.launchProtocol(cls.abinitio)

    @classmethod
    def _importParticles(cls, name, rows, withCtf=True):
        sqlite = writeParticlesSqlite(os.path.abspath(cls.proj.getTmpPath(f"{name}.sqlite")), cls.truth, rows,
                                      withCtf=withCtf)
        protocol = cls.newProtocol(ProtImportParticles, objLabel=f"import {name}",
                                   importFrom=ProtImportParticles.IMPORT_FROM_SCIPION, sqliteFile=sqlite,
                                   samplingRate=PIXEL_SIZE_A, voltage=float(cls.truth.optics["rlnVoltage"]),
                                   sphericalAberration=float(cls.truth.optics["rlnSphericalAberration"]),
                                   amplitudeContrast=float(cls.truth.optics["rlnAmplitudeContrast"]),
                                   magnification=MAGNIFICATION, haveDataBeenPhaseFlipped=False)
        cls.launchProtocol(protocol)
        return protocol.outputParticles

    # --------------------------- ab initio ---------------------------------------------------
    def test_abinitio_outputs(self):
        volume, particles = self.abinitio.outputVolume, self.abinitio.outputParticles
        self.assertIsInstance(volume, Volume)
        self.assertEqual(volume.getDim(), (BOX, BOX, BOX))
        self.assertAlmostEqual(volume.getSamplingRate(), PIXEL_SIZE_A)
        self.assertIsInstance(particles, SetOfParticles)
        self.assertEqual(particles.getSize(), TRAIN_COUNT)
        self.assertEqual(particles.getDimensions(), (BOX, BOX, 1))
        self.assertAlmostEqual(particles.getSamplingRate(), PIXEL_SIZE_A)
        self.assertTrue(particles.hasAlignmentProj())
        self.assertEqual(particles.getAlignment(), ALIGN_PROJ)
        self.assertTrue(particles.hasCTF())
        inputs = {p.getObjId(): p.clone() for p in self.trainParticles}
        for particle in particles:
            source = inputs[particle.getObjId()]
            self.assertEqual(particle.getLocation(), source.getLocation())
            self.assertAlmostEqual(particle.getCTF().getDefocusU(), source.getCTF().getDefocusU(), places=2)
            self.assertAlmostEqual(particle.getCTF().getDefocusAngle(), source.getCTF().getDefocusAngle(), 2)
            self.assertIsNotNone(particle.getTransform())

    def test_abinitio_half_maps_attached(self):
        """The core's half maps hang on outputVolume the Scipion way; their resolution is in the summary."""
        from cryoai_core.reconstruct import HALF_MAP_FILES
        from cryoai_scipion.constants import HALF_MAPS, RESOLUTION_FILE
        self.assertEqual(HALF_MAPS, (HALF_MAP_FILES["half1"], HALF_MAP_FILES["half2"]))
        self.assertEqual(RESOLUTION_FILE, HALF_MAP_FILES["resolution"])
        volume = self.abinitio.outputVolume
        self.assertTrue(volume.hasHalfMaps())
        halves = list(volume.getHalfMaps(asList=True))
        self.assertEqual([os.path.basename(path) for path in halves], list(HALF_MAPS))
        for path in halves:
            self.assertEqual(Volume(location=path).getDim(), (BOX, BOX, BOX))
        resolution = self.abinitio.readResolution()
        self.assertGreater(resolution["resolution_angstrom"], 0)
        self.assertIn(f"FSC=0.143 at {resolution['resolution_angstrom']:.2f} Å", " ".join(self.abinitio.summary()))

    def test_progress_reaches_the_output_log(self):
        """The run's stdout log (Scipion's Output Log) has the core's plain progress lines, no bar."""
        with open(self.abinitio.getStdoutLog()) as handle:
            log = handle.read()
        self.assertIn("progress: epoch", log)
        self.assertNotIn("\r", log)
        self.assertNotIn("--no-progress", log)

    def test_abinitio_poses_are_the_core_poses_in_pixels(self):
        """Each Transform holds the pose cryoai wrote (origins Å -> pixels), in input order."""
        _, angles, originsA = convert.readPoses(self.abinitio.getCheckpointPath().replace("checkpoint.pt",
                                                                                           "particles.star"))
        particles = self.abinitio.outputParticles.iterItems(orderBy="id")
        for particle, rowAngles, rowOrigin in zip(particles, angles, originsA, strict=True):
            ourAngles, ourShifts = convert.transformMatrixToPose(particle.getTransform().getMatrix())
            np.testing.assert_allclose(convert.eulerToMatrix(ourAngles), convert.eulerToMatrix(rowAngles),
                                       atol=1e-5)
            np.testing.assert_allclose(ourShifts, rowOrigin / PIXEL_SIZE_A, atol=1e-5)

    def test_abinitio_particles_carry_the_core_score(self):
        """Each output particle holds the star's rlnCryoaiScore as the Float attribute _cryoai_score."""
        from cryoai_core.train.score import SCORE_COLUMN
        self.assertEqual(convert.SCORE_COLUMN, SCORE_COLUMN)
        scores = convert.readScores(self.abinitio.getCheckpointPath().replace("checkpoint.pt", "particles.star"))
        self.assertIsNotNone(scores)
        particles = self.abinitio.outputParticles.iterItems(orderBy="id")
        for particle, score in zip(particles, scores, strict=True):
            self.assertAlmostEqual(getattr(particle, convert.SCORE_ATTRIBUTE).get(), score, places=3)

    def test_abinitio_particles_carry_the_half_map_split_through_relion(self):
        """Each output particle holds its half (the star's rlnRandomSubset) as _rlnRandomSubset, and RELION's
        own particle writer passes the split on, so a RELION refinement keeps the halves."""
        from cryoai_core.reconstruct import SUBSET_COLUMN
        from relion.convert import writeSetOfParticles
        self.assertEqual(convert.SUBSET_COLUMN, SUBSET_COLUMN)
        subsets = convert.readSubsets(self.abinitio.getCheckpointPath().replace("checkpoint.pt", "particles.star"))
        self.assertEqual(sorted(set(subsets.tolist())), [1, 2])
        particles = self.abinitio.outputParticles.iterItems(orderBy="id")
        ours = [getattr(particle, convert.SUBSET_ATTRIBUTE).get() for particle in particles]
        self.assertEqual(ours, subsets.tolist())
        folder = os.path.abspath(self.proj.getTmpPath("relion_split"))
        os.makedirs(folder, exist_ok=True)
        star = os.path.join(folder, "particles.star")
        writeSetOfParticles(self.abinitio.outputParticles, star, outputDir=folder, alignType=ALIGN_PROJ)
        table = starfile.read(star, always_dict=True)["particles"]
        self.assertEqual(table[SUBSET_COLUMN].astype(int).tolist(), subsets.tolist())
        self.assertIn("Gold standard", " ".join(self.abinitio.summary()))

    def test_abinitio_poses_beat_random(self):
        predicted = self._rotations(self.abinitio.outputParticles)
        truth = convert.eulerToMatrix(self.truth.angles()[list(self.trainRows)])
        error = alignedMedianErrorDegrees(predicted, truth)
        baseline = randomBaselineDegrees(truth)
        print(f"ab initio median pose error {error:.1f} deg, random baseline {baseline:.1f} deg")
        self.assertLess(error, baseline - 5.0)

    def test_abinitio_summary_methods_citations(self):
        from cryoai_scipion.protocols.protocol_abinitio import trainingSummary
        last = self.abinitio.readMetrics()[-1]
        self.assertEqual(self.abinitio.summary()[0], trainingSummary(last))
        self.assertIn(f"phase {last['phase']}", self.abinitio.summary()[0])
        summary = " ".join(self.abinitio.summary())
        self.assertIn(f"{BOX} px box", summary)
        self.assertIn(f"{TRAIN_COUNT} particles", summary)
        self.assertIn(f"Fourier-cropped to {TRAINING_BOX} px", " ".join(self.abinitio.methods()))
        self.assertEqual(self.abinitio._citations(), ["Levy2022"])

    # --------------------------- chaining -----------------------------------------------------
    def test_half_map_summary_flags_a_resolution_not_established(self):
        from cryoai_scipion.protocols.protocol_abinitio import halfMapSummary
        base = {"resolution_angstrom": 7.5, "particles_per_half": [10, 10], "gold_standard_rounds": 3}
        self.assertNotIn("NOT ESTABLISHED", halfMapSummary(dict(base, resolution_established=True)))
        flagged = halfMapSummary(dict(base, resolution_established=False,
                                      resolution_warning="resolution not established: shared noise"))
        self.assertIn("RESOLUTION NOT ESTABLISHED", flagged)
        self.assertIn("resolution not established: shared noise", flagged)

    def test_relion_writer_keeps_our_poses(self):
        """RELION's own particle writer turns outputParticles into a star with the same poses."""
        from relion.convert import writeSetOfParticles
        folder = os.path.abspath(self.proj.getTmpPath("relion_chain"))
        os.makedirs(folder, exist_ok=True)
        star = os.path.join(folder, "particles.star")
        writeSetOfParticles(self.abinitio.outputParticles, star, outputDir=folder, alignType=ALIGN_PROJ)
        table = starfile.read(star, always_dict=True)["particles"]
        self.assertEqual(len(table), TRAIN_COUNT)
        _, angles, originsA = convert.readPoses(self.abinitio.getCheckpointPath().replace("checkpoint.pt",
                                                                                           "particles.star"))
        theirs = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float)
        np.testing.assert_allclose(convert.eulerToMatrix(theirs), convert.eulerToMatrix(angles), atol=1e-4)
        np.testing.assert_allclose(table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=float),
                                   originsA, atol=1e-3)
        np.testing.assert_allclose(table["rlnDefocusU"].to_numpy(dtype=float),
                                   self.truth.table["rlnDefocusU"].to_numpy()[:TRAIN_COUNT], rtol=1e-5)

    def test_relion_refine3d_accepts_outputs(self):
        from relion import Plugin as RelionPlugin
        from relion.protocols import ProtRelionRefine3D
        home = RelionPlugin.getHome()
        if not os.path.isdir(home):  # no RELION binaries here: only the installation check would fail
            fake = os.path.abspath(self.proj.getTmpPath("relion_home"))
            os.makedirs(fake, exist_ok=True)
            RelionPlugin._addVar("RELION_HOME", fake)
            self.addCleanup(RelionPlugin._addVar, "RELION_HOME", home)
        refine = self.newProtocol(ProtRelionRefine3D, copyAlignment=True, numberOfMpi=3, doGpu=False,
                                  symmetryGroup="c1")
        refine.inputParticles.set(self.abinitio)
        refine.inputParticles.setExtended("outputParticles")
        refine.referenceVolume.set(self.abinitio)
        refine.referenceVolume.setExtended("outputVolume")
        self.assertEqual(refine.validate(), [])

    def test_cryosparc_refine_input_checks(self):
        """cryoSPARC homogeneous refinement: its writer keeps our poses and its own input checks pass (the
        server and GPU checks are the only ones that need a running cryoSPARC)."""
        import cryosparc2.protocols.protocol_cryosparc_homogeneous_refine as module
        from cryosparc2.convert import writeSetOfParticles
        refine = self.newProtocol(module.ProtCryoSparc3DHomogeneousRefine)
        refine.inputParticles.set(self.abinitio)
        refine.inputParticles.setExtended("outputParticles")
        refine.referenceVolume.set(self.abinitio)
        refine.referenceVolume.setExtended("outputVolume")
        with mock.patch.object(module, "cryosparcValidate", return_value=[]), \
                mock.patch.object(module, "gpusValidate", return_value=[]):
            self.assertFalse(refine._validate())
        folder = os.path.abspath(self.proj.getTmpPath("cryosparc_chain"))
        os.makedirs(folder, exist_ok=True)
        star = os.path.join(folder, "particles.star")
        writeSetOfParticles(self.abinitio.outputParticles, star, folder)
        table = starfile.read(star, always_dict=True)
        table = table[next(iter(table))] if isinstance(table, dict) else table
        _, angles, originsA = convert.readPoses(self.abinitio.getCheckpointPath().replace("checkpoint.pt",
                                                                                           "particles.star"))
        theirs = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=float)
        np.testing.assert_allclose(convert.eulerToMatrix(theirs), convert.eulerToMatrix(angles), atol=1e-4)
        np.testing.assert_allclose(table[["rlnOriginX", "rlnOriginY"]].to_numpy(dtype=float),
                                   originsA / PIXEL_SIZE_A, atol=1e-3)

    # --------------------------- predict poses -------------------------------------------------
    def test_predict_poses(self):
        predict = self.newProtocol(CryoAIProtPredictPoses, useGpu=False)
        predict.abinitioRun.set(self.abinitio)
        predict.inputParticles.set(self.predictParticles)
        self.launchProtocol(predict)
        particles = predict.outputParticles
        self.assertEqual(particles.getSize(), PREDICT_COUNT)
        self.assertTrue(particles.hasAlignmentProj())
        self.assertTrue(particles.hasCTF())
        self.assertAlmostEqual(particles.getSamplingRate(), PIXEL_SIZE_A)
        first, source = particles.getFirstItem(), self.predictParticles.getFirstItem()
        self.assertEqual(first.getLocation(), source.getLocation())
        rotations = self._rotations(particles)
        self.assertTrue(np.allclose(np.einsum("nij,nkj->nik", rotations, rotations), np.eye(3), atol=1e-5))
        truth = convert.eulerToMatrix(self.truth.angles()[list(self.predictRows)])
        error, baseline = alignedMedianErrorDegrees(rotations, truth), randomBaselineDegrees(truth)
        print(f"predict-poses median pose error {error:.1f} deg, random baseline {baseline:.1f} deg")
        self.assertLess(error, baseline - 5.0)

    # --------------------------- continue a run -----------------------------------------------
    def test_continue_resumes_from_checkpoint(self):
        """Continuing a run with more epochs resumes the training: the metrics of the first part are
        kept and the step count goes on."""
        run = self.newProtocol(CryoAIProtAbinitio, objLabel="cryoAI continue",
                               **dict(TINY_TRAINING, numEpochs=3))
        run.inputParticles.set(self.trainParticles)
        self.launchProtocol(run)
        before = run.readMetrics()
        self.assertTrue(before)
        run.numEpochs.set(6)
        self.launchProtocol(run)
        after = run.readMetrics()
        self.assertEqual(after[:len(before)], before)
        self.assertGreater(len(after), len(before))
        self.assertGreater(after[-1]["step"], before[-1]["step"])
        self.assertGreater(after[-1]["epoch"], before[-1]["epoch"])
        logs = "".join(open(path).read() for path in run.getLogPaths() if os.path.exists(path))
        self.assertIn("continuing the training from its checkpoint", logs)

    # --------------------------- validation -----------------------------------------------------
    def test_validation_accepts_good_input(self):
        self.assertEqual(self._abinitioOn(self.trainParticles).validate(), [])

    def test_validation_rejects_particles_without_ctf(self):
        noCtf = self._memorySet("noctf", range(TRAIN_COUNT), withCtf=False)
        self.assertIn("no CTF", " ".join(self._abinitioOn(noCtf).validate()))

    def test_validation_rejects_empty_set(self):
        empty = self._memorySet("empty", [])
        self.assertIn("empty", " ".join(self._abinitioOn(empty).validate()))

    def test_validation_rejects_few_particles(self):
        few = self._memorySet("few", range(20))
        self.assertIn("Only 20 particles", " ".join(self._abinitioOn(few).validate()))

    def test_validation_rejects_odd_boxes_and_gpu_lists(self):
        protocol = self._abinitioOn(self.trainParticles, trainingBox=25)
        self.assertIn("training box must be even", " ".join(protocol.validate()))
        with mock.patch.object(SetOfParticles, "getXDim", return_value=31):
            self.assertIn("even box", " ".join(self._abinitioOn(self.trainParticles).validate()))
        gpus = self._abinitioOn(self.trainParticles, useGpu=True, gpuList="zero")
        self.assertIn("Invalid GPU list", " ".join(gpus.validate()))
        with mock.patch.object(Plugin, "getDeviceReport", return_value={"cuda": True, "gpus": 1}):
            self.assertEqual(self._abinitioOn(self.trainParticles, useGpu=True, gpuList="0").validate(), [])
        limits = self._abinitioOn(self.trainParticles, numEpochs=0, maxMinutes=0)
        self.assertIn("training needs a limit", " ".join(limits.validate()))
        reserved = self._abinitioOn(self.trainParticles, extraParams="--resume")
        self.assertIn("--resume", " ".join(reserved.validate()))

    def test_predict_form_prefills_latest_finished_run(self):
        unfinished = self.newProtocol(CryoAIProtAbinitio)
        self.proj.saveProtocol(unfinished)
        chosen = self.newProtocol(CryoAIProtPredictPoses).abinitioRun.get()
        self.assertIsInstance(chosen, CryoAIProtAbinitio)
        self.assertTrue(chosen.isFinished())
        finished = [run for run in self.proj.getRuns() if isinstance(run, CryoAIProtAbinitio) and run.isFinished()]
        self.assertEqual(chosen.endTime.get(), max(run.endTime.get() for run in finished))
        self.assertIs(self.newProtocol(CryoAIProtPredictPoses, abinitioRun=None).abinitioRun.get(), None)

    def test_form_defaults_and_checks_are_the_cores(self):
        from cryoai_core.train import config_flags
        from cryoai_core.train.config import DEFAULT_MAX_BOX, FORM_EPOCHS
        defaults = config_flags.defaults()
        protocol = self.newProtocol(CryoAIProtAbinitio)
        self.assertEqual(protocol.trainingBox.get(), DEFAULT_MAX_BOX)
        self.assertEqual(protocol.numEpochs.get(), FORM_EPOCHS)
        for param, name in (("batchSize", "batch_size"), ("seed", "seed"), ("lrEncoder", "lr_encoder"),
                            ("lrDecoder", "lr_decoder"), ("numWorkers", "num_workers"),
                            ("symmetricLoss", "symmetric_loss"), ("poseBootstrap", "bootstrap"),
                            ("invertContrast", "invert_contrast")):
            self.assertEqual(getattr(protocol, param).get(), defaults[name], param)
        with mock.patch.object(Plugin, "getDeviceReport", return_value={"cuda": True, "gpus": 1}):
            batchOfOne = self._abinitioOn(self.trainParticles, batchSize=1, useGpu=True, gpuList="0")
            self.assertIn("--batch-size must be at least 2", " ".join(batchOfOne.validate()))
            rate = self._abinitioOn(self.trainParticles, lrEncoder=1.5, useGpu=True, gpuList="0")
            self.assertIn("--lr-encoder must be in (0, 1)", " ".join(rate.validate()))

    def test_predict_validation(self):
        predict = self.newProtocol(CryoAIProtPredictPoses, useGpu=False)
        unfinished = self.newProtocol(CryoAIProtAbinitio)
        self.proj.saveProtocol(unfinished)
        predict.abinitioRun.set(unfinished)
        predict.inputParticles.set(self._memorySet("predict_noctf", range(5), withCtf=False))
        errors = " ".join(predict.validate())
        self.assertIn("no CTF", errors)
        self.assertIn("no trained networks", errors)

    # --------------------------- viewer and wizard ------------------------------------------------
    def test_viewer_views(self):
        from cryoai_scipion.viewers import CryoAIViewer
        from pwem.viewers import EmPlotter
        viewer = CryoAIViewer(project=self.proj, protocol=self.abinitio)
        for show in (viewer._showLoss, viewer._showPoses, viewer._showVolume):
            views = show()
            self.assertEqual(len(views), 1)
            self.assertIsInstance(views[0], EmPlotter)
        lossAxes = viewer._showLoss()[0].getFigure().axes
        self.assertEqual(len(lossAxes), 2)  # the loss, and the Fourier radius on a right-hand axis
        figures = viewer._showFigures()
        self.assertEqual(len(figures), 3)

    def test_mask_wizard_start_radius(self):
        from cryoai_scipion.wizards import CryoAIMaskRadiusWizard
        protocol = self._abinitioOn(self.trainParticles)
        self.assertEqual(CryoAIMaskRadiusWizard.startRadiusAngstrom(protocol), round(0.45 * BOX * PIXEL_SIZE_A))
        protocol.maskRadiusA.set(30.0)
        self.assertEqual(CryoAIMaskRadiusWizard.startRadiusAngstrom(protocol), 30.0)
        self.assertIsNotNone(CryoAIMaskRadiusWizard()._getProvider(protocol))

    # --------------------------- helpers ------------------------------------------------------------
    def _abinitioOn(self, particles, **kwargs):
        protocol = self.newProtocol(CryoAIProtAbinitio, **dict(TINY_TRAINING, **kwargs))
        protocol.inputParticles.set(particles)
        return protocol

    def _memorySet(self, name, rows, withCtf=True):
        sqlite = writeParticlesSqlite(os.path.abspath(self.proj.getTmpPath(f"{name}.sqlite")), self.truth,
                                      rows, withCtf=withCtf)
        particles = SetOfParticles(filename=sqlite)
        if len(rows):
            particles.loadAllProperties()
        return particles

    @staticmethod
    def _rotations(particles) -> np.ndarray:
        """The RELION matrices ``A`` ``(N, 3, 3)`` of a set with projection alignment, in id order."""
        return np.array([p.getTransform().getMatrix()[:3, :3].T for p in particles.iterItems(orderBy="id")])
