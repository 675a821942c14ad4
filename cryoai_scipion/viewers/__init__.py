"""cryoAI viewers (Scipion discovers the classes imported here)."""
from cryoai_scipion.viewers.viewer_abinitio import CryoAIViewer

__all__ = ["CryoAIViewer"]
