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
from cryoai_core.train.distributed import Cluster

logger = logging.getLogger(__name__)

POSE_PLOT_MAX = 100_000
"""At most this many poses (every k-th particle) go into ``poses.png``; the rest stream to the star file."""


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
def iter_poses(learner, dataset: ParticleDataset, normalization_std: float, batch_size: int = 256, device="cpu",
               progress_bar: bool = True, cluster: Cluster | None = None):
    """Amortized poses of every particle, in order, one chunk at a time (nothing grows with ``N``).

    Yields ``(start, rotations (b, 3, 3), origins_angstrom (b, 2))`` for particles ``start .. start + b``.
    Under torch.distributed every rank must iterate: each chunk of ``batch_size x world_size``
    particles is split evenly over the ranks and gathered, so every rank gets the same chunks, equal
    to one process's up to float error (the encoder is in eval mode, so images do not interact).
    """
    cluster = cluster or Cluster()
    count, ranks = len(dataset), cluster.world_size
    chunk = batch_size * ranks
    show = progress_bar and sys.stderr.isatty() and cluster.is_writer
    for start in tqdm(range(0, count, chunk), desc="predict poses", unit="chunk", disable=not show):
        stop = min(start + chunk, count)
        share = -(-(stop - start) // ranks)
        first = min(start + cluster.rank * share, stop)
        indices = list(range(first, min(first + share, stop)))
        indices += [indices[-1] if indices else start] * (share - len(indices))
        batch = dataset.__getitems__(indices)
        images = batch["image"].to(device, non_blocking=True) / normalization_std
        ctf = batch["ctf"].to(device, non_blocking=True) if "ctf" in batch else None
        rotation, origin = learner.predict_poses(images, ctf)
        packed = torch.cat([rotation.reshape(-1, 9), origin], dim=1).float()
        packed = cluster.gather(packed).cpu()[:stop - start]
        yield start, packed[:, :9].reshape(-1, 3, 3), packed[:, 9:]


def predict_all_poses(learner, dataset: ParticleDataset, normalization_std: float, batch_size: int = 256,
                      device="cpu", progress_bar: bool = True, cluster: Cluster | None = None) -> tuple:
    """Amortized poses of every particle (see :func:`iter_poses`), as whole arrays.

    Returns ``(euler_angles_degrees (N, 3), origins_angstrom (N, 2), rotations (N, 3, 3))``.
    """
    count = len(dataset)
    rotations = torch.empty(count, 3, 3)
    origins = torch.empty(count, 2)
    for start, rotation, origin in iter_poses(learner, dataset, normalization_std, batch_size, device,
                                              progress_bar, cluster):
        rotations[start:start + len(rotation)] = rotation
        origins[start:start + len(origin)] = origin
    return matrix_to_euler(rotations.double()).numpy(), origins.double().numpy(), rotations


def write_outputs(learner, dataset: ParticleDataset, table: ParticleTable, outdir: str,
                  normalization_std: float, device="cpu", progress_bar: bool = True,
                  cluster: Cluster | None = None) -> dict:
    """Write ``volume.mrc``, ``particles.star`` and the PNGs; return their paths.

    Under torch.distributed every rank calls it: the poses are predicted by all ranks, and rank 0 alone
    writes (the others return an empty dict).
    """
    from cryoai_core.plots import plot_central_slices, plot_loss_curve, plot_pose_distribution
    from cryoai_core.train.metrics import METRICS_NAME

    cluster = cluster or Cluster()
    progress_bar = progress_bar and sys.stderr.isatty() and cluster.is_writer
    faults.hit("export-start")
    learner.to(device)
    paths = {"volume": os.path.join(outdir, "volume.mrc"), "particles": os.path.join(outdir, "particles.star")}
    if cluster.is_writer:
        volume = export_volume(learner, normalization_std, table.box)
        write_mrc(paths["volume"], volume.numpy(), table.pixel_size_angstrom)
        faults.hit("export-written")
    stride = -(-len(dataset) // POSE_PLOT_MAX)
    shown = []

    def chunks():
        for start, rotation, origin in iter_poses(learner, dataset, normalization_std, device=device,
                                                  progress_bar=progress_bar, cluster=cluster):
            shown.append(rotation[(torch.arange(start, start + len(rotation)) % stride) == 0])
            yield start, matrix_to_euler(rotation.double()).numpy(), origin.double().numpy()

    if not cluster.is_writer:
        for _ in chunks():
            pass
        return {}
    write_star(paths["particles"], table, poses=chunks())
    rotations = torch.cat(shown)
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
