"""cryoAI plugin tests (``scipion3 tests cryoai_scipion.tests`` runs the classes imported here)."""
from cryoai_scipion.tests.test_convert import TestCryoAIConvert

__all__ = ["TestCryoAIConvert"]
