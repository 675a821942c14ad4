"""The command line's error boundary: one line and a class-specific exit code, tracebacks only for bugs."""
import errno
import types

import pytest

from cryoai_core.cli import run_command
from cryoai_core.errors import Interrupted, StorageError, TrainingError


def _module(error):
    def main(_args):
        raise error
    return types.SimpleNamespace(main=main)


@pytest.mark.parametrize("error, code, text", [
    (ValueError("--box must be even"), 2, "--box must be even"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.star"), 2, "x.star: No such file"),
    (OSError(errno.ENOSPC, "No space left on device", "out/volume.mrc"), 3, "free some space"),
    (PermissionError(errno.EACCES, "Permission denied", "out"), 3, "out: Permission denied"),
    (StorageError("cannot write"), 3, "cannot write"),
    (TrainingError("the loss became nan"), 4, "the loss became nan"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (Interrupted("received SIGTERM"), 130, "interrupted: received SIGTERM"),
])
def test_expected_failures_are_one_line(capsys, error, code, text):
    assert run_command(_module(error), None, "abinit") == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("error", [KeyError("encoder"), RuntimeError("shape mismatch"), TypeError("bad")])
def test_a_bug_shows_its_traceback_and_asks_for_a_report(capsys, error):
    assert run_command(_module(error), None, "abinit") == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "please report" in err


@pytest.mark.parametrize("error", [ValueError("--box must be even"), OSError(errno.ENOSPC, "No space left"),
                                   Interrupted("received SIGTERM"), RuntimeError("shape mismatch")])
def test_debug_mode_re_raises_every_failure(monkeypatch, error):
    monkeypatch.setenv("CRYOAI_DEBUG", "1")
    with pytest.raises(type(error)):
        run_command(_module(error), None, "abinit")
