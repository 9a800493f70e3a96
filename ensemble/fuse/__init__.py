"""Fusion of member embeddings: merging, concatenation, PCA."""
