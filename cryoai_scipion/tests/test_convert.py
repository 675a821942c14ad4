"""Conversions and packaging of the plugin, without running any protocol."""
import configparser
import json
import os
import subprocess
import sys

import mrcfile
import numpy as np
from pyworkflow.tests import BaseTest, setupTestOutput

import cryoai_scipion
import cryoai_scipion.protocols
from cryoai_scipion import convert
from cryoai_scipion.tests.pose_error import alignedMedianErrorDegrees, randomBaselineDegrees
from cryoai_scipion.tests.synthetic import StarParticles, writeParticlesSqlite

ANGLES = np.array([[10.0, 20.0, 30.0], [-150.0, 95.0, 170.0], [75.0, 160.0, -40.0]])
SHIFTS_PX = np.array([[1.5, -2.0], [0.0, 3.25], [-4.0, 0.5]])


def relionMatrix(rot, tilt, psi):
    """RELION's Euler_angles2matrix, written out from its definition (degrees)."""
    ca, sa = np.cos(np.radians(rot)), np.sin(np.radians(rot))
    cb, sb = np.cos(np.radians(tilt)), np.sin(np.radians(tilt))
    cg, sg = np.cos(np.radians(psi)), np.sin(np.radians(psi))
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([[cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
                     [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
                     [sc, ss, cb]])


class TestCryoAIConvert(BaseTest):
    @classmethod
    def setUpClass(cls):
        setupTestOutput(cls)

    def test_eulerToMatrix_is_relion(self):
        for angles in ANGLES:
            np.testing.assert_allclose(convert.eulerToMatrix(angles), relionMatrix(*angles), atol=1e-12)
        np.testing.assert_allclose(convert.eulerToMatrix(ANGLES), [relionMatrix(*a) for a in ANGLES],
                                   atol=1e-12)

    def test_transform_is_inverse_projection(self):
        """T = inv([[A, -s], [0, 1]]) with s the origin in pixels (Scipion's ALIGN_PROJ convention)."""
        for angles, shifts in zip(ANGLES, SHIFTS_PX):
            projection = np.eye(4)
            projection[:3, :3] = relionMatrix(*angles)
            projection[:3, 3] = -np.array([shifts[0], shifts[1], 0.0])
            matrix = convert.poseToTransformMatrix(angles, shifts)
            np.testing.assert_allclose(matrix, np.linalg.inv(projection), atol=1e-12)
            backAngles, backShifts = convert.transformMatrixToPose(matrix)
            np.testing.assert_allclose(convert.eulerToMatrix(backAngles), relionMatrix(*angles), atol=1e-10)
            np.testing.assert_allclose(backShifts, shifts, atol=1e-10)

    def test_transform_agrees_with_relion_plugin(self):
        from relion.convert.convert_deprecated import geometryFromMatrix, matrixFromGeometry
        for angles, shifts in zip(ANGLES, SHIFTS_PX):
            theirs = matrixFromGeometry(np.array([shifts[0], shifts[1], 0.0]), angles, True)
            ours = convert.poseToTransformMatrix(angles, shifts)
            np.testing.assert_allclose(ours, theirs, atol=1e-10)
            theirShifts, theirAngles = geometryFromMatrix(ours, True)
            np.testing.assert_allclose(theirShifts[:2], shifts, atol=1e-10)
            np.testing.assert_allclose(convert.eulerToMatrix(theirAngles), relionMatrix(*angles), atol=1e-10)

    def test_pose_error_metric(self):
        rng = np.random.default_rng(3)
        from scipy.spatial.transform import Rotation
        truth = Rotation.random(200, random_state=1).as_matrix()
        globalRotation = Rotation.random(random_state=2).as_matrix()
        mirror = np.diag([1.0, 1.0, -1.0])
        self.assertLess(alignedMedianErrorDegrees(truth @ globalRotation, truth), 1e-3)
        self.assertLess(alignedMedianErrorDegrees(mirror @ truth @ globalRotation @ mirror, truth), 1e-3)
        noise = Rotation.from_rotvec(rng.normal(scale=np.radians(10.0) / np.sqrt(3), size=(200, 3)))
        noisy = alignedMedianErrorDegrees(noise.as_matrix() @ truth @ globalRotation, truth)
        self.assertTrue(5.0 < noisy < 15.0, noisy)
        self.assertTrue(100.0 < randomBaselineDegrees(truth) < 130.0)

    def test_write_star_read_by_core(self):
        """The star written for ``cryoai`` holds the particles' CTFs, pixel size, images and poses."""
        from cryoai_core.io.star import read_star
        stackPath = self.getOutputPath("stack.mrcs")
        data = np.random.default_rng(0).normal(size=(5, 16, 16)).astype(np.float32)
        with mrcfile.new(stackPath, overwrite=True) as handle:
            handle.set_data(data)
            handle.voxel_size = 2.5
        starPath = self._writeFakeSimulatorStar(stackPath, len(data))
        matrices = [convert.poseToTransformMatrix(ANGLES[i % 3], SHIFTS_PX[i % 3]) for i in range(5)]
        sqlite = writeParticlesSqlite(self.getOutputPath("parts.sqlite"), StarParticles(starPath), range(5),
                                      transformMatrices=matrices)
        from pwem.objects import SetOfParticles
        particles = SetOfParticles(filename=sqlite)
        particles.loadAllProperties()
        self.assertTrue(particles.hasAlignmentProj())
        outStar = self.getOutputPath("out.star")
        self.assertEqual(convert.writeSetOfParticles(particles, outStar, self.getOutputPath("conv"), True), 5)
        table = read_star(outStar)
        self.assertEqual(len(table), 5)
        self.assertAlmostEqual(table.pixel_size_angstrom, 2.5)
        self.assertEqual(table.box, 16)
        np.testing.assert_array_equal(table.image_indices, np.arange(5))
        self.assertEqual(os.path.realpath(table.stack_files[0]), os.path.realpath(stackPath))
        np.testing.assert_allclose(table.ctf[:, 0], 15000.0 + 100.0 * np.arange(5))
        np.testing.assert_allclose(table.ctf[:, 3:6], [[300.0, 2.7, 0.1]] * 5)
        np.testing.assert_allclose(table.origins_angstrom, SHIFTS_PX[np.arange(5) % 3] * 2.5, atol=1e-5)
        np.testing.assert_allclose(convert.eulerToMatrix(table.euler_angles_degrees),
                                   convert.eulerToMatrix(ANGLES[np.arange(5) % 3]), atol=1e-5)
        names, _, _ = convert.readPoses(outStar)
        self.assertEqual(names[2], "000003@conv/000_stack.mrcs")  # a link, relative to the star's folder
        self.assertEqual(os.path.realpath(self.getOutputPath("conv", "000_stack.mrcs")), os.path.realpath(stackPath))
        self.assertTrue(convert.sameImage(names[2], f"3@{stackPath}", os.path.dirname(outStar)))

    def test_write_star_needs_ctf(self):
        stackPath = self.getOutputPath("stack_noctf.mrcs")
        with mrcfile.new(stackPath, overwrite=True) as handle:
            handle.set_data(np.zeros((2, 8, 8), np.float32))
        starPath = self._writeFakeSimulatorStar(stackPath, 2)
        sqlite = writeParticlesSqlite(self.getOutputPath("noctf.sqlite"), StarParticles(starPath), range(2),
                                      withCtf=False)
        from pwem.objects import SetOfParticles
        particles = SetOfParticles(filename=sqlite)
        particles.loadAllProperties()
        with self.assertRaisesRegex(ValueError, "no CTF"):
            convert.writeSetOfParticles(particles, self.getOutputPath("x.star"), self.getOutputPath("c"))

    def test_protocols_conf_shipped_and_identical(self):
        packageConf = os.path.join(os.path.dirname(cryoai_scipion.__file__), "protocols.conf")
        topConf = os.path.join(os.path.dirname(os.path.dirname(cryoai_scipion.__file__)), "protocols.conf")
        self.assertTrue(os.path.exists(packageConf))
        if os.path.exists(topConf):  # only in a source checkout
            with open(packageConf, "rb") as first, open(topConf, "rb") as second:
                self.assertEqual(first.read(), second.read())
        parser = configparser.ConfigParser()
        parser.optionxform = str
        parser.read(packageConf)
        names = []

        def collect(nodes):
            for node in nodes:
                if node.get("tag") == "protocol":
                    names.append(node["value"])
                collect(node.get("children", []))

        collect(json.loads(parser["PROTOCOLS"]["Protocols SPA"]))
        self.assertEqual(sorted(names), ["CryoAIProtAbinitio", "CryoAIProtPredictPoses"])
        for name in names:
            self.assertTrue(hasattr(cryoai_scipion.protocols, name), name)

    def test_plugin_never_imports_torch(self):
        code = ("import sys, cryoai_scipion, cryoai_scipion.protocols, cryoai_scipion.viewers, "
                "cryoai_scipion.wizards, cryoai_scipion.convert; print('torch' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        self.assertEqual(result.stdout.strip().splitlines()[-1], "False")

    def test_version_is_the_core_version(self):
        import cryoai_core
        self.assertEqual(cryoai_scipion.__version__, cryoai_core.__version__)
        self.assertEqual(cryoai_scipion.Plugin.validateInstallation(), [])

    # --------------------------- helpers ----------------------------------------------------
    def _writeFakeSimulatorStar(self, stackPath: str, count: int) -> str:
        import pandas as pd
        import starfile
        optics = pd.DataFrame([{"rlnOpticsGroup": 1, "rlnImagePixelSize": 2.5, "rlnImageSize": 16,
                                "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                                "rlnAmplitudeContrast": 0.1}])
        rows = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@{stackPath}" for i in range(count)],
                             "rlnOpticsGroup": 1, "rlnDefocusU": 15000.0 + 100.0 * np.arange(count),
                             "rlnDefocusV": 14500.0 + 100.0 * np.arange(count),
                             "rlnDefocusAngle": 30.0, "rlnPhaseShift": 0.0})
        path = os.path.splitext(stackPath)[0] + ".star"
        starfile.write({"optics": optics, "particles": rows}, path, overwrite=True)
        return path
