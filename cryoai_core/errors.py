"""The failures the ``cryoai`` command line reports in one line, and their exit codes.

Exit codes: 0 success; 1 an unexpected error, i.e. a bug (shown with its traceback and a request to
report it); 2 bad input (an option, a file's content, a value out of range); 3 storage (a file or
folder that cannot be read or written: full disk, read-only folder); 4 the training failed (e.g. the
loss became NaN); 130 interrupted (Ctrl-C, SIGTERM), with a checkpoint or the previous outputs intact.
"""
import errno

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3
EXIT_TRAINING = 4
EXIT_INTERRUPTED = 130


class CryoAIError(Exception):
    """An expected failure: the message is shown as one line and the process exits with ``exit_code``."""

    exit_code = EXIT_BAD_INPUT


class InputError(CryoAIError, ValueError):
    """An option, a file's content or a value that cannot be used (exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class StorageError(CryoAIError):
    """A file or folder that cannot be read or written (exit code 3)."""

    exit_code = EXIT_STORAGE


class TrainingError(CryoAIError):
    """The training could not go on, e.g. a non-finite loss (exit code 4)."""

    exit_code = EXIT_TRAINING


class Interrupted(CryoAIError):
    """The user or the queue stopped the process (exit code 130)."""

    exit_code = EXIT_INTERRUPTED


_STORAGE_ADVICE = {
    errno.ENOSPC: "free some space or choose another folder",
    errno.EDQUOT: "free some space or choose another folder",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "check the permissions or choose another folder",
    errno.EPERM: "check the permissions or choose another folder",
}


def describe_os_error(error: OSError) -> str:
    """One line naming the file and the reason of an ``OSError``, with advice where there is one."""
    where = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error)
    advice = _STORAGE_ADVICE.get(error.errno)
    text = f"{where}: {reason}" if where else reason
    return f"{text} ({advice})" if advice else text
