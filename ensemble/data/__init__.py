"""Manifests, decoding, augmentation, datasets and samplers."""
