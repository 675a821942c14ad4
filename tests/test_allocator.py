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


RELEASE = """
import torch
from cryoai_core.allocator import release_freed_memory, retain_freed_memory
def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
retain_freed_memory()
blocks = [torch.empty(2 ** 20 // 4).fill_(1.0) for _ in range(64)]  # 64 MiB of 1 MiB heap blocks
keep = torch.empty(16).fill_(1.0)  # above them: the heap's top cannot simply shrink
del blocks
before = rss_mib()
released = release_freed_memory()
print(int(released), before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_memory_freed_under_the_retaining_settings_goes_back_when_released():
    done = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True)
    released, freed_mib = done.stdout.split()
    assert released == "1" and float(freed_mib) > 48
