"""Backbones, necks and embedding models."""

from .backbone import Backbone, build_backbone
from .member import EmbeddingModel, build_member_model
from .preprocess import Preprocess

__all__ = ["Backbone", "EmbeddingModel", "Preprocess", "build_backbone", "build_member_model"]
