"""Trains a tiny run with per-step metrics; the DDP tests start it as one process and under torchrun.

Usage: python ddp_worker.py PARTICLES.star OUTDIR [--no-bootstrap]. Writes OUTDIR/metrics.csv,
OUTDIR/checkpoint.pt and OUTDIR/poses.pt (rotations and origins of every particle, rank 0 only).
"""
import faulthandler
import sys

import torch

from cryoai_core.io.dataset import ParticleDataset
from cryoai_core.io.readers import read_particles
from cryoai_core.train import distributed
from cryoai_core.train.config import TrainConfig, build
from cryoai_core.train.export import iter_poses
from cryoai_core.train.learner import CryoAILearner
from cryoai_core.train.trainer import Trainer

PREDICT_BATCH = 24
"""Small, so that the sharded prediction has several chunks and an uneven last one."""


def tiny_config(bootstrap: bool = True, epochs: float = 1.0) -> TrainConfig:
    """One coarse candidate, in training and after: on this untrained 16 px map, screening near-equal candidates
    lets the rounding of differently shaped shard products flip choices, which the comparison would read as a
    DDP error."""
    return build(search_candidates=1, search_refine_candidates=1, search_refine_finalists=1, box=16,
                 pixel_size_angstrom=6.0, input_box=16, input_pixel_size_angstrom=6.0, epochs=epochs,
                 batch_size=32, search_rotations=256, fouriernet_width=16, encoder_base_channels=4, log_every=1,
                 bootstrap=bootstrap, bootstrap_max_fraction=0.7, seed=5)


HANG_SECONDS = 100
"""A rank still running after this long prints every thread's stack and exits (a hang fails the test)."""


def main(star: str, outdir: str, bootstrap: bool) -> None:
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    torch.set_num_threads(1)
    cluster, _ = distributed.start("cpu")
    try:
        dataset = ParticleDataset(read_particles(star))
        torch.manual_seed(5)
        learner = CryoAILearner(tiny_config(bootstrap))
        trainer = Trainer(learner, dataset, outdir, (0.0, 1.0), progress_bar=False, cluster=cluster)
        distributed.wrap(learner, cluster)
        trainer.run()
        chunks = list(iter_poses(learner, dataset, 1.0, batch_size=PREDICT_BATCH, progress_bar=False,
                                 cluster=cluster))
        if cluster.is_writer:
            torch.save({"rotations": torch.cat([chunk[1] for chunk in chunks]),
                        "origins": torch.cat([chunk[2] for chunk in chunks]),
                        "starts": [chunk[0] for chunk in chunks]}, f"{outdir}/poses.pt")
    except BaseException:
        distributed.stop(failed=True)
        raise
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--no-bootstrap" not in sys.argv[3:])
