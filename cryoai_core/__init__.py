"""cryoAI core: ab initio cryo-EM reconstruction with amortized pose inference (Levy et al., ECCV 2022).

Framework-agnostic PyTorch package: particle I/O, image-formation physics, simulator, evaluation, the
learner and the ``cryoai`` command line. It never imports Scipion. The particle readers of
``cryoai_core.io`` and ``cryoai_core.relion_euler`` need no torch (``cryoai_core.io.dataset`` does).
"""
__version__ = "0.1.0"
