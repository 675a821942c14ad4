"""The cryoAI protocols (Scipion discovers the classes imported here)."""
from cryoai_scipion.protocols.protocol_abinitio import CryoAIProtAbinitio
from cryoai_scipion.protocols.protocol_base import CryoAIProtBase
from cryoai_scipion.protocols.protocol_predict_poses import CryoAIProtPredictPoses

__all__ = ["CryoAIProtAbinitio", "CryoAIProtBase", "CryoAIProtPredictPoses"]
