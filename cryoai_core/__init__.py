"""cryoAI core: ab initio cryo-EM reconstruction with amortized pose inference (Levy et al., ECCV 2022).

Framework-agnostic PyTorch package: particle I/O, image-formation physics, simulator, evaluation, the
learner and the ``cryoai`` command line. It never imports Scipion. ``cryoai_core.io`` needs no torch.
"""
__version__ = "0.1.0"
