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


def _read_loss_csv(csv_path, step_column: str, loss_column: str, phase_column: str, radius_column: str):
    """Rows of a metrics CSV that have a loss: ``(steps (T,), losses (T,), phases (T,) or None,
    radii (T,) or None)``; phases and radii are None when the file lacks their column."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or loss_column not in rows[0]:
        raise ValueError(f"{csv_path}: no '{loss_column}' column")
    rows = [(number, row) for number, row in enumerate(rows) if row.get(loss_column) not in ("", None)]
    steps = np.asarray([float(row[step_column]) if row.get(step_column) not in ("", None) else float(number)
                        for number, row in rows])
    losses = np.asarray([float(row[loss_column]) for _, row in rows])
    header = set(rows[0][1]) if rows else set()
    phases = [row.get(phase_column) or "" for _, row in rows] if phase_column in header else None
    radii = (np.asarray([float(row.get(radius_column) or "nan") for _, row in rows])
             if radius_column in header else None)
    return steps, losses, phases, radii


def schedule_changes(steps, values) -> list:
    """``[(step, new value), ...]`` wherever ``values`` differs from the previous row (not the first row).

    Args:
        steps: ``(T,)`` steps of the rows.
        values: ``(T,)`` a value per row (a phase name, a Fourier radius...).
    """
    values = list(values)
    return [(float(steps[index]), values[index]) for index in range(1, len(values))
            if values[index] != values[index - 1]]


def draw_training_schedule(axes, steps, phases=None, radii=None):
    """Mark what changes the loss's scale on a loss-against-step plot: a vertical line at each phase
    switch, labelled with the new phase, and the Fourier radius the loss is computed within as a step line
    on a right-hand axis. The loss sums more Fourier components as the radius grows, so it can rise while
    the reconstruction improves.

    Args:
        axes: matplotlib axes holding the loss.
        steps: ``(T,)`` steps of the rows.
        phases: ``(T,)`` phase names, or None.
        radii: ``(T,)`` Fourier radii in pixels, or None.

    Returns:
        The right-hand axes of the radius, or None.
    """
    steps = np.asarray(steps, dtype=np.float64)
    if phases is not None:
        for step, phase in schedule_changes(steps, phases):
            axes.axvline(step, color="tab:red", linestyle="--", linewidth=1.0, label=f"phase → {phase}")
            axes.text(step, 1.0, f" {phase}", transform=axes.get_xaxis_transform(), color="tab:red",
                      fontsize=8, va="top", ha="left")
    if radii is None or not np.isfinite(radii).any():
        return None
    radius_axes = axes.twinx()
    radius_axes.step(steps, radii, where="post", color="tab:green", linewidth=1.0, alpha=0.8,
                     label="Fourier radius")
    radius_axes.set_ylabel("Fourier radius of the loss (px)", color="tab:green")
    radius_axes.tick_params(axis="y", labelcolor="tab:green")
    radius_axes.set_ylim(0.0, np.nanmax(radii) * 1.1)
    return radius_axes


def plot_loss_curve(path, source, smoothing: int = 0, step_column: str = "step",
                    loss_column: str = "loss", phase_column: str = "phase",
                    radius_column: str = "radius_px") -> str:
    """Training loss against step on a log scale; from a metrics CSV, also the phase switches and the
    Fourier radius of the loss (see :func:`draw_training_schedule`).

    Args:
        path: output PNG.
        source: a CSV file with ``step_column`` and ``loss_column`` columns (``phase_column`` and
            ``radius_column`` when present), or a pair ``(steps (T,), losses (T,))``.
        smoothing: width of a moving average drawn over the raw curve (0 for none).
    """
    phases = radii = None
    if isinstance(source, (str, os.PathLike)):
        steps, losses, phases, radii = _read_loss_csv(source, step_column, loss_column, phase_column,
                                                      radius_column)
    else:
        steps, losses = (np.asarray(values, dtype=np.float64) for values in source)
    if steps.shape != losses.shape or steps.ndim != 1 or len(steps) == 0:
        raise ValueError("steps and losses must be non-empty 1D arrays of the same length")
    figure = Figure(figsize=(6.5, 4.0))
    axes = figure.add_subplot()
    axes.plot(steps, losses, linewidth=0.8, alpha=0.5 if smoothing > 1 else 1.0, label="loss")
    if smoothing > 1 and len(losses) >= smoothing:
        kernel = np.ones(smoothing) / smoothing
        axes.plot(steps[smoothing - 1:], np.convolve(losses, kernel, mode="valid"), linewidth=1.5,
                  label=f"moving average ({smoothing})")
    if np.all(losses > 0):
        axes.set_yscale("log")
    else:
        logger.warning("loss has non-positive values; plotting on a linear scale")
    radius_axes = draw_training_schedule(axes, steps, phases, radii)
    handles, labels = axes.get_legend_handles_labels()
    if radius_axes is not None:
        extra_handles, extra_labels = radius_axes.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    if len(handles) > 1:
        axes.legend(handles, labels, loc="upper right", fontsize=8)
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
