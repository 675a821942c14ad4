"""Viewer of a cryoAI ab initio run: loss curve, pose distribution, the map, and the core's figures."""
import os

import matplotlib.image
import mrcfile
import numpy as np
import pyworkflow.protocol.params as params
import pyworkflow.viewer as pwviewer
from pwem.viewers import EmPlotter, EmProtocolViewer
from pwem.viewers.viewer_chimera import Chimera, ChimeraView

from cryoai_core.plots import draw_training_schedule
from cryoai_scipion.protocols import CryoAIProtAbinitio, CryoAIProtPredictPoses

CORE_FIGURES = ("loss.png", "poses.png", "slices.png")
"""Figures ``cryoai abinit`` writes into its output folder."""


def chimeraProgram():
    """The ChimeraX executable configured in Scipion, or None when it is not installed."""
    program = Chimera.getProgram()
    return program if program and os.path.exists(program) else None


class CryoAIViewer(EmProtocolViewer):
    """Inspect a cryoAI run: how the loss evolved, how the predicted projection directions cover the
    sphere, the map, and the summary figures written by cryoAI."""
    _label = "cryoAI viewer"
    _targets = [CryoAIProtAbinitio, CryoAIProtPredictPoses]
    _environments = [pwviewer.DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label="Visualization")
        isAbinitio = isinstance(self.protocol, CryoAIProtAbinitio)
        if isAbinitio:
            form.addParam("showLoss", params.LabelParam, label="Loss curve",
                          help="Training loss against the optimisation step (from metrics.csv), with the "
                               "phase switches (dashed) and the Fourier radius the loss is computed within "
                               "(right axis): the loss grows with the radius, which is not divergence.")
        form.addParam("showPoses", params.LabelParam, label="Pose distribution",
                      help="Predicted projection directions (tilt and rot) of the output particles.")
        if isAbinitio:
            form.addParam("showVolume", params.LabelParam, label="Map",
                          help="The output map in ChimeraX when Scipion has it, otherwise its central slices.")
            form.addParam("showFigures", params.LabelParam, label="cryoAI figures",
                          help="The figures cryoAI wrote: loss, poses and map slices.")

    def _getVisualizeDict(self):
        return {"showLoss": self._showLoss, "showPoses": self._showPoses, "showVolume": self._showVolume,
                "showFigures": self._showFigures}

    def _showLoss(self, paramName=None):
        metrics = self.protocol.readMetrics()
        if not metrics:
            return [self.infoMessage("No training metrics yet.", title="cryoAI")]
        plotter = EmPlotter(windowTitle="cryoAI loss")
        axes = plotter.createSubPlot("Training loss", "step", "loss")
        steps = [row["step"] for row in metrics]
        plotter.plotData(steps, [row["loss"] for row in metrics], color="tab:blue")
        phases = [row.get("phase", "") for row in metrics] if "phase" in metrics[0] else None
        radii = [row.get("radius_px", float("nan")) for row in metrics] if "radius_px" in metrics[0] else None
        draw_training_schedule(axes, steps, phases, radii)
        return [plotter]

    def _showPoses(self, paramName=None):
        particles = getattr(self.protocol, "outputParticles", None)
        if particles is None:
            return [self.infoMessage("No particles with predicted poses yet.", title="cryoAI")]
        plotter = EmPlotter(windowTitle="cryoAI pose distribution")
        plotter.plotAngularDistributionFromSet(particles, "Predicted projection directions")
        return [plotter]

    def _showVolume(self, paramName=None):
        volume = getattr(self.protocol, "outputVolume", None)
        if volume is None:
            return [self.infoMessage("No map yet.", title="cryoAI")]
        program = chimeraProgram()
        if program:
            return [ChimeraView(os.path.abspath(volume.getFileName()))]
        return [volumeSlicesPlotter(volume.getFileName())]

    def _showFigures(self, paramName=None):
        folder = os.path.dirname(self.protocol.getCheckpointPath())
        paths = [os.path.join(folder, name) for name in CORE_FIGURES
                 if os.path.exists(os.path.join(folder, name))]
        if not paths:
            return [self.infoMessage("cryoAI has not written its figures yet.", title="cryoAI")]
        return [imagePlotter(path) for path in paths]


def imagePlotter(path: str) -> EmPlotter:
    """A window showing a PNG file."""
    plotter = EmPlotter(windowTitle=os.path.basename(path), figsize=(8, 6))
    axes = plotter.createSubPlot(os.path.basename(path), "", "")
    axes.imshow(matplotlib.image.imread(path))
    axes.set_axis_off()
    return plotter


def volumeSlicesPlotter(path: str) -> EmPlotter:
    """A window with the three central slices (z, y, x) of a map."""
    with mrcfile.open(path.split(":")[0], permissive=True) as handle:
        data = np.asarray(handle.data, dtype=np.float32)
    centre = data.shape[0] // 2
    plotter = EmPlotter(x=1, y=3, windowTitle="cryoAI map", figsize=(10, 4))
    for title, section in (("XY (z = centre)", data[centre]), ("XZ (y = centre)", data[:, centre]),
                           ("YZ (x = centre)", data[:, :, centre])):
        axes = plotter.createSubPlot(title, "", "")
        axes.imshow(section, cmap="gray", origin="lower")
        axes.set_axis_off()
    return plotter
