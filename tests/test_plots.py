"""Figures: each plot writes a readable, non-empty PNG of the expected size."""
import matplotlib.image
import numpy as np
import pytest
import torch

from cryoai_core.plots import (draw_training_schedule, plot_central_slices, plot_fsc, plot_loss_curve,
                               plot_pose_distribution, schedule_changes, viewing_directions)
from cryoai_core.rotations import euler_to_matrix, random_rotations


def assert_png(path):
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something is drawn


def test_fsc_plot(tmp_path):
    frequencies = np.arange(33) / 64
    curves = {"map": (frequencies, np.exp(-(frequencies / 0.2) ** 2)), "other": (frequencies, np.ones(33))}
    path = plot_fsc(tmp_path / "out" / "fsc.png", curves, pixel_size_angstrom=1.5)
    assert path == str(tmp_path / "out" / "fsc.png")
    assert_png(path)


def test_loss_curve_from_a_csv_file_and_from_arrays(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    rows = ["step,loss,lr"] + [f"{step},{1.0 / (step + 1) + 0.01},0.001" for step in range(200)]
    csv_path.write_text("\n".join(rows) + "\n")
    assert_png(plot_loss_curve(tmp_path / "loss.png", str(csv_path), smoothing=10))
    steps = np.arange(50)
    assert_png(plot_loss_curve(tmp_path / "loss2.png", (steps, np.exp(-steps / 10.0))))
    with pytest.raises(ValueError, match="no 'total' column"):
        plot_loss_curve(tmp_path / "bad.png", str(csv_path), loss_column="total")


def test_viewing_directions_follow_rot_and_tilt():
    angles = np.array([[30.0, 60.0, 10.0], [-120.0, 150.0, 80.0], [0.0, 0.0, 45.0]])
    azimuth, elevation = viewing_directions(euler_to_matrix(angles).numpy())
    np.testing.assert_allclose(np.degrees(azimuth[:2]), angles[:2, 0], atol=1e-9)
    np.testing.assert_allclose(np.degrees(elevation), 90.0 - angles[:, 1], atol=1e-6)


def test_pose_distribution_plot(tmp_path):
    rotations = random_rotations(3000, torch.Generator().manual_seed(0)).numpy()
    assert_png(plot_pose_distribution(tmp_path / "poses.png", rotations))


def test_central_slices_plot(tmp_path):
    axis = np.arange(32) - 16
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    volume = np.exp(-((x - 4) ** 2 + y ** 2 / 4 + (z + 3) ** 2) / 20.0)
    assert_png(plot_central_slices(tmp_path / "slices.png", volume, title="blob"))


def test_schedule_changes():
    assert schedule_changes([0, 20, 40, 60], ["bootstrap", "bootstrap", "amortized", "amortized"]) == \
        [(40.0, "amortized")]
    assert schedule_changes([0, 20, 40], [4.0, 6.0, 6.0]) == [(20.0, 6.0)]
    assert schedule_changes([0], ["bootstrap"]) == []


def test_loss_plot_marks_phase_switches_and_radius(tmp_path):
    """A loss that rises with the Fourier radius is drawn with the radius (right axis) and the phase switch,
    so it is not read as divergence."""
    from matplotlib.figure import Figure
    steps = np.arange(0, 200, 20.0)
    radii = np.minimum(4.0 + steps // 40 * 2.0, 10.0)
    phases = ["bootstrap"] * 6 + ["amortized"] * 4
    figure = Figure()
    axes = figure.add_subplot()
    axes.plot(steps, radii ** 2)
    radius_axes = draw_training_schedule(axes, steps, phases, radii)
    switches = [line for line in axes.lines if line.get_label() == "phase → amortized"]
    assert len(switches) == 1 and list(switches[0].get_xdata()) == [120.0, 120.0]
    assert radius_axes is not None and radius_axes is not axes
    np.testing.assert_array_equal(radius_axes.lines[0].get_ydata(), radii)
    assert draw_training_schedule(axes, steps) is None

    csv_path = tmp_path / "metrics.csv"
    rows = ["step,epoch,phase,radius_px,loss"] + [f"{step:g},{step / 50:g},{phase},{radius:.2f},{radius ** 2 / 100:g}"
                                                  for step, phase, radius in zip(steps, phases, radii)]
    csv_path.write_text("\n".join(rows) + "\n")
    assert_png(plot_loss_curve(tmp_path / "loss.png", str(csv_path), smoothing=3))
