"""Deterministic fault injection for the test suite (inactive unless ``CRYOAI_TEST_FAULT`` is set).

``CRYOAI_TEST_FAULT`` holds ``POINT:ACTION`` pairs separated by commas. The code calls :func:`hit` at
named points: ``write:NAME`` (before a file named NAME is renamed into place), ``checkpoint-written``,
``train-step``, ``export-start`` and ``export-written`` (after the map). Actions:

- ``enospc`` / ``eio``: raise ``OSError`` (no space left on the device / input-output error);
- ``pause``: write the point's name to the file ``CRYOAI_TEST_FAULT_READY`` (when set) and wait until
  the process is killed (a test then sends SIGKILL or SIGTERM, with no sleeps or races);
- ``sigterm`` / ``sigint``: send that signal to the own process;
- ``kill``: SIGKILL the own process;
- ``raise``: raise ``RuntimeError`` (an unexpected error, i.e. a bug).

Each pair fires once per process and value of ``CRYOAI_TEST_FAULT`` (:func:`reset` re-arms them, for tests
that run several commands in one process).
"""
import errno
import os
import signal
import time

ENVIRONMENT = "CRYOAI_TEST_FAULT"
READY_FILE = "CRYOAI_TEST_FAULT_READY"

_fired = set()


def _plan(text: str) -> list:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        point, _, action = item.rpartition(":")
        pairs.append((point, action))
    return pairs


def reset() -> None:
    """Re-arm every planned fault."""
    _fired.clear()


def hit(point: str) -> None:
    """Run the fault planned for ``point``, if any (a no-op without ``CRYOAI_TEST_FAULT``)."""
    text = os.environ.get(ENVIRONMENT)
    if not text:
        return
    for planned, action in _plan(text):
        if planned != point or (text, planned, action) in _fired:
            continue
        _fired.add((text, planned, action))
        _act(point, action)


def _act(point: str, action: str) -> None:
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), point.partition(":")[2] or point)
    if action == "eio":
        raise OSError(errno.EIO, os.strerror(errno.EIO), point.partition(":")[2] or point)
    if action == "raise":
        raise RuntimeError(f"fault injected at {point}")
    if action in ("sigterm", "sigint"):
        os.kill(os.getpid(), signal.SIGTERM if action == "sigterm" else signal.SIGINT)
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "pause":
        ready = os.environ.get(READY_FILE)
        if ready:
            with open(ready, "w") as handle:
                handle.write(point + "\n")
        while True:
            time.sleep(0.05)
    raise ValueError(f"{ENVIRONMENT}: unknown action {action!r} at {point}")
