"""The chapter helper: one object per chapter run that validates the parameters, opens the run directory, loads the
model, and writes every table and figure with its provenance filled in.

A chapter opens with

    ch = chapter.start("04_selective_sft", globals())   # fails here, before any model loads, on a bad parameter
    lm = ch.load_model()

and then writes `ch.table("04_main", df)` (CSV plus a `.provenance.json` sidecar: model, dataset, example IDs,
parameters, package version, git commit) and `ch.figure(fig, "04_budget")` (PNG in the run directory, shown inline).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import artifacts
from .params import validate


class Chapter:
    """A chapter run: validated parameters `P`, run directory `run_dir`, and the model identity once loaded."""

    def __init__(self, chapter_id: str, namespace: Mapping[str, Any]):
        self.id = chapter_id
        self.P = validate(chapter_id, namespace)
        self.run_dir = artifacts.run_dir(self.P["run_dir"])
        self.seed = int(self.P["seed"])
        self.identity: dict | None = None
        self.t0 = time.time()

    @property
    def params(self) -> dict[str, Any]:
        """The validated parameters as a plain dict (what provenance records)."""
        return dict(self.P)

    @property
    def elapsed(self) -> float:
        """Seconds since the chapter started."""
        return time.time() - self.t0

    def load_model(self, name: str | None = None, main: bool = True, **kw: Any):
        """`support.models.load_model` for `name` (default: the `model_name` parameter). The chapter's main model's
        identity goes into every artifact's provenance; pass `main=False` for a second model (e.g. a base model)."""
        from .models import load_model

        lm = load_model(name or self.P["model_name"], **kw)
        if main:
            self.identity = lm.identity()
        return lm

    def path(self, *parts: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir.joinpath(*parts)

    def provenance(self, dataset: str | None = None, example_ids: Iterable[Any] | None = None,
                   extra_params: Mapping[str, Any] | None = None, **extra: Any) -> dict:
        """Provenance of an artifact of this chapter: model identity, dataset, example IDs, parameters (+ extras)."""
        return artifacts.provenance(self.identity, dataset, example_ids, {**self.params, **(extra_params or {})},
                                    **extra)

    def table(self, name: str, df: Any, dataset: str | None = None, example_ids: Iterable[Any] | None = None,
              extra_params: Mapping[str, Any] | None = None, **extra: Any) -> Any:
        """Write a tidy frame to `<run_dir>/<name>.csv` with its provenance; returns the frame (to show it)."""
        artifacts.write_table(self.path(f"{name}.csv"), df, self.provenance(dataset, example_ids, extra_params,
                                                                             **extra))
        return df

    def figure(self, fig: Any, name: str) -> None:
        """Save a figure made by `support.plots` as `<run_dir>/<name>.png` and show it."""
        from . import plots

        plots.show(fig, self.run_dir, name)


def start(chapter_id: str, namespace: Mapping[str, Any]) -> Chapter:
    """Open a chapter run: validate its parameters (from the notebook's `globals()`), seed torch, open the run dir."""
    ch = Chapter(chapter_id, namespace)
    try:
        import torch

        torch.manual_seed(ch.seed)
    except ImportError:  # pragma: no cover - torch is a runtime dependency
        pass
    return ch
