"""Checkpoints of an ab initio run: networks, optimizers, phase, counters, RNG states and the config.

Written atomically (temporary file, then rename), so a run killed while saving keeps its previous
checkpoint.
"""
import dataclasses
import logging
import os

import torch

from cryoai_core import __version__
from cryoai_core.io.atomic import atomic_path
from cryoai_core.train.config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str, learner, progress: dict, generator: torch.Generator) -> None:
    """Write ``path`` atomically. ``progress`` holds the trainer's counters (step, epoch, elapsed, ...)."""
    state = {
        "version": __version__,
        "config": dataclasses.asdict(learner.config),
        "encoder": learner.encoder.state_dict(),
        "decoder": learner.decoder.state_dict(),
        "encoder_optimizer": learner.encoder_optimizer.state_dict(),
        "decoder_optimizer": learner.decoder_optimizer.state_dict(),
        "learner": {"phase": learner.phase, "agreement_degrees": learner.agreement_degrees,
                    "steps": learner.steps},
        "progress": dict(progress),
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
    }
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    logger.info("checkpoint written: %s (step %d)", path, learner.steps)


def read_checkpoint(path: str) -> dict:
    """The raw checkpoint dictionary, with a clear error when the file is missing or unreadable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ValueError(f"cannot read the checkpoint {path}: {error}") from error


def config_from_checkpoint(state: dict, **overrides) -> TrainConfig:
    """The run's :class:`TrainConfig`, with ``overrides`` (e.g. a longer budget when resuming)."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {key: value for key, value in state["config"].items() if key in fields}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return TrainConfig(**values)


def restore_learner(learner, state: dict, generator: torch.Generator | None = None,
                    with_optimizers: bool = True) -> dict:
    """Load networks (and optimizers, RNG states) from ``state`` into ``learner``; return the progress."""
    learner.encoder.load_state_dict(state["encoder"])
    learner.decoder.load_state_dict(state["decoder"])
    if with_optimizers:
        learner.encoder_optimizer.load_state_dict(state["encoder_optimizer"])
        learner.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
    learner.phase = state["learner"]["phase"]
    learner.agreement_degrees = state["learner"]["agreement_degrees"]
    learner.steps = state["learner"]["steps"]
    if generator is not None:
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
    return state["progress"]
