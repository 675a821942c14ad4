"""The malloc settings of the command line: large freed blocks are reused, not faulted in again."""
import subprocess
import sys

import pytest

STEPS = """
import resource, sys, torch
from cryoai_core.allocator import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else True
size = 64 * 2 ** 20 // 4
for _ in range(10):  # the heap settles: an aligned block does not fit the exact hole a freed one left until
    torch.empty(size).fill_(1.0)  # neighbouring holes have merged
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(size).fill_(1.0)
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple:
    """``(applied, page faults)`` of ten 64 MiB "steps" in a fresh process after ten settling ones."""
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    applied, faults = done.stdout.split()
    return applied == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_large_blocks_freed_by_a_step_are_reused_without_new_page_faults():
    applied, faults = _faults("retain")
    assert applied
    block_pages = 64 * 2 ** 20 // 4096
    # Without the settings every step faults a fresh 64 MiB mmap in (10 x 16384 pages, checked below);
    # with them, fewer than one block's pages over the ten steps.
    assert faults < block_pages
    assert _faults("default")[1] >= 5 * block_pages
