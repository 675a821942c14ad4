"""Plain progress lines on stdout (for logs such as Scipion's Output Log): no bars, no control characters.

Training prints a line at the first step, every :data:`PROGRESS_SECONDS`, at every phase change and at the
end::

    progress: epoch 3/12 step 240 loss 0.01234 phase amortized radius 7.5 px | 41% elapsed 1.2 min ETA 1.7 min

A pass over the particles in batches (pose prediction and export, half maps, backprojection, simulation;
:func:`progress_batches`) prints nothing when it is done within :data:`PROGRESS_SECONDS`, else a line every
:data:`PROGRESS_SECONDS` and one at the end::

    progress: predict poses 12800/30000 (43%) | 19.2 per s elapsed 11.1 min ETA 14.9 min
"""
import math
import sys
import time

from tqdm import tqdm

from cryoai_core.allocator import release_freed_memory

RELEASE_EVERY_BATCHES = 200
"""A pass over the particles hands the allocator's free pages back every this many batches: under the
command line's malloc settings (:mod:`cryoai_core.allocator`) the freed holes of a long pass fragment the
heap, which grew by about 70 bytes per particle over a 10⁶-particle prediction (``benchmarks/README.md``)."""

PROGRESS_SECONDS = 30.0
"""Seconds between two progress lines (phase changes print at once)."""


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


class ProgressLines:
    """Decides when to print a line and formats it.

    Args:
        epochs: the epoch budget (``None``: a time budget only).
        stream: where lines go (default ``sys.stdout``, looked up when printing).
        clock: ``time.monotonic``-like function (tests pass a fake one).
    """

    def __init__(self, epochs: float | None = None, stream=None, clock=time.monotonic,
                 interval_s: float = PROGRESS_SECONDS):
        self.epochs = epochs
        self.stream = stream
        self.clock = clock
        self.interval_s = interval_s
        self._last_time = None
        self._last_phase = None

    def due(self, phase: str, final: bool = False) -> bool:
        """Whether :meth:`update` would print a line now (so that the caller reads the loss only then)."""
        return (final or self._last_time is None or phase != self._last_phase
                or self.clock() - self._last_time >= self.interval_s)

    def update(self, step: int, epoch: int, loss: float, phase: str, radius_px: float, fraction: float,
               elapsed_s: float, final: bool = False) -> str | None:
        """Print (and return) a line when one is due, else return ``None``."""
        if not self.due(phase, final):
            return None
        now = self.clock()
        self._last_time, self._last_phase = now, phase
        if self.epochs:
            epoch_text = f"epoch {min(epoch + 1, math.ceil(self.epochs))}/{self.epochs:g}"
        else:
            epoch_text = f"epoch {epoch + 1}"
        if final:
            timing = f"done in {format_minutes(elapsed_s)}"
        elif fraction > 0:
            timing = f"elapsed {format_minutes(elapsed_s)} ETA {format_minutes(elapsed_s * (1 - fraction) / fraction)}"
        else:
            timing = f"elapsed {format_minutes(elapsed_s)}"
        line = (f"progress: {epoch_text} step {step} loss {loss:.4g} phase {phase} radius {radius_px:.1f} px | "
                f"{100 * fraction:.0f}% {timing}")
        stream = self.stream or sys.stdout
        print(line, file=stream, flush=True)
        return line


class BatchLines:
    """Progress lines of a pass over ``total`` items: the first once :data:`PROGRESS_SECONDS` have passed, then
    one every :data:`PROGRESS_SECONDS`, and a last one at the end if any was printed.

    Args:
        what: what the pass does, e.g. ``"predict poses"``.
        total: items in the pass.
        stream: where lines go (default ``sys.stdout``, looked up when printing).
        clock: ``time.monotonic``-like function (tests pass a fake one).
        interval_s: seconds between lines (default :data:`PROGRESS_SECONDS`, read when the pass starts).
    """

    def __init__(self, what: str, total: int, stream=None, clock=time.monotonic, interval_s: float | None = None):
        self.what, self.total, self.stream, self.clock = what, int(total), stream, clock
        self.interval_s = PROGRESS_SECONDS if interval_s is None else float(interval_s)
        self._start = self._last = clock()
        self._printed = False

    def update(self, done: int) -> str | None:
        """``done`` items are finished: print (and return) a line when one is due, else return ``None``."""
        now = self.clock()
        finished = done >= self.total
        if not (now - self._last >= self.interval_s or (finished and self._printed)):
            return None
        self._last, self._printed = now, True
        elapsed = now - self._start
        rate = done / elapsed if elapsed > 0 else float("nan")
        if finished:
            timing = f"done in {format_minutes(elapsed)}"
        else:
            timing = f"elapsed {format_minutes(elapsed)} ETA {format_minutes((self.total - done) / rate)}" \
                if rate > 0 else f"elapsed {format_minutes(elapsed)}"
        percent = 100.0 * done / self.total if self.total else 100.0
        line = f"progress: {self.what} {done}/{self.total} ({percent:.0f}%) | {rate:.1f} per s {timing}"
        print(line, file=self.stream or sys.stdout, flush=True)
        return line


def progress_batches(starts: range, what: str, bar: bool = True, lines: bool = True):
    """Yield the batch starts ``starts`` (``range(0, N, B)``) of a pass over ``N`` items, with a tqdm bar when
    ``bar`` and stderr is a terminal, and :class:`BatchLines` on stdout when ``lines`` (e.g. on the writing
    rank only). A batch counts as done when the next one is asked for. Every :data:`RELEASE_EVERY_BATCHES`
    batches the heap's free pages go back to the system, so that memory stays flat in ``N``."""
    report = BatchLines(what, starts.stop - starts.start) if lines else None
    shown = tqdm(starts, desc=what, unit="batch", disable=not bar or not sys.stderr.isatty())
    for number, start in enumerate(shown):
        if number % RELEASE_EVERY_BATCHES == RELEASE_EVERY_BATCHES - 1:
            release_freed_memory()
        yield start
        if report is not None:
            report.update(min(start + starts.step, starts.stop) - starts.start)
