"""Report whether CUDA is available to cryoai and how many GPUs it sees.

Honours CUDA_VISIBLE_DEVICES. Exits 0 whatever the answer: it is a report, for people and for programs
(the Scipion plugin runs it as a subprocess so that its own process never imports torch). With --json,
prints one line: {"cuda": bool, "gpus": int, "names": [...], "torch": version, "cuda_version": ...}.

Example:
    cryoai check-device --json
"""
import json


def add_args(parser):
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")


def device_report() -> dict:
    """What torch can use here: CUDA availability, GPU count and names, torch and CUDA versions."""
    import torch

    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    return {"cuda": available, "gpus": count,
            "names": [torch.cuda.get_device_name(index) for index in range(count)],
            "torch": torch.__version__, "cuda_version": torch.version.cuda}


def main(args):
    report = device_report()
    if args.json:
        print(json.dumps(report))
        return 0
    if report["cuda"]:
        print(f"CUDA available: {report['gpus']} GPU(s)")
        for index, name in enumerate(report["names"]):
            print(f"  cuda:{index} {name}")
    else:
        build = f"CUDA {report['cuda_version']} build" if report["cuda_version"] else "CPU-only build"
        print(f"CUDA not available (torch {report['torch']}, {build}): cryoai runs on the CPU")
    return 0
