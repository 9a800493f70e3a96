"""Deployable files: the exported TorchScript model and the step that writes and verifies it."""
