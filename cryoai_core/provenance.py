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

