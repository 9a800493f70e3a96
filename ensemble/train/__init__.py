"""Optimizers, checkpoints and the stage-based training loop."""
