"""Particle and map I/O (MRC, RELION star, cryoSPARC .cs). Needs numpy, mrcfile and starfile, not torch."""
