"""Shared test settings: one torch thread (faster and steadier than two on a loaded 2-core machine), faults re-armed."""
import pytest
import torch

from cryoai_core import faults

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _rearm_faults():
    """Each test starts with the injected faults (``CRYOAI_TEST_FAULT``) armed."""
    faults.reset()
    yield
