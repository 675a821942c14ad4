"""Scipion plugin for cryoAI: ab initio reconstruction with amortized pose inference (Levy et al. 2022).

The Scipion process never imports torch: protocols convert particles to a RELION 3.1 star file, run the
``cryoai`` command line of the core as a job, and register its outputs. Where ``cryoai`` runs is set by
``CRYOAI_ENV_ACTIVATION``: empty (default) runs it from the same Python environment as Scipion; otherwise
the command activates a dedicated environment first, e.g. the one ``scipion3 installb cryoai`` creates.
"""
import importlib.util
import json
import logging
import os
import re
import shlex
import subprocess
import sys

import pwem
import pyworkflow.utils as pwutils

from cryoai_core import __version__
from cryoai_scipion.constants import (CRYOAI_ENV_ACTIVATION, CRYOAI_ENV_NAME, CRYOAI_PACKAGE,
                                      CRYOAI_TORCH_INDEX_URL, DEFAULT_TORCH_INDEX_URL)

_logo = "cryoai_logo.png"
_references = ["Levy2022"]

logger = logging.getLogger(__name__)

DEVICE_CHECK_TIMEOUT_S = 120
"""Longest wait for ``cryoai check-device`` (it imports torch, a few seconds)."""

_answers = {}
"""Answers of ``cryoai`` subprocesses (device report, options of a subcommand) by command and
CUDA_VISIBLE_DEVICES: asked once per process."""


class Plugin(pwem.Plugin):
    _url = "https://doi.org/10.1007/978-3-031-19803-8_32"
    _supportedVersions = [__version__]

    DISPLAY_NAME = "cryoAI"
    """Shown for the package in the protocol tree and forms ("cryoAI - ab initio"), instead of the module
    name: pyworkflow's ``Plugin.getName()`` returns ``_name`` when it is set."""

    def __init__(self):
        super().__init__()
        self._name = self.DISPLAY_NAME

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(CRYOAI_ENV_ACTIVATION, "",
                       description="Command that activates the environment holding the `cryoai` program, "
                                   "e.g. '. /path/to/cryoai-env/bin/activate'. Empty: Scipion's own Python.")
        cls._defineVar(CRYOAI_TORCH_INDEX_URL, DEFAULT_TORCH_INDEX_URL,
                       description="pip index of the CUDA build of torch installed by "
                                   "'scipion3 installb cryoai'.")

    @classmethod
    def getEnvActivation(cls) -> str:
        """The activation command, or '' to run ``cryoai`` from Scipion's own Python."""
        return (cls.getVar(CRYOAI_ENV_ACTIVATION) or "").strip()

    @classmethod
    def getEnviron(cls, gpus=None, threads=None):
        """Environment of the ``cryoai`` job: ``CUDA_VISIBLE_DEVICES`` from the GPU list ('' hides all
        GPUs, None leaves it as it is), ``OMP_NUM_THREADS`` from the thread count, unbuffered Python output
        (the Output Log shows the job's lines as they come); no PYTHONPATH when a dedicated env is used."""
        environ = pwutils.Environ(os.environ)
        environ["PYTHONUNBUFFERED"] = "1"
        if cls.getEnvActivation():
            environ.pop("PYTHONPATH", None)
        if gpus is not None:
            environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
        if threads:
            environ["OMP_NUM_THREADS"] = str(int(threads))
        return environ

    @classmethod
    def getProgram(cls, subcommand: str) -> str:
        """Shell command running ``cryoai SUBCOMMAND`` in the configured environment."""
        activation = cls.getEnvActivation()
        if activation:
            return f"{activation} && cryoai {subcommand}"
        script = os.path.join(os.path.dirname(sys.executable), "cryoai")
        if os.path.exists(script):
            return f"{shlex.quote(script)} {subcommand}"
        return f"{shlex.quote(sys.executable)} -m cryoai_core.cli {subcommand}"

    @classmethod
    def getDeviceReport(cls):
        """What ``cryoai check-device --json`` says about this machine (``{"cuda": bool, "gpus": int,
        ...}``), run as a subprocess so that Scipion's process never imports torch; ``None`` when it
        cannot run. Asked once per process and environment."""
        output = cls._askCryoai("check-device --json")
        try:
            return json.loads(output.strip().splitlines()[-1]) if output.strip() else None
        except ValueError:
            logger.warning("cryoai check-device printed no JSON: %s", output[-200:])
            return None

    @classmethod
    def getOptions(cls, subcommand: str) -> set:
        """The long options ``cryoai SUBCOMMAND --help`` lists (empty when it cannot run): lets the plugin
        use an option only where the installed core has it."""
        return set(re.findall(r"^ {2}(?:-\w[ \w]*, )?(--[a-z][a-z0-9-]*)", cls._askCryoai(f"{subcommand} --help"),
                              re.MULTILINE))

    @classmethod
    def _askCryoai(cls, arguments: str) -> str:
        """Standard output of ``cryoai ARGUMENTS`` run as a subprocess ('' when it fails), cached."""
        command = f"{cls.getProgram(arguments)}"
        environ = cls.getEnviron()
        key = (command, environ.get("CUDA_VISIBLE_DEVICES"))
        if key not in _answers:
            try:
                result = subprocess.run(command, shell=True, env=environ, capture_output=True, text=True,
                                        timeout=DEVICE_CHECK_TIMEOUT_S)
                if result.returncode:
                    logger.warning("%s failed: %s", command, result.stderr.strip()[-300:])
                _answers[key] = result.stdout if result.returncode == 0 else ""
            except (OSError, subprocess.TimeoutExpired) as error:
                logger.warning("%s failed: %s", command, error)
                _answers[key] = ""
        return _answers[key]

    @classmethod
    def validateInstallation(cls):
        """Errors when ``cryoai`` cannot run; with an empty activation, the core and torch must be
        importable from Scipion's Python (checked without importing them)."""
        if cls.getEnvActivation():
            return []
        missing = [name for name in ("cryoai_core", "torch") if importlib.util.find_spec(name) is None]
        if not missing:
            return []
        return [f"cryoAI cannot run: {', '.join(missing)} not importable from {sys.executable}.",
                f"Either `pip install scipion-em-cryoai` into this environment, or run "
                f"`scipion3 installb {CRYOAI_PACKAGE}` and set {CRYOAI_ENV_ACTIVATION} to "
                f"'. {cls.getDedicatedEnvPath('bin', 'activate')}'."]

    @classmethod
    def getDedicatedEnvPath(cls, *paths) -> str:
        """A path inside the environment created by ``scipion3 installb cryoai``."""
        return os.path.join(pwem.Config.EM_ROOT, CRYOAI_ENV_NAME, *paths)

    @classmethod
    def defineBinaries(cls, env):
        """``scipion3 installb cryoai``: a virtualenv under EM_ROOT with a CUDA torch and the core."""
        flag = f"cryoai_{__version__}_installed"
        index_url = cls.getVar(CRYOAI_TORCH_INDEX_URL) or DEFAULT_TORCH_INDEX_URL
        commands = " && ".join([
            f"{shlex.quote(sys.executable)} -m venv .",
            "./bin/python -m pip install --upgrade pip",
            f"./bin/python -m pip install torch --index-url {shlex.quote(index_url)}",
            f"./bin/python -m pip install scipion-em-cryoai=={__version__}",
            "./bin/cryoai --version",
            f"touch {flag}",
        ])
        env.addPackage(CRYOAI_PACKAGE, version=__version__, tar="void.tgz",
                       commands=[(commands, flag)], neededProgs=[], default=True)
