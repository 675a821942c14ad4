"""Training of cryoAI: configuration, loss, the learner's step, the trainer loop, checkpoints and export."""
