"""Defer Ctrl-C and SIGTERM during a short critical section (the export of a run's outputs).

The first signal is remembered and the section finishes, so the outputs are complete; a second signal
raises :class:`~cryoai_core.errors.Interrupted` at once (every file is written atomically, so the
previous outputs stay intact). After the section, :attr:`DeferredInterrupts.received` names the signal.
"""
import logging
import signal

from cryoai_core.errors import Interrupted

logger = logging.getLogger(__name__)


class DeferredInterrupts:
    """Context manager; ``received`` is the name of the first deferred signal, or ``None``."""

    def __init__(self, what: str = "the export"):
        self.what = what
        self.received = None
        self._previous = {}

    def _handler(self, signum, _frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            raise Interrupted(f"received {self.received}, then {name} during {self.what}; the previous outputs "
                              "are intact")
        self.received = name
        logger.warning("received %s: finishing %s first (send it again to stop at once)", name, self.what)

    def __enter__(self) -> "DeferredInterrupts":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
