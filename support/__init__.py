"""Reasoning Heads: the support package behind the book's chapters (see README)."""

__all__ = ["artifacts", "models", "prompts"]
