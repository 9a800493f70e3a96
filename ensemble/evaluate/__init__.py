"""Retrieval metrics and evaluation."""
