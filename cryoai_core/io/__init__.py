"""Particle and map I/O (MRC, RELION star, cryoSPARC .cs).

The readers and writers (``particles``, ``mrc``, ``star``, ``cryosparc``, ``readers``) need numpy, mrcfile,
pandas and starfile, not torch (``tests/test_rotations.py`` checks it); ``dataset`` is the torch
``Dataset`` of the trainer and imports torch.
"""
