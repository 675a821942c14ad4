"""Crash-safe file writing: write a temporary file in the target's folder, fsync it, rename it over.

A reader (or a run killed at any moment) sees either the previous complete file or the new complete
file, never a partial one. The temporary file is removed on every exit path that Python controls
(exceptions, Ctrl-C, SIGTERM turned into an exception); only SIGKILL or a power cut can leave one, and
its name (``.NAME.XXXXXX.tmp``, hidden) never collides with a real output.
"""
import contextlib
import os
import tempfile

from cryoai_core import faults


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()
"""Permissions of written files: those ``open`` would give (``mkstemp`` alone gives 0600)."""


def temporary_name(path: str) -> str:
    """A fresh, empty temporary file next to ``path`` (created, so the name is ours)."""
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(descriptor, FILE_MODE)
    finally:
        os.close(descriptor)
    return temporary


def commit(temporary: str, path: str) -> None:
    """fsync ``temporary`` and rename it to ``path`` (atomic on POSIX), then fsync the folder."""
    faults.hit(f"write:{os.path.basename(path)}")
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def discard(temporary: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(temporary)


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path to write; on success it replaces ``path``, on any failure it is removed.

    Example::

        with atomic_path("volume.mrc") as temporary:
            write_something(temporary)
    """
    temporary = temporary_name(path)
    try:
        yield temporary
        commit(temporary, path)
    except BaseException:
        discard(temporary)
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """``open`` for writing through :func:`atomic_path` (``mode`` ``"w"`` or ``"wb"``)."""
    with atomic_path(path) as temporary:
        with open(temporary, mode, **kwargs) as handle:
            yield handle


@contextlib.contextmanager
def rollback_on_failure(folder: str, keep=None):
    """If the block raises, remove what it added to ``folder`` (and ``folder`` itself if it created it).

    Entries present before the block are never touched. ``keep()`` returning true skips the rollback
    (e.g. once a run has a checkpoint worth resuming).
    """
    folder = os.path.abspath(folder)
    created = folder
    while not os.path.exists(os.path.dirname(created)) and os.path.dirname(created) != created:
        created = os.path.dirname(created)
    existed = os.path.isdir(folder)
    before = set(os.listdir(folder)) if existed else set()
    try:
        yield
    except BaseException:
        if keep is None or not keep():
            _remove_new_entries(folder, before, existed, created)
        raise


def _remove_new_entries(folder: str, before: set, existed: bool, created: str) -> None:
    import shutil

    if not os.path.isdir(folder):
        return
    if not existed:
        shutil.rmtree(created, ignore_errors=True)
        return
    for name in set(os.listdir(folder)) - before:
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
