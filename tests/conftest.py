"""Shared test settings: one torch thread (faster and steadier than two on a loaded 2-core machine), the CLI's
malloc settings (``cryoai_core/allocator.py``), faults re-armed."""
import pytest
import torch

from cryoai_core import faults
from cryoai_core.allocator import retain_freed_memory

torch.set_num_threads(1)
retain_freed_memory()


@pytest.fixture(autouse=True)
def _rearm_faults():
    """Each test starts with the injected faults (``CRYOAI_TEST_FAULT``) armed."""
    faults.reset()
    yield
