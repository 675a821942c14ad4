"""The process's memory allocator: keep freed memory for reuse instead of returning it to the system.

A training step allocates and frees tensors of tens to hundreds of MiB (FourierNet's activations on every
slice point, the search's score matrices). glibc's ``malloc`` serves blocks above its mmap threshold (at most
32 MiB) with fresh ``mmap`` calls and unmaps them when freed, so every step faults in gigabytes of new zeroed
pages: at 64 px the kernel's share of a step's CPU time was about as large as the computation's
(``benchmarks/README.md``). :func:`retain_freed_memory` makes ``malloc`` take every block from its heap and
never trim it, so a step reuses the pages of the previous one. The process keeps its peak until it exits,
and the heap may grow for a few steps before freed holes merge into blocks that fit the next aligned request
(``benchmarks/README.md``, "Peak memory with the malloc settings"). Work that frees a lot once and will
not reuse it hands it back with :func:`release_freed_memory`: the commands' input checks (the star
file's parse included) and every pass over the particles (``train/progress.py``).
"""
import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
"""``mallopt`` parameters (glibc ``malloc.h``)."""

_INT_MAX = 2 ** 31 - 1


def _libc():
    """The C library, or ``None`` where ctypes cannot load it."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def retain_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to serve large blocks from its heap and keep freed memory; True when applied.

    A no-op returning False where the C library has no ``mallopt`` (macOS, musl) or refuses the setting.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    if not applied:
        logger.debug("malloc settings not applied: freed memory goes back to the system")
    return applied


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``, which also releases whole free
    pages inside the heap); True when some memory was released. A no-op returning False elsewhere."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return trim(0) == 1
