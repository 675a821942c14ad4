"""Checks of command-line values shared by the subcommands (nothing here touches the disk)."""
import math
import os

from cryoai_core.errors import InputError


def check_number(option: str, value, minimum=None, strict: bool = True) -> None:
    """``value`` (when given) is finite and above ``minimum`` (``>`` if ``strict``, else ``>=``)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise InputError(f"{option} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        if strict and minimum == 0:
            raise InputError(f"{option} must be positive, got {value:g}")
        relation = "greater than" if strict else "at least"
        raise InputError(f"{option} must be {relation} {minimum:g}, got {value:g}")


def check_writable_folder(folder: str, option: str) -> None:
    """``folder`` exists as a writable folder, or can be created (its nearest existing parent is writable)."""
    path = os.path.abspath(folder)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise InputError(f"{option} {folder}: exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{option} {folder}: the folder is not writable (choose a writable folder)")
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"{option} {folder}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {folder}: cannot be created, {parent} is not writable (choose a writable folder)")
