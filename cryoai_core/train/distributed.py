"""Data-parallel training on several processes with torch.distributed (DDP), as started by ``torchrun``.

A run is distributed when the launcher sets ``WORLD_SIZE > 1`` (``torchrun --nproc_per_node=N ...`` or
``cryoai abinit --gpus 0,1,...``, see ``train/launch.py``). Each process ("rank") then:

* joins the process group (``nccl`` on CUDA, ``gloo`` on the CPU; ``env://`` rendezvous from torchrun);
* checks that every rank holds the same configuration and particle count (seed included), so that all
  draw the same batch order, search grids and initial weights (DDP also broadcasts rank 0's weights);
* reads only its contiguous shard of each *global* batch (``--batch-size`` is the global size, split
  evenly; a batch is trimmed to a multiple of the world size);
* runs the encoder and FourierNet wrapped in ``DistributedDataParallel`` (gradients averaged, so the
  step equals one process's step on the whole batch), with batch norm over the global batch
  (``SyncBatchNorm`` on CUDA; on the CPU, where torch's ``SyncBatchNorm`` refuses to run,
  :class:`AllReduceBatchNorm`, which all-reduces the per-channel sums with autograd);
* agrees with the others after each step on the loss (mean), the elapsed time (maximum) and a stop
  request (any), so that every rank switches phase, stops and checkpoints at the same step.

Only rank 0 writes files (checkpoint, metrics, log, map, star). A checkpoint holds plain module
weights and the global counters, so it resumes under any number of ranks, one included.
"""
import dataclasses
import gc
import hashlib
import json
import logging
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)

_wrapped_learners = []
"""Learners holding DDP wrappers: they are released before the process group is destroyed (a DDP
reducer destroyed after its group can hang the process at exit)."""


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun (1 outside a distributed launch)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place among the ranks of a run (one rank, rank 0, when not distributed).

    Attributes:
        rank: global rank.
        world_size: number of ranks.
        local_rank: rank on this node (picks the GPU).
        device: where the collectives exchange tensors (the rank's GPU with nccl, the CPU with gloo).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """True on the rank that writes files (rank 0)."""
        return self.rank == 0

    def usable(self, batch: list) -> list:
        """``batch`` trimmed to a multiple of the world size (equal shards keep the mean loss exact)."""
        return batch[:len(batch) - len(batch) % self.world_size]

    def shard(self, batch: list) -> list:
        """This rank's contiguous part of a global batch (its length a multiple of the world size)."""
        size = len(batch) // self.world_size
        return batch[self.rank * size:(self.rank + 1) * size]

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` (same shape on all) concatenated along dim 0 in rank order."""
        if not self.distributed:
            return tensor
        local = tensor.detach().to(self.device).contiguous()
        out = torch.empty((self.world_size * local.shape[0], *local.shape[1:]), dtype=local.dtype,
                          device=self.device)
        dist.all_gather_single(out, local)
        return out.to(tensor.device)

    def agree(self, loss: float, elapsed_s: float, stop: bool) -> tuple:
        """``(mean loss, largest elapsed time, any stop request)`` over the ranks (one process: as given, the
        loss possibly a device tensor; several: a float, read from every rank at each step)."""
        if not self.distributed:
            return loss, elapsed_s, stop
        values = self.gather(torch.tensor([[float(loss), elapsed_s, float(stop)]], dtype=torch.float64))
        return values[:, 0].mean().item(), values[:, 1].max().item(), bool(values[:, 2].max().item() > 0)

    def require_same(self, description: dict) -> None:
        """Raise ``ValueError`` unless every rank passes the same ``description`` (JSON-able values)."""
        if not self.distributed:
            return
        digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).digest()
        mine = torch.frombuffer(bytearray(digest[:8]), dtype=torch.int64).clone().reshape(1)
        everyone = self.gather(mine)
        if not bool((everyone == everyone[0]).all()):
            raise ValueError(f"rank {self.rank}: the ranks disagree on the run's configuration or particles "
                             "(every rank must get the same command line and files)")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def start(device: str, gpus: list | None = None) -> tuple:
    """Join the process group when launched with ``WORLD_SIZE > 1``; return ``(Cluster, rank's device)``.

    Args:
        device: ``cpu`` or ``cuda`` (a rank's GPU is ``cuda:LOCAL_RANK``, or ``cuda:gpus[LOCAL_RANK]``).
        gpus: the GPU indices of ``--gpus`` (relative to ``CUDA_VISIBLE_DEVICES``), or ``None``.
    """
    world = launched_world_size()
    if world <= 1:
        return Cluster(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if ":" in device:
            raise ValueError(f"--device {device}: under torchrun give --device cuda; each rank takes its own GPU "
                             "(LOCAL_RANK, or its entry of --gpus)")
        index = gpus[local_rank] if gpus else local_rank
        if index >= torch.cuda.device_count():
            raise ValueError(f"rank {rank} needs GPU {index} but only {torch.cuda.device_count()} are visible")
        torch.cuda.set_device(index)
        rank_device = torch.device("cuda", index)
        if not dist.is_initialized():
            dist.init_process_group("nccl", device_id=rank_device)
        device = f"cuda:{index}"
    else:
        rank_device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("gloo")
    cluster = Cluster(rank=rank, world_size=dist.get_world_size(), local_rank=local_rank, device=rank_device)
    if not cluster.is_writer:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info("distributed run: %d ranks (backend %s), this is rank %d on %s", cluster.world_size,
                dist.get_backend(), rank, device)
    return cluster, device


def stop(failed: bool = False) -> None:
    """Leave the process group once every rank got here (no-op when not distributed).

    After an error (``failed``) the rank leaves at once: the launcher ends the others when it exits.
    """
    if dist.is_initialized() and not failed:
        dist.barrier()
        for learner in _wrapped_learners:
            learner.replicas = {}
        _wrapped_learners.clear()
        gc.collect()
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks; the gradient of each rank's input is the sum of every rank's output gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the global batch of all ranks, on any device.

    The per-channel count, sum and sum of squares (float64) are summed over the ranks with a
    differentiable all-reduce, so gradients flow through the global statistics as in one process.
    Same parameters, buffers and state-dict keys as ``BatchNorm1d/2d``, and the same eval behaviour.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        wide = input.double()
        count = torch.full((1,), input.numel() // channels, dtype=torch.float64, device=input.device)
        totals = _AllReduceSum.apply(torch.cat([wide.sum(dims), (wide * wide).sum(dims), count]))
        total = totals[-1]
        mean = totals[:channels] / total
        variance = (totals[channels:2 * channels] / total - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = variance * total / (total - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(variance + self.eps).to(input.dtype).view(shape)
        output = (input - mean.to(input.dtype).view(shape)) * scale
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output


def with_global_batch_norm(module: nn.Module, cuda: bool) -> nn.Module:
    """Replace every batch norm of ``module`` in place by one over the global batch (same parameters)."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = AllReduceBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                             child.track_running_stats)
            if child.affine:
                replacement.weight, replacement.bias = child.weight, child.bias
            if child.track_running_stats:
                replacement.running_mean, replacement.running_var = child.running_mean, child.running_var
                replacement.num_batches_tracked = child.num_batches_tracked
            replacement.train(child.training)
            module.add_module(name, replacement)
        else:
            with_global_batch_norm(child, cuda)
    return module


def wrap(learner, cluster: Cluster) -> None:
    """Make ``learner``'s training steps data-parallel over ``cluster`` (no-op on one rank).

    The learner keeps its plain modules (checkpoints stay rank-count independent); its training steps
    call the DDP wrappers in ``learner.replicas`` and gather their pose agreement with ``cluster``.
    """
    if not cluster.distributed:
        return
    cuda = cluster.device.type == "cuda"
    learner.encoder = with_global_batch_norm(learner.encoder, cuda)
    device_ids = [cluster.device.index] if cuda else None
    learner.replicas = {name: DistributedDataParallel(getattr(learner, name), device_ids=device_ids,
                                                      forward_sync_buffers=False)
                        for name in ("encoder", "decoder")}
    learner.gather = cluster.gather
    learner.rank_and_world_size = (cluster.rank, cluster.world_size)
    _wrapped_learners.append(learner)
