"""Reasoning Heads: the support package behind the book's chapters (see README)."""

import warnings as _warnings

# tqdm.auto warns once per kernel when ipywidgets is absent; progress bars are off in rendered chapters anyway.
_warnings.filterwarnings("ignore", message="IProgress not found")

#: The modules, by layer (lowest first; see README "The package, layer by layer" and tests/test_layering.py).
__all__ = ["errors", "artifacts", "prompts", "scoring", "papers",
           "heads", "records", "toydata", "tasks", "contrasts",
           "models", "decoding", "readout", "training", "memory",
           "tracing", "selection", "finetune", "evaluation", "organism", "rhythm", "rl", "circuits", "interventions",
           "ablations", "synthesis",
           "plots", "params", "chapter", "run", "book"]
