"""PNG figures of a reconstruction: FSC curves, loss curve, viewing-direction distribution, map slices.

Figures are drawn with matplotlib's object API on an Agg canvas (no display, no global backend change,
so importing this module inside a GUI application is harmless). Each function writes one PNG and
returns its path.
"""
import csv
import logging
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryoai_core.io.atomic import atomic_path

logger = logging.getLogger(__name__)


def _save(figure: Figure, path) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    FigureCanvasAgg(figure)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    return path


def plot_fsc(path, curves: dict, pixel_size_angstrom: float, thresholds=(0.5, 0.143)) -> str:
    """FSC curves against spatial frequency (1/Å), with the resolution in Å on a top axis.

    Args:
        path: output PNG.
        curves: ``label -> (frequencies (S,) in cycles per pixel, fsc (S,))``.
        pixel_size_angstrom: pixel size of the maps.
        thresholds: horizontal guide lines.
    """
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_angstrom}")
    figure = Figure(figsize=(6.0, 4.0))
    axes = figure.add_subplot()
    for label, (frequencies, fsc) in curves.items():
        axes.plot(np.asarray(frequencies) / pixel_size_angstrom, np.asarray(fsc), label=label)
    for threshold in thresholds:
        axes.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
        axes.text(0.0, threshold, f" {threshold:g}", va="bottom", color="grey", fontsize=8)
    nyquist = 0.5 / pixel_size_angstrom
    axes.set_xlim(0.0, nyquist)
    axes.set_ylim(min(-0.1, axes.get_ylim()[0]), 1.05)
    axes.set_xlabel("spatial frequency (1/Å)")
    axes.set_ylabel("FSC")
    ticks = np.linspace(0.0, nyquist, 6)[1:]
    top = axes.twiny()
    top.set_xlim(axes.get_xlim())
    top.set_xticks(ticks)
    top.set_xticklabels([f"{1.0 / tick:.1f}" for tick in ticks])
    top.set_xlabel("resolution (Å)")
    if curves:
        axes.legend(loc="upper right")
    figure.tight_layout()
    return _save(figure, path)


def _read_loss_csv(csv_path, step_column: str, loss_column: str):
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or loss_column not in rows[0]:
        raise ValueError(f"{csv_path}: no '{loss_column}' column")
    steps, losses = [], []
    for number, row in enumerate(rows):
        value = row.get(loss_column, "")
        if value in ("", None):
            continue
        steps.append(float(row[step_column]) if row.get(step_column) not in ("", None) else float(number))
        losses.append(float(value))
    return np.asarray(steps), np.asarray(losses)


def plot_loss_curve(path, source, smoothing: int = 0, step_column: str = "step",
                    loss_column: str = "loss") -> str:
    """Training loss against step on a log scale.

    Args:
        path: output PNG.
        source: a CSV file with ``step_column`` and ``loss_column`` columns, or a pair
            ``(steps (T,), losses (T,))``.
        smoothing: width of a moving average drawn over the raw curve (0 for none).
    """
    if isinstance(source, (str, os.PathLike)):
        steps, losses = _read_loss_csv(source, step_column, loss_column)
    else:
        steps, losses = (np.asarray(values, dtype=np.float64) for values in source)
    if steps.shape != losses.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError("steps and losses must be non-empty 1D arrays of the same length")
    figure = Figure(figsize=(6.0, 4.0))
    axes = figure.add_subplot()
    axes.plot(steps, losses, linewidth=0.8, alpha=0.5 if smoothing > 1 else 1.0, label="loss")
    if smoothing > 1 and len(losses) >= smoothing:
        kernel = np.ones(smoothing) / smoothing
        axes.plot(steps[smoothing - 1:], np.convolve(losses, kernel, mode="valid"), linewidth=1.5,
                  label=f"moving average ({smoothing})")
        axes.legend(loc="upper right")
    if np.all(losses > 0):
        axes.set_yscale("log")
    else:
        logger.warning("loss has non-positive values; plotting on a linear scale")
    axes.set_xlabel("step")
    axes.set_ylabel(loss_column)
    figure.tight_layout()
    return _save(figure, path)


def viewing_directions(rotations) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth and elevation (radians) of the viewing directions of ``(N, 3, 3)`` RELION matrices ``A``.

    The projection direction in map coordinates is ``Aᵀ e_z``, the third row of ``A``,
    ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``: azimuth = rot, elevation = 90° − tilt.
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    if rotations.ndim != 3 or rotations.shape[1:] != (3, 3):
        raise ValueError(f"rotations must have shape (N, 3, 3), got {rotations.shape}")
    direction = rotations[:, 2, :]
    azimuth = np.arctan2(direction[:, 1], direction[:, 0])
    elevation = np.arcsin(np.clip(direction[:, 2], -1.0, 1.0))
    return azimuth, elevation


def plot_pose_distribution(path, rotations, bins: int = 36) -> str:
    """2D histogram of viewing directions on a Mollweide (equal-area) map of the sphere.

    Args:
        path: output PNG.
        rotations: ``(N, 3, 3)`` RELION matrices ``A``.
        bins: longitude bins (half as many latitude bins).
    """
    azimuth, elevation = viewing_directions(rotations)
    longitudes = np.linspace(-math.pi, math.pi, bins + 1)
    # Equal-area latitude bins (uniform in sin(elevation)), so a uniform distribution looks flat.
    latitudes = np.arcsin(np.linspace(-1.0, 1.0, bins // 2 + 1))
    counts, _, _ = np.histogram2d(azimuth, elevation, bins=[longitudes, latitudes])
    figure = Figure(figsize=(7.0, 4.0))
    axes = figure.add_subplot(projection="mollweide")
    mesh = axes.pcolormesh(longitudes, latitudes, counts.T, cmap="viridis", shading="flat")
    figure.colorbar(mesh, ax=axes, orientation="horizontal", fraction=0.05, pad=0.08,
                    label="particles per bin")
    axes.set_title(f"viewing directions ({len(azimuth)} particles; azimuth = rot, elevation = 90° − tilt)",
                   fontsize=9, pad=14)
    axes.tick_params(labelsize=7)
    axes.grid(True, alpha=0.3)
    return _save(figure, path)


def plot_central_slices(path, volume, title: str = "") -> str:
    """Central slices (top row) and projections (bottom row) of a map along z, y and x.

    Args:
        path: output PNG.
        volume: ``(L, L, L)`` map, ``[z, y, x]``.
        title: figure title.
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.shape}")
    centre = [size // 2 for size in volume.shape]
    slices = [("xy slice (z = centre)", volume[centre[0]]), ("xz slice (y = centre)", volume[:, centre[1]]),
              ("yz slice (x = centre)", volume[:, :, centre[2]])]
    projections = [("projection along z", volume.sum(axis=0)), ("projection along y", volume.sum(axis=1)),
                   ("projection along x", volume.sum(axis=2))]
    figure = Figure(figsize=(9.0, 6.2))
    for index, (label, image) in enumerate(slices + projections):
        axes = figure.add_subplot(2, 3, index + 1)
        axes.imshow(image, cmap="gray", origin="lower")
        axes.set_title(label, fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)
