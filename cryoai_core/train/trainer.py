"""The training loop of ``cryoai abinit``: batches, time/epoch budget, metrics, checkpoints, signals.

The learner sees random batches: epoch ``e`` visits the particles in the order of a permutation drawn
from ``seed`` and ``e``, so that a run resumed from a checkpoint sees the same batches it would have
seen. With an epoch budget (and no time budget) a resumed run reproduces the uninterrupted one.
"""
import logging
import os
import signal
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from cryoai_core import faults
from cryoai_core.cuda import tf32_convolutions, to_device
from cryoai_core.errors import InputError, TrainingError
from cryoai_core.io.dataset import ParticleDataset, collate
from cryoai_core.recentre import centred_on_average
from cryoai_core.train.checkpoint import CHECKPOINT_NAME, read_checkpoint, restore_learner, save_checkpoint
from cryoai_core.train.distributed import Cluster
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.metrics import MetricsLog
from cryoai_core.train.progress import ProgressLines

logger = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """Raised after a checkpoint was written because the user asked the run to stop."""


class DivergenceWatch:
    """Remembers the first NaN or infinite loss of a run on the loss's device: recording a step does not
    wait for it to finish; :meth:`first` (one read) does."""

    def __init__(self):
        self._step = self._value = None
        self._phases = {}

    def record(self, loss, step: int, phase: str) -> None:
        """Note the loss (0-d tensor or float) of step ``step`` in phase ``phase``."""
        loss = torch.as_tensor(loss).detach()
        if self._step is None:
            self._step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        new = ~torch.isfinite(loss) & (self._step < 0)
        self._step = torch.where(new, step, self._step)
        self._value = torch.where(new, loss, self._value)
        self._phases[step] = phase

    def first(self) -> tuple | None:
        """``(loss, step, phase)`` of the first non-finite loss recorded, or ``None``."""
        step = -1 if self._step is None else int(self._step)
        if step < 0:
            self._phases.clear()
            return None
        return float(self._value), step, self._phases.get(step, "?")


class Trainer:
    """Runs a :class:`CryoAILearner` over a :class:`ParticleDataset` until the budget is spent.

    Args:
        learner: networks and optimizers (config in ``learner.config``).
        dataset: particles at the training box (``dataset.box == config.box``).
        outdir: run folder (checkpoint and metrics go there).
        normalization: ``(mean, std)`` of the images; images are divided by ``std``.
        particle_origin_px: ``(x, y)`` mean origin ``μ`` of the particles, training pixels
            (:func:`~cryoai_core.recentre.mean_particle_origin_px`); images are moved by ``+μ`` so that the
            particles sit at the box centre on average (the learner's origins are ``o − μ``).
        progress_bar: show a tqdm bar (on a terminal only; plain progress lines go to stdout always).
        cluster: the ranks of a distributed run (``train/distributed.py``): each rank trains on its shard
            of every global batch, and only rank 0 writes the checkpoint, metrics and progress lines.

    The first checkpoint is written after ``config.schedule.first_checkpoint_steps`` steps or
    ``config.schedule.first_checkpoint_minutes``, whichever comes first, then every
    ``config.schedule.checkpoint_minutes``.
    """

    def __init__(self, learner: CryoAILearner, dataset: ParticleDataset, outdir: str, normalization: tuple,
                 progress_bar: bool = True, on_step=None, cluster: Cluster | None = None,
                 particle_origin_px=(0.0, 0.0)):
        self.learner = learner
        self.config = learner.config
        self.dataset = dataset
        learner.attach_memory(len(dataset))
        self.outdir = outdir
        os.makedirs(outdir, exist_ok=True)
        self.normalization = tuple(float(value) for value in normalization)
        self.particle_origin_px = tuple(float(value) for value in particle_origin_px)
        self.cluster = cluster or Cluster()
        self.progress_bar = progress_bar and sys.stderr.isatty() and self.cluster.is_writer
        self.on_step = on_step
        self.device = torch.device(self.config.device)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.counters = {"epoch": 0, "batch_in_epoch": 0, "images_seen": 0, "elapsed_s": 0.0}
        self._stop_reason = None
        self._last_checkpoint = time.monotonic()
        self._start_step = 0
        self._checkpoints_written = 0
        self.metrics = MetricsLog(outdir)
        self.lines = ProgressLines(self.config.schedule.epochs)
        self.divergence = DivergenceWatch()

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.outdir, CHECKPOINT_NAME)

    def resume(self) -> None:
        """Continue from ``outdir/checkpoint.pt`` (networks, optimizers, RNG, counters)."""
        state = read_checkpoint(self.checkpoint_path)
        self.counters.update(restore_learner(self.learner, state, self.generator))
        self.normalization = tuple(state["progress"].get("normalization", self.normalization))
        # Runs saved before the particles' mean origin was estimated trained on the images as they are.
        self.particle_origin_px = tuple(state["progress"].get("particle_origin_px", (0.0, 0.0)))
        self.metrics.load(up_to_step=self.learner.steps)
        logger.info("resumed from %s: step %d, epoch %d, %.1f min done", self.checkpoint_path,
                    self.learner.steps, self.counters["epoch"], self.counters["elapsed_s"] / 60)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop at the next safe point, after writing a checkpoint."""
        self._stop_reason = reason

    def progress(self) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        fractions = []
        if self.config.schedule.epochs is not None:
            fractions.append(self.counters["images_seen"] / (self.config.schedule.epochs * len(self.dataset)))
        if self.config.schedule.max_minutes is not None:
            fractions.append(self.counters["elapsed_s"] / (60.0 * self.config.schedule.max_minutes))
        return min(1.0, max(fractions))

    def _epoch_batches(self, epoch: int) -> list:
        """The epoch's batches: sorted int64 index arrays (as arrays, not lists, to stay small at 10⁶ particles)."""
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(
            self.config.seed * 100003 + epoch)).numpy()
        size = self.config.schedule.batch_size
        batches = [self.cluster.usable(np.sort(order[start:start + size])) for start in range(0, len(order), size)]
        return [batch for batch in batches if len(batch) >= max(2, self.cluster.world_size)]

    def _loader(self, batches: list):
        batches = [self.cluster.shard(batch) for batch in batches]
        if self.config.num_workers == 0:
            return (self.dataset.__getitems__(batch) for batch in batches)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, collate_fn=collate,
                                           num_workers=self.config.num_workers, persistent_workers=False,
                                           pin_memory=self.device.type == "cuda")

    def _write_metrics(self, row: dict) -> None:
        if self.cluster.is_writer:
            self.metrics.append(row)

    def _checkpoint(self) -> None:
        self._check_divergence()
        if self.cluster.is_writer:
            progress = dict(self.counters, normalization=list(self.normalization),
                            particle_origin_px=list(self.particle_origin_px))
            save_checkpoint(self.checkpoint_path, self.learner, progress, self.generator)
        self._last_checkpoint = time.monotonic()
        self._checkpoints_written += 1
        faults.hit("checkpoint-written")

    def _checkpoint_due(self, started: float) -> bool:
        now = time.monotonic()
        schedule = self.config.schedule
        if self._checkpoints_written == 0:
            steps = self.learner.steps - self._start_step
            if steps >= schedule.first_checkpoint_steps or now - started >= 60.0 * schedule.first_checkpoint_minutes:
                return True
        return now - self._last_checkpoint > 60.0 * schedule.checkpoint_minutes

    def _metrics_row(self, result, images_per_s: float) -> dict:
        return {"step": self.learner.steps, "epoch": self.counters["epoch"], "phase": result.phase,
                "radius_px": f"{result.radius_px:.2f}", "loss": f"{float(result.loss):.6g}",
                "agreement_degrees": f"{float(result.agreement_degrees):.2f}", "images_per_s": f"{images_per_s:.1f}",
                "elapsed_s": f"{self.counters['elapsed_s']:.1f}"}

    def _report(self, result, final: bool = False) -> None:
        if not self.cluster.is_writer or not self.lines.due(result.phase, final):
            return
        self._check_divergence()
        self.lines.update(self.learner.steps, self.counters["epoch"], float(result.loss), result.phase,
                          result.radius_px, self.progress(), self.counters["elapsed_s"], final=final)

    def _install_signal_handlers(self) -> dict:
        previous = {}

        def handler(signum, _frame):
            self.request_stop(f"received {signal.Signals(signum).name}")

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:
                pass
        return previous

    def run(self) -> None:
        """Train until the budget is spent (checkpoint at the end), or raise :class:`TrainingInterrupted`."""
        previous = self._install_signal_handlers()
        try:
            with tf32_convolutions(self.device):
                self._loop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _loop(self) -> None:
        std = self.normalization[1]
        total = 1000
        bar = tqdm(total=total, desc="abinit", unit="‰", disable=not self.progress_bar,
                   initial=int(total * self.progress()), dynamic_ncols=True)
        window_start, window_images = time.monotonic(), 0
        clock = time.monotonic() - self.counters["elapsed_s"]
        started = time.monotonic()
        self._start_step = self.learner.steps
        result = None
        while self.progress() < 1.0:
            batches = self._epoch_batches(self.counters["epoch"])
            skip = self.counters["batch_in_epoch"]
            for batch in self._loader(batches[skip:]):
                # Checked on the host before the copy, so that a CUDA step does not wait for the check.
                if not torch.isfinite(batch["image"]).all():
                    raise InputError("a batch holds NaN or infinite pixel values (particles "
                                     f"{batch['index'][:3].tolist()}...)")
                images = centred_on_average(to_device(batch["image"], self.device) / std, self.particle_origin_px)
                ctf = to_device(batch["ctf"], self.device) if "ctf" in batch else None
                result = self.learner.step(images, ctf, self.progress(), self.generator, indices=batch["index"])
                result.loss, elapsed_s, stop = self.cluster.agree(result.loss, time.monotonic() - clock,
                                                                  self._stop_reason is not None)
                if stop and self._stop_reason is None:
                    self._stop_reason = "another rank was asked to stop"
                self.divergence.record(result.loss, self.learner.steps, result.phase)
                faults.hit("train-step")
                self.counters["batch_in_epoch"] += 1
                self.counters["images_seen"] += len(images) * self.cluster.world_size
                self.counters["elapsed_s"] = elapsed_s
                window_images += len(images) * self.cluster.world_size
                if self.learner.steps % self.config.schedule.log_every == 0:
                    self._check_divergence()
                    now = time.monotonic()
                    self._write_metrics(self._metrics_row(result, window_images / max(now - window_start, 1e-9)))
                    window_start, window_images = now, 0
                    bar.set_postfix(loss=f"{float(result.loss):.4g}", phase=result.phase[:4],
                                    r=f"{result.radius_px:.0f}", refresh=False)
                self._report(result)
                bar.update(int(total * self.progress()) - bar.n)
                if self.on_step is not None:
                    self.on_step(self)
                safe = self.learner.at_safe_point
                if safe and self._stop_reason is not None:
                    self._final_row(result, window_images, window_start)
                    self._checkpoint()
                    bar.close()
                    raise TrainingInterrupted(self._stop_reason)
                if safe and self._checkpoint_due(started):
                    self._checkpoint()
                if self.progress() >= 1.0:
                    break
            else:
                self.counters["epoch"] += 1
                self.counters["batch_in_epoch"] = 0
        bar.close()
        if result is not None:
            self._final_row(result, window_images, window_start)
            self._report(result, final=True)
        self._checkpoint()

    def _check_divergence(self) -> None:
        """Raise :class:`TrainingError` if a loss so far was NaN or infinite. The losses stay on the device
        during the steps; this reads them (a wait for the device), only where the trainer logs, prints a
        progress line or writes a checkpoint."""
        found = self.divergence.first()
        if found is not None:
            value, step, phase = found
            raise TrainingError(
                f"the loss became {value} at step {step} (phase {phase}); the inputs passed their checks, so the "
                "optimisation diverged: try lower learning rates (--lr-encoder/--lr-decoder)"
                + (", then --resume" if self._checkpoints_written else ""))

    def _final_row(self, result, window_images: int, window_start: float) -> None:
        """The metrics row of the last step, unless it was logged already (runs of any length end with one)."""
        self._check_divergence()
        if self.metrics.last_step != self.learner.steps:
            rate = window_images / max(time.monotonic() - window_start, 1e-9) if window_images else 0.0
            self._write_metrics(self._metrics_row(result, rate))
