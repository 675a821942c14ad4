"""The ``cryoai`` command line: one module per subcommand, each with ``add_args(parser)`` and ``main(args)``.

The first line of a subcommand module's docstring is its help; the rest is shown after its options.
"""
import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import traceback

from cryoai_core import __version__
from cryoai_core.allocator import retain_freed_memory
from cryoai_core.errors import (EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED, EXIT_STORAGE, CryoAIError,
                                InputError, Interrupted, describe_os_error)

SUBCOMMANDS = {
    "simulate": "cryoai_core.cli.simulate",
    "evaluate": "cryoai_core.cli.evaluate",
    "abinit": "cryoai_core.cli.abinit",
    "predict-poses": "cryoai_core.cli.predict_poses",
    "backproject": "cryoai_core.cli.backproject",
    "demo": "cryoai_core.cli.demo",
    "check-device": "cryoai_core.cli.check_device",
}


CommandError = InputError
"""A user error that the command line reports in one line (no traceback); exit code 2."""



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryoai", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cryoai {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        summary, _, details = (module.__doc__ or name).strip().partition("\n")
        sub = commands.add_parser(name, help=summary, description=summary, epilog=details.strip() or None,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_args(sub)
        sub.set_defaults(_module=module)
    return parser


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Interrupted` (so ``finally`` blocks and temporary-file cleanup run)."""

    def handler(signum, _frame):
        raise Interrupted(f"received {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(module, args, name: str) -> int:
    """Run a subcommand's ``main`` behind the error boundary; return the exit code.

    Expected failures (:class:`~cryoai_core.errors.CryoAIError`, ``ValueError`` for bad input,
    ``OSError`` for storage) print one line on stderr; an unexpected exception prints its traceback and
    a request to report it (exit code 1). ``CRYOAI_DEBUG=1`` re-raises everything.
    """
    try:
        with _sigterm_as_interrupt():
            return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print(f"cryoai {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("CRYOAI_DEBUG"):
            raise
        return _report(error, name)


def _report(error: Exception, name: str) -> int:
    """Print ``error`` the way the error boundary shows it; return its exit code."""
    prefix = f"cryoai {name}: error:"
    if isinstance(error, Interrupted):
        print(f"cryoai {name}: interrupted: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, CryoAIError):
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        text = describe_os_error(error) if error.strerror else str(error)
        print(f"{prefix} {_one_line(text)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if isinstance(error, OSError):
        print(f"{prefix} {_one_line(describe_os_error(error))}", file=sys.stderr)
        return EXIT_STORAGE
    if isinstance(error, ValueError):
        print(f"{prefix} {_one_line(error)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    traceback.print_exception(error)
    print(f"cryoai {name}: internal error (a bug in cryoAI {__version__}, not a problem with your input); "
          "please report it to the developers with the traceback above and the command line", file=sys.stderr)
    return EXIT_BUG


def _one_line(error) -> str:
    return " ".join(str(error).split())


def main(argv=None) -> int:
    """Entry point of the ``cryoai`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    retain_freed_memory()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
    return run_command(args._module, args, args.command)


if __name__ == "__main__":
    sys.exit(main())
