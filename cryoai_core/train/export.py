"""What an ab initio run leaves behind: the map, the per-particle poses (star) and pictures."""
import logging
import os
import tempfile

import numpy as np
import torch

from cryoai_core import faults
from cryoai_core.fourier import resample_volume
from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.mrc import write_mrc
from cryoai_core.io.particles import ParticleTable
from cryoai_core.io.star import STAR_CHUNK_ROWS, write_star
from cryoai_core.reconstruct import with_halves
from cryoai_core.recentre import centred_on_average, density_centre_px, recentred_map, recentred_origins
from cryoai_core.rotations import geodesic_angle, matrix_to_euler
from cryoai_core.train.distributed import Cluster
from cryoai_core.train.progress import progress_batches
from cryoai_core.train.score import SCORE_COLUMN, noise_variance, scores_from_gains

logger = logging.getLogger(__name__)

POSE_PLOT_MAX = 100_000
"""At most this many poses (every k-th particle) go into ``poses.png``; the rest stream to the star file."""


@torch.no_grad()
def export_volume(learner, normalization_std: float, output_box: int, centre_angstrom=None) -> torch.Tensor:
    """The real-space map ``(output_box,)*3`` ``[z, y, x]`` at the input pixel size.

    FourierNet models ``FFT2(image / std) / L`` on central slices, so the map's 3D transform is ``L``
    times FourierNet on the ``L³`` grid, kept inside the sphere the loss was trained on (the corners of
    the cube are untrained extrapolation); the result is scaled back to image units and Fourier padded
    to the input box (values per voxel kept, so projections stay in the input's scale). With
    ``centre_angstrom`` ``(3,)`` (:func:`map_centre_angstrom`), the map is moved so that this point sits at
    the box centre (:func:`~cryoai_core.recentre.recentred_map`).
    """
    box = learner.config.box
    volume = learner.decoder.volume(box, radius_px=learner.config.nyquist_radius_px + 0.5).float().cpu()
    volume = volume * box * normalization_std
    if centre_angstrom is not None:
        volume = recentred_map(volume, np.asarray(centre_angstrom) / learner.config.pixel_size_angstrom)
    if output_box != box:
        volume = resample_volume(volume, output_box) * (box / output_box)
    return volume


def map_centre_angstrom(learner, normalization_std: float) -> np.ndarray:
    """``(3,)`` Å ``(x, y, z)``: where the trained map's density is centred, from the box centre
    (:func:`~cryoai_core.recentre.density_centre_px` of the map at the training box).

    The export moves the map by minus this and every origin to match (:mod:`cryoai_core.recentre`), and
    ``predict-poses`` gives the origins of new particles in the same frame."""
    volume = export_volume(learner, normalization_std, learner.config.box)
    centre = density_centre_px(volume) * learner.config.pixel_size_angstrom
    logger.info("the map's density is centred at (%.1f, %.1f, %.1f) Å from the box centre: the map and the "
                "origins are recentred there", *centre)
    return centre


def exported_origins(learner, rotations: torch.Tensor, origins_angstrom: torch.Tensor, centre_angstrom=None,
                     particle_origin_px=(0.0, 0.0)) -> torch.Tensor:
    """The learner's origins ``(b, 2)`` Å (images moved by ``+μ``, map as trained) -> origins against the map
    recentred on ``centre_angstrom`` (``None``: as trained) and the images as they are: ``o − (A c)_xy + μ``
    (:mod:`cryoai_core.recentre`); float64."""
    origins = origins_angstrom.double().cpu()
    if centre_angstrom is not None:
        origins = torch.from_numpy(recentred_origins(rotations, origins, centre_angstrom))
    return origins + torch.as_tensor(particle_origin_px, dtype=torch.float64) * learner.config.pixel_size_angstrom


@torch.no_grad()
def iter_poses(learner, dataset: ParticleDataset, normalization_std: float, batch_size: int = 256, device="cpu",
               progress_bar: bool = True, cluster: Cluster | None = None, centre_angstrom=None,
               particle_origin_px=(0.0, 0.0)):
    """Amortized poses of every particle, in order, one chunk at a time (nothing grows with ``N``).

    The images are moved by the particles' mean origin ``particle_origin_px`` as in training, and the
    origins given back against them as they are, and against the map recentred on ``centre_angstrom``
    (:func:`map_centre_angstrom`; ``None``: the map as trained), see :func:`exported_origins`.

    Yields ``(start, rotations (b, 3, 3), origins_angstrom (b, 2))`` for particles ``start .. start + b``.
    Under torch.distributed every rank must iterate: each chunk of ``batch_size x world_size``
    particles is split evenly over the ranks and gathered, so every rank gets the same chunks, equal
    to one process's up to float error (the encoder is in eval mode, so images do not interact).
    """
    cluster = cluster or Cluster()
    learner.forget_cached_map()
    count, ranks = len(dataset), cluster.world_size
    chunk = batch_size * ranks
    for start in progress_batches(range(0, count, chunk), "predict poses", bar=progress_bar and cluster.is_writer,
                                  lines=cluster.is_writer):
        stop = min(start + chunk, count)
        share = -(-(stop - start) // ranks)
        first = min(start + cluster.rank * share, stop)
        indices = list(range(first, min(first + share, stop)))
        indices += [indices[-1] if indices else start] * (share - len(indices))
        batch = dataset.__getitems__(indices)
        images = centred_on_average(batch["image"].to(device, non_blocking=True) / normalization_std,
                                    particle_origin_px)
        ctf = batch["ctf"].to(device, non_blocking=True) if "ctf" in batch else None
        rotation, origin = learner.predict_poses(images, ctf)
        packed = torch.cat([rotation.reshape(-1, 9), origin], dim=1).float()
        packed = cluster.gather(packed).cpu()[:stop - start]
        rotation = packed[:, :9].reshape(-1, 3, 3)
        yield start, rotation, exported_origins(learner, rotation, packed[:, 9:], centre_angstrom,
                                                particle_origin_px).float()


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


class ScoredPoses:
    """Poses and scores of ``N`` particles, spilled to a temporary file and read back a chunk at a time.

    Only three float32 per particle stay in memory (the fit terms and the angle moved by refinement, needed
    whole for the score's noise level and the log line); the poses themselves (5 float64 per particle) wait
    in an unnamed temporary file until they are written to the star file, and the scores are computed a
    chunk at a time as they are read back.
    """

    def __init__(self, count: int, folder: str | None = None):
        self.count = count
        self.spill = tempfile.TemporaryFile(dir=folder)
        self.distances = np.empty(count, dtype=np.float32)
        """``(N,)`` loss distance of each image to the map at its pose (full radius)."""
        self.gains = np.empty(count, dtype=np.float32)
        """``(N,)`` image power the map explains at the pose: distance to an empty prediction − distance."""
        self.moved_degrees = np.empty(count, dtype=np.float32)
        """``(N,)`` angle between each exported pose and the encoder's own (0 without refinement)."""
        self.total_weight = float("nan")
        """``Σ w`` of the full-radius half-disk (see :mod:`cryoai_core.train.score`)."""
        self.shown_rotations = []
        """``(3, 3)`` rotations of every ``stride``-th particle, for ``poses.png``."""
        self.stride = -(-count // POSE_PLOT_MAX)
        self._variance = None

    def add(self, start: int, rotations: torch.Tensor, origins_angstrom: torch.Tensor, encoded: torch.Tensor,
            distances: torch.Tensor, energies: torch.Tensor) -> None:
        """Record particles ``start .. start + b``: RELION rotations ``(b, 3, 3)``, origins ``(b, 2)`` Å, the
        encoder's rotations ``(b, 3, 3)`` and the fit terms ``(b,)``; chunks must come in order."""
        rotations = rotations.double().cpu()
        chunk = slice(start, start + len(rotations))
        poses = torch.cat([matrix_to_euler(rotations), origins_angstrom.double().cpu()], dim=1)
        self.spill.write(np.ascontiguousarray(poses.numpy(), dtype=np.float64).tobytes())
        self.distances[chunk] = distances.float().cpu().numpy()
        self.gains[chunk] = (energies.double() - distances.double()).float().cpu().numpy()
        self.moved_degrees[chunk] = torch.rad2deg(geodesic_angle(rotations, encoded.double().cpu())).numpy()
        self.shown_rotations.append(rotations[(torch.arange(chunk.start, chunk.stop) % self.stride) == 0].float())
        self._variance = None

    def variance(self) -> float:
        """The score's noise level: the median distance over every particle (computed once)."""
        if self._variance is None:
            self._variance = noise_variance(self.distances)
        return self._variance

    def scores(self, rows: slice = slice(None)) -> np.ndarray:
        """Per-particle log-likelihood ratios against noise alone (nats) of ``rows`` (default: all)."""
        return scores_from_gains(self.gains[rows], self.total_weight, self.variance())

    def chunks(self, rows: int = STAR_CHUNK_ROWS):
        """``(start, euler_angles_degrees (b, 3), origins_angstrom (b, 2), {SCORE_COLUMN: (b,)})`` in order,
        for :func:`~cryoai_core.io.star.write_star`."""
        self.spill.seek(0)
        for start in range(0, self.count, rows):
            stop = min(start + rows, self.count)
            poses = np.frombuffer(self.spill.read((stop - start) * 5 * 8), dtype=np.float64).reshape(-1, 5)
            yield start, poses[:, :3], poses[:, 3:], {SCORE_COLUMN: self.scores(slice(start, stop))}

    def log(self) -> None:
        """One log line: how far the exported poses are from the encoder's own, and the score's spread (the
        score is increasing and affine in the gain, so its quantiles are those of the gains)."""
        median, fifth = scores_from_gains(np.percentile(self.gains, [50, 5]), self.total_weight, self.variance())
        logger.info("poses: median %.1f° from the encoder's own; score (nats) median %.1f, 5th percentile %.1f",
                    float(np.median(self.moved_degrees)), median, fifth)

    def close(self) -> None:
        self.spill.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@torch.no_grad()
def predict_and_score(learner, dataset: ParticleDataset, normalization_std: float, batch_size: int = 256,
                      device="cpu", progress_bar: bool = True, refine: bool | None = None,
                      folder: str | None = None, centre_angstrom=None,
                      particle_origin_px=(0.0, 0.0)) -> ScoredPoses:
    """Poses of every particle: the encoder's, refined against the map when ``refine`` (default: when the run
    trained on refined poses, ``config.amortized_poses == "refined"``); per particle, the lower distance of
    the local refinement and a global search wins (:meth:`CryoAILearner.refine_poses`).

    The poses go to a temporary file in ``folder`` (default: the system's); close the result (or use it
    in a ``with`` block) once written. The images are moved by ``particle_origin_px`` as in training, and the
    origins written are those of :func:`exported_origins` (the fit terms are measured before, in the learner's
    frame)."""
    refine = learner.config.amortized_poses == "refined" if refine is None else refine
    count = len(dataset)
    result = ScoredPoses(count, folder)
    generator = torch.Generator().manual_seed(learner.config.seed)
    learner.forget_cached_map()
    starts = range(0, count, batch_size)
    try:
        for start in progress_batches(starts, "predict poses" + (" and refine them" if refine else ""),
                                      bar=progress_bar):
            indices = list(range(start, min(start + batch_size, count)))
            batch = dataset.__getitems__(indices)
            images = centred_on_average(batch["image"].to(device) / normalization_std, particle_origin_px)
            ctf = batch["ctf"].to(device) if "ctf" in batch else None
            encoded, origin = learner.predict_poses(images, ctf)
            rotation = encoded
            if refine:
                rotation, origin = learner.refine_poses(images, ctf, encoded, origin, generator)
            distance, energy = learner.fit_terms(images, ctf, rotation, origin)
            origin = exported_origins(learner, rotation, origin, centre_angstrom, particle_origin_px)
            result.add(start, rotation, origin, encoded, distance, energy)
        result.total_weight = learner.disk(learner.config.nyquist_radius_px).weights.sum().item()
    except BaseException:
        result.close()
        raise
    return result


def write_outputs(learner, dataset: ParticleDataset, table: ParticleTable, outdir: str,
                  normalization_std: float, device="cpu", progress_bar: bool = True,
                  cluster: Cluster | None = None, particle_origin_px=(0.0, 0.0)) -> dict:
    """Write ``volume.mrc``, ``particles.star`` (with the half of each particle, ``rlnRandomSubset``) and the
    PNGs; return their paths. The map's density is centred in its box and the origins follow
    (:func:`map_centre_angstrom`); the images are moved by the particles' mean origin ``particle_origin_px``
    (training pixels) as in training, and the origins given against the images as they are.

    Under torch.distributed every rank calls it: the poses are predicted by all ranks, and rank 0 alone
    writes (the others return an empty dict).
    """
    from cryoai_core.plots import plot_central_slices, plot_loss_curve, plot_pose_distribution
    from cryoai_core.train.metrics import METRICS_NAME

    cluster = cluster or Cluster()
    table = with_halves(table, learner.config.seed)
    faults.hit("export-start")
    learner.to(device)
    paths = {"volume": os.path.join(outdir, "volume.mrc"), "particles": os.path.join(outdir, "particles.star")}
    centre = map_centre_angstrom(learner, normalization_std)
    if cluster.is_writer:
        volume = export_volume(learner, normalization_std, table.box, centre)
        write_mrc(paths["volume"], volume.numpy(), table.pixel_size_angstrom)
        faults.hit("export-written")
    stride = -(-len(dataset) // POSE_PLOT_MAX)
    if cluster.world_size > 1:
        # Several ranks: the encoder's poses stream into the star file, one gathered chunk at a time.
        shown = []

        def chunks():
            for start, rotation, origin in iter_poses(learner, dataset, normalization_std, device=device,
                                                      progress_bar=progress_bar, cluster=cluster,
                                                      centre_angstrom=centre,
                                                      particle_origin_px=particle_origin_px):
                shown.append(rotation[(torch.arange(start, start + len(rotation)) % stride) == 0])
                yield start, matrix_to_euler(rotation.double()).numpy(), origin.double().numpy()

        if not cluster.is_writer:
            for _ in chunks():
                pass
            return {}
        write_star(paths["particles"], table, poses=chunks())
        rotations = torch.cat(shown)
    else:
        # One process: poses refined against the map and scored. The score's noise level is a median over
        # every particle, so a first pass spills the poses to a temporary file and a second streams them.
        with predict_and_score(learner, dataset, normalization_std, device=device, progress_bar=progress_bar,
                               folder=outdir, centre_angstrom=centre,
                               particle_origin_px=particle_origin_px) as prediction:
            write_star(paths["particles"], table, poses=prediction.chunks())
            rotations = torch.cat(prediction.shown_rotations)
            prediction.log()
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
