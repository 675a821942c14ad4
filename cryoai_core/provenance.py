"""Run provenance: every run saves its frozen configuration with the version, time and command line."""
import dataclasses
import datetime
import sys

import yaml

from cryoai_core import __version__
from cryoai_core.io.atomic import atomic_open


def save_config(config, path: str, **extra) -> None:
    """Write a frozen dataclass ``config`` (plus ``extra`` values) as YAML, with provenance fields."""
    document = {
        "cryoai_version": __version__,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        type(config).__name__: dataclasses.asdict(config),
    }
    document.update(extra)
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(document, handle, sort_keys=False)


def load_config(cls, path: str):
    """Read a configuration written by :func:`save_config` back into ``cls``."""
    with open(path) as handle:
        document = yaml.safe_load(handle)
    if not isinstance(document, dict) or cls.__name__ not in document:
        raise ValueError(f"{path} holds no {cls.__name__} section")
    known = {field.name for field in dataclasses.fields(cls)}
    values = {key: value for key, value in document[cls.__name__].items() if key in known}
    return cls(**values)
