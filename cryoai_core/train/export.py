"""What an ab initio run leaves behind: the map, the per-particle poses (star) and pictures."""
import logging
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from cryoai_core import faults
from cryoai_core.fourier import resample_volume
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import write_mrc
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.star import write_star
from cryoai_core.rotations import matrix_to_euler

logger = logging.getLogger(__name__)


@torch.no_grad()
def export_volume(learner, normalization_std: float, output_box: int) -> torch.Tensor:
    """The real-space map ``(output_box,)*3`` ``[z, y, x]`` at the input pixel size.

    FourierNet models ``FFT2(image / std) / L`` on central slices, so the map's 3D transform is ``L``
    times FourierNet on the ``L³`` grid, kept inside the sphere the loss was trained on (the corners of
    the cube are untrained extrapolation); the result is scaled back to image units and Fourier padded
    to the input box (values per voxel kept, so projections stay in the input's scale).
    """
    box = learner.config.box
    volume = learner.decoder.volume(box, radius_px=learner.config.nyquist_radius_px + 0.5).float().cpu()
    volume = volume * box * normalization_std
    if output_box != box:
        volume = resample_volume(volume, output_box) * (box / output_box)
    return volume


@torch.no_grad()
def predict_all_poses(learner, dataset: ParticleDataset, normalization_std: float, batch_size: int = 256,
                      device="cpu", progress_bar: bool = True) -> tuple:
    """Amortized poses of every particle: ``(euler_angles_degrees (N, 3), origins_angstrom (N, 2), rotations (N, 3, 3))``."""
    count = len(dataset)
    rotations = torch.empty(count, 3, 3)
    origins = torch.empty(count, 2)
    starts = range(0, count, batch_size)
    for start in tqdm(starts, desc="predict poses", unit="batch", disable=not progress_bar or not sys.stderr.isatty()):
        indices = list(range(start, min(start + batch_size, count)))
        batch = dataset.__getitems__(indices)
        images = batch["image"].to(device) / normalization_std
        ctf = batch["ctf"].to(device) if "ctf" in batch else None
        rotation, origin = learner.predict_poses(images, ctf)
        rotations[start:start + len(indices)] = rotation.float().cpu()
        origins[start:start + len(indices)] = origin.float().cpu()
    return matrix_to_euler(rotations.double()).numpy(), origins.double().numpy(), rotations


def write_outputs(learner, dataset: ParticleDataset, table: ParticleTable, outdir: str,
                  normalization_std: float, device="cpu", progress_bar: bool = True) -> dict:
    """Write ``volume.mrc``, ``particles.star`` and the PNGs; return their paths."""
    from cryoai_core.plots import plot_central_slices, plot_loss_curve, plot_pose_distribution
    from cryoai_core.train.metrics import METRICS_NAME

    progress_bar = progress_bar and sys.stderr.isatty()
    faults.hit("export-start")
    learner.to(device)
    volume = export_volume(learner, normalization_std, table.box)
    paths = {"volume": os.path.join(outdir, "volume.mrc"), "particles": os.path.join(outdir, "particles.star")}
    write_mrc(paths["volume"], volume.numpy(), table.pixel_size_angstrom)
    faults.hit("export-written")
    euler, origins, rotations = predict_all_poses(learner, dataset, normalization_std, device=device,
                                                  progress_bar=progress_bar)
    write_star(paths["particles"], table.with_poses(euler, origins))
    paths["slices_png"] = plot_central_slices(os.path.join(outdir, "slices.png"), volume.numpy(),
                                              title="cryoAI ab initio map")
    paths["poses_png"] = plot_pose_distribution(os.path.join(outdir, "poses.png"), rotations.numpy())
    metrics = os.path.join(outdir, METRICS_NAME)
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
        try:
            paths["loss_png"] = plot_loss_curve(os.path.join(outdir, "loss.png"), metrics, smoothing=5)
        except ValueError as error:
            logger.warning("no loss curve: %s", error)
    for name, path in paths.items():
        logger.info("wrote %s: %s", name, path)
    return paths
