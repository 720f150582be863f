"""Reasoning Heads: the support package behind the book's chapters (see README)."""

import warnings as _warnings

# tqdm.auto warns once per kernel when ipywidgets is absent; progress bars are off in rendered chapters anyway.
_warnings.filterwarnings("ignore", message="IProgress not found")

__all__ = ["artifacts", "models", "prompts", "organism", "tasks", "tracing", "selection", "finetune", "plots",
           "params", "run"]
