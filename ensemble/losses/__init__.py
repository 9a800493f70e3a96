"""Losses and heads, one concept per module."""
