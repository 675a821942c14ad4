"""Honest resume: continue a run only when the new options differ from its frozen config in budget or machine.

A resumed run must train the same problem: every setting but the budget and where it runs has to match
the checkpoint's configuration, compared field by field (recursively, for nested configs).
"""
import dataclasses

from cryoai_core.errors import InputError

RESUMABLE_FIELDS = frozenset({"epochs", "max_minutes", "device", "num_workers", "threads", "checkpoint_minutes"})
"""Leaf names that may change on ``--resume``: the budget, the device, reader processes, threads and the
checkpoint interval. Any other difference stops the resume."""


def config_differences(stored, new, prefix: str = "") -> list:
    """``[(dotted name, stored value, new value)]`` of the leaves that differ (dicts compared recursively)."""
    if dataclasses.is_dataclass(stored):
        stored = dataclasses.asdict(stored)
    if dataclasses.is_dataclass(new):
        new = dataclasses.asdict(new)
    if isinstance(stored, dict) and isinstance(new, dict):
        differences = []
        for key in list(stored) + [key for key in new if key not in stored]:
            name = f"{prefix}.{key}" if prefix else str(key)
            differences += config_differences(stored.get(key, "<absent>"), new.get(key, "<absent>"), name)
        return differences
    return [] if stored == new else [(prefix, stored, new)]


def check_resume(stored: dict, new, outdir: str) -> None:
    """Raise :class:`InputError` listing every difference outside :data:`RESUMABLE_FIELDS`.

    Args:
        stored: the checkpoint's ``config`` dict.
        new: the configuration the current options give (dataclass or dict).
        outdir: the run folder, named in the message.
    """
    blocking = [(name, old, value) for name, old, value in config_differences(stored, new)
                if name.rpartition(".")[2] not in RESUMABLE_FIELDS]
    if blocking:
        listed = "; ".join(f"{name}: {old!r} in the checkpoint, {value!r} now" for name, old, value in blocking)
        raise InputError(f"--resume: the options differ from the run in {outdir} ({listed}); only the budget "
                         "(--epochs, --max-minutes), --device, --num-workers, --threads and --checkpoint-minutes "
                         "may change. Use the run's options, or start a new run in a new output folder")
