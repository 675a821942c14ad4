"""Checkpoints of an ab initio run: networks, optimizers, phase, counters, RNG states and the config.

Written atomically (temporary file, then rename), so a run killed while saving keeps its previous
checkpoint.
"""
import dataclasses
import logging
import os

import torch

from cryoai_core import __version__
from cryoai_core.errors import InputError
from cryoai_core.io.atomic import atomic_path
from cryoai_core.train.config import TrainConfig, replace

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
                    "steps": learner.steps,
                    "memory": None if learner.memory is None else learner.memory.state_dict()},
        "progress": dict(progress),
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
    }
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    logger.info("checkpoint written: %s (step %d)", path, learner.steps)


REQUIRED_PARTS = {"config": dict, "encoder": dict, "decoder": dict, "encoder_optimizer": dict,
                  "decoder_optimizer": dict, "learner": dict, "progress": dict, "rng": dict}
"""Top-level entries of a checkpoint and their types (all written by :func:`save_checkpoint`)."""
REQUIRED_LEARNER = ("phase", "agreement_degrees", "steps")


def read_checkpoint(path: str) -> dict:
    """The checkpoint dictionary, checked to hold every part; :class:`InputError` naming ``path`` if not."""
    if not os.path.exists(path):
        raise InputError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder, not a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"{path} cannot be read as a cryoAI checkpoint ({type(error).__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise InputError(f"{path} is not a cryoAI checkpoint (it holds a {type(state).__name__})")
    missing = [name for name, kind in REQUIRED_PARTS.items() if not isinstance(state.get(name), kind)]
    missing += [f"learner.{name}" for name in REQUIRED_LEARNER
                if isinstance(state.get("learner"), dict) and name not in state["learner"]]
    if missing:
        raise InputError(f"{path} is not a complete cryoAI checkpoint: missing {', '.join(missing)}")
    return state


def config_from_checkpoint(state: dict, **overrides) -> TrainConfig:
    """The run's :class:`TrainConfig`, with ``overrides`` by flat setting name (e.g. ``device``); ``None``
    values are ignored."""
    try:
        config = TrainConfig.from_dict(state["config"])
        return replace(config, **{key: value for key, value in overrides.items() if value is not None})
    except (TypeError, ValueError) as error:
        raise InputError(f"the checkpoint's configuration does not fit this version of cryoAI: {error}") from None


def restore_learner(learner, state: dict, generator: torch.Generator | None = None,
                    with_optimizers: bool = True) -> dict:
    """Load networks (and optimizers, RNG states) from ``state`` into ``learner``; return the progress."""
    try:
        learner.encoder.load_state_dict(state["encoder"])
        learner.decoder.load_state_dict(state["decoder"])
        if with_optimizers:
            learner.encoder_optimizer.load_state_dict(state["encoder_optimizer"])
            learner.decoder_optimizer.load_state_dict(state["decoder_optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        reason = " ".join(str(error).split())[:200]
        raise InputError(f"the checkpoint's networks do not match its configuration ({reason})") from None
    memory = state["learner"].get("memory")
    if learner.memory is not None and memory is not None:
        try:
            learner.memory.load_state_dict(memory)
        except (KeyError, ValueError) as error:
            raise InputError(f"the checkpoint's pose memory does not fit this data set ({error})") from None
    learner.phase = state["learner"]["phase"]
    learner.agreement_degrees = state["learner"]["agreement_degrees"]
    learner.steps = state["learner"]["steps"]
    if generator is not None:
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
    return state["progress"]
