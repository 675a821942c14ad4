"""The malloc settings of the command line: large freed blocks are reused, not faulted in again."""
import resource
import sys

import pytest
import torch

from cryoai_core.allocator import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_large_blocks_freed_by_a_step_are_reused_without_new_page_faults():
    assert retain_freed_memory()
    size = 64 * 2 ** 20 // 4
    for _ in range(3):  # the heap settles (a freed block may first move once)
        torch.empty(size).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(size).fill_(1.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Without the settings each 64 MiB block is a fresh mmap: 5 x 16384 page faults.
    assert faults < 2000
