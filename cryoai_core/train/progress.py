"""Plain progress lines on stdout (for logs such as Scipion's Output Log): no bars, no control characters.

A line is printed at the first step, every :data:`PROGRESS_SECONDS`, at every phase change and at the
end::

    progress: epoch 3/12 step 240 loss 0.01234 phase amortized radius 7.5 px | 41% elapsed 1.2 min ETA 1.7 min
"""
import math
import sys
import time

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
