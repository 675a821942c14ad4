"""Start a ``cryoai`` command on several GPUs of one node through ``torch.distributed.run`` (torchrun).

``cryoai abinit --gpus 0,1,2,3 ...`` calls :func:`relaunch`, which hands the same command line to
torchrun's own engine (``--standalone``: a local rendezvous on a free port, one process per GPU). Each
process then sees ``WORLD_SIZE > 1`` and takes the GPU of its ``LOCAL_RANK`` in the ``--gpus`` list
(see ``train/distributed.py``). For several nodes, call ``torchrun`` directly (README).
"""
import argparse
import logging

logger = logging.getLogger(__name__)

def parse_gpus(text: str | None) -> list:
    """``"0,1,2"`` or ``"0 1 2"`` -> ``[0, 1, 2]``; ``None`` or empty -> ``[]``."""
    if not text:
        return []
    parts = text.replace(",", " ").split()
    if not all(part.isdigit() for part in parts):
        raise ValueError(f"--gpus must list GPU numbers such as 0,1,2,3; got {text!r}")
    gpus = [int(part) for part in parts]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus lists a GPU twice: {text!r}")
    return gpus


def command_line(command: str, add_args, args: argparse.Namespace) -> list:
    """The argument list that reproduces ``args`` for the subcommand whose options ``add_args`` defines."""
    parser = argparse.ArgumentParser(add_help=False)
    add_args(parser)
    positionals, options = [], []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        flag = max(action.option_strings, key=len, default=None)
        if flag is None:
            positionals.append(str(value))
        elif value == action.default:
            continue
        elif action.nargs == 0:
            options.append(flag)
        elif isinstance(value, (list, tuple)):
            options += [flag, *map(str, value)]
        else:
            options += [flag, str(value)]
    return [command, *options, *positionals]


def relaunch(arguments: list, processes: int) -> int:
    """Run ``cryoai ARGUMENTS`` as ``processes`` ranks on this node; return the exit status.

    A failing rank prints its own error line; the status is then that of the lowest failing rank.
    """
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launcher = ["--standalone", f"--nproc-per-node={processes}", "--module", "cryoai_core.cli", *arguments]
    logger.info("starting %d ranks: torchrun %s", processes, " ".join(launcher))
    try:
        run.main(launcher)
    except ChildFailedError as error:
        ranks = sorted(error.failures)
        status = error.failures[ranks[0]].exitcode
        logger.error("the distributed run stopped: rank(s) %s exited with status %s", ranks,
                     sorted({failure.exitcode for failure in error.failures.values()}))
        return status if status > 0 else 1
    return 0
