"""`cryoai check-device`: what the Scipion form asks before accepting "Use GPU = Yes"."""
import json
import os
import subprocess
import sys

import torch

from cryoai_core.cli import main


def test_json_report_is_torch_answer(capsys):
    assert main(["check-device", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["cuda"] == torch.cuda.is_available()
    assert report["gpus"] == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert len(report["names"]) == report["gpus"]
    assert report["torch"] == torch.__version__


def test_hidden_gpus_are_not_reported():
    """CUDA_VISIBLE_DEVICES='' hides every GPU: the report says no CUDA, in words and in JSON."""
    environ = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "cryoai_core.cli", "check-device"]
    report = json.loads(subprocess.run(command + ["--json"], env=environ, capture_output=True, text=True,
                                       check=True).stdout.strip().splitlines()[-1])
    assert (report["cuda"], report["gpus"]) == (False, 0)
    text = subprocess.run(command, env=environ, capture_output=True, text=True, check=True).stdout
    assert text.startswith("CUDA not available")
