"""ens: train universal image-embedding members, fuse them, distil the ensemble, measure it."""

__version__ = "0.1.0"
