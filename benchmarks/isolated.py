"""Run a benchmark script against the ``cryoai_core`` found on ``PYTHONPATH`` only, e.g. an older commit's tree.

A development install (``pip install -e .``, as ``make venv`` does) adds an import finder that maps every
``cryoai_core`` module to this checkout. Python's path finder comes first, so an older tree on ``PYTHONPATH``
does provide the modules it has; but a module it lacks is then taken from this checkout instead of failing to
import. Old code would silently run with today's modules, e.g. ``cryoai_core/allocator.py``'s malloc settings,
which ``throughput.py`` applies when it can import them. This wrapper removes that finder first.

Example (the code of commit 09e6f65 against today's script):
    git worktree add /tmp/base 09e6f65
    PYTHONPATH=/tmp/base python benchmarks/isolated.py benchmarks/throughput.py --boxes 64 --threads 2
"""
import os
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: isolated.py SCRIPT [ARGUMENTS...]")
    sys.meta_path[:] = [finder for finder in sys.meta_path if "editable" not in repr(finder).lower()]
    script = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
