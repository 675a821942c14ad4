"""The ``cryoai`` command line: one module per subcommand, each with ``add_args(parser)`` and ``main(args)``.

The first line of a subcommand module's docstring is its help; the rest is shown after its options.
"""
import argparse
import importlib
import logging
import os
import sys

from cryoai_core import __version__

SUBCOMMANDS = {
    "simulate": "cryoai_core.cli.simulate",
    "evaluate": "cryoai_core.cli.evaluate",
    "abinit": "cryoai_core.cli.abinit",
    "predict-poses": "cryoai_core.cli.predict_poses",
    "demo": "cryoai_core.cli.demo",
}


class CommandError(Exception):
    """A user error that the command line reports in one line (no traceback)."""


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


def main(argv=None) -> int:
    """Entry point of the ``cryoai`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                            datefmt="%H:%M:%S")
    try:
        result = args._module.main(args)
    except (CommandError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as error:
        if os.environ.get("CRYOAI_DEBUG"):
            raise
        print(f"cryoai {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryoai {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
