"""cryoAI plugin tests (``scipion3 tests cryoai_scipion.tests`` runs the classes imported here)."""
from cryoai_scipion.tests.test_convert import TestCryoAIConvert
from cryoai_scipion.tests.test_protocols import TestCryoAIProtocols
from cryoai_scipion.tests.test_usability import TestCryoAIUsability

__all__ = ["TestCryoAIConvert", "TestCryoAIProtocols", "TestCryoAIUsability"]
