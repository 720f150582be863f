"""Chapter parameters: one schema, checked once at the top of every chapter before any model loads.

Each chapter's parameter names come from its notebook's `parameters` cell; their types, ranges and choices live in
`SCHEMA` below. `validate(chapter, namespace)` fails at once with one clear error naming the valid choices or range.
Cross-parameter rules (e.g. a head budget larger than the model's L·H) are checked where the model is known
(`check_budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .errors import ParameterError
from .heads import check_budget
from .prompts import TEMPLATES as _TEMPLATES

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")

__all__ = ["ParameterError", "Param", "SCHEMA", "validate", "check_names", "check_budget", "profiles"]


def profiles() -> dict[str, Any]:
    """All run profiles (support/profiles.yaml): per chapter, the parameter values of that profile."""
    import yaml

    return yaml.safe_load(PROFILES_FILE.read_text())


@dataclass(frozen=True)
class Param:
    """Type and allowed values of one parameter. `check` returns an error message or None."""

    kind: type | tuple[type, ...]
    choices: Callable[[], tuple] | tuple | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    doc: str = ""
    item_kind: type | None = None  # for list parameters

    def check(self, name: str, value: Any) -> None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise ParameterError(f"parameter {name}={value!r}: expected {_kname(kinds)}, got bool")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise ParameterError(f"parameter {name}={value!r}: expected {_kname(kinds)}, got {type(value).__name__}")
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)):
            if not value:
                raise ParameterError(f"parameter {name} must not be empty")
            if self.item_kind and not all(isinstance(v, self.item_kind) and not isinstance(v, bool) for v in value):
                raise ParameterError(f"parameter {name}={value!r}: every item must be {self.item_kind.__name__}")
        choices = self.choices() if callable(self.choices) else self.choices
        for v in items:
            if choices is not None and v not in choices and not _open_choice(name, v):
                raise ParameterError(f"parameter {name}={v!r} is not valid; valid choices: {list(choices)}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lo_bad = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
                hi_bad = self.hi is not None and v > self.hi
                if lo_bad or hi_bad:
                    lo = "-inf" if self.lo is None else f"{self.lo}"
                    hi = "inf" if self.hi is None else f"{self.hi}"
                    raise ParameterError(
                        f"parameter {name}={v!r} is out of range {'(' if self.lo_open else '['}{lo}, {hi}]")


def _kname(kinds: tuple) -> str:
    return " or ".join(k.__name__ for k in kinds)


def _open_choice(name: str, v: Any) -> bool:
    """Model names may also be hub names or local dirs: `support.models.resolve` decides those."""
    if name == "model_name":
        from .models import resolve

        resolve(v)  # raises UnknownModelError (a ValueError) naming the valid choices
        return True
    return False


def _models() -> tuple:
    from .models import KNOWN_HUB_MODELS, toy_models

    return tuple(toy_models()) + KNOWN_HUB_MODELS


def _tasks() -> tuple:
    from .tasks import task_names

    return tuple(task_names())


def _profiles() -> tuple:
    return tuple(profiles())


def _norms() -> tuple:
    from .readout import NORMS

    return NORMS


COMMON = {
    "profile": Param(str, _profiles, doc="profile the defaults came from (informational)"),
    "run_dir": Param(str, doc="run directory where chapters exchange artifacts"),
    "seed": Param(int, lo=0, doc="global seed"),
}

SCHEMA: dict[str, dict[str, Param]] = {
    "00_model_organism": {
        **COMMON,
        "model_name": Param(str, _models, doc="model to inspect"),
        "n_eval": Param(int, lo=1, hi=5000, doc="held-out items per toy task"),
        "n_examples": Param(int, lo=1, hi=20, doc="example generations to show"),
    },
}

SCHEMA["01_tracing"] = {
    **COMMON,
    "model_name": Param(str, _models, doc="model to trace"),
    "tasks": Param(list, _tasks, item_kind=str, doc="tasks to trace; the first is the primary task"),
    "n_probe": Param(int, lo=4, hi=1000, doc="traced examples of the primary task (the probe pool)"),
    "n_probe_other": Param(int, lo=2, hi=1000, doc="traced examples of every other task"),
    "norm": Param(str, _norms, doc="readout: the paper's raw logit lens or final RMSNorm on each head's output"),
    "beta": Param(float, lo=0.0, lo_open=True, doc="inverse temperature of Eq. 2"),
    "max_new_tokens": Param(int, lo=1, hi=4096, doc="decoding cap (App. F: 256)"),
    "template": Param(str, _TEMPLATES, doc="chat template for real datasets (App. B.2)"),
    "n_compare": Param(int, lo=0, hi=1000, doc="primary-task examples also traced with the other readout"),
    "n_show": Param(int, lo=1, hi=8, doc="examples shown as heatmaps"),
    "topk": Param(int, lo=2, hi=50, doc="size of the dynamic top-k option set (App. H.5 path 1)"),
}

SCHEMA["02_head_selection"] = {
    **COMMON,
    "model_name": Param(str, _models, doc="model whose traces are read (must match chapter 01's)"),
    "tasks": Param(list, _tasks, item_kind=str, doc="tasks traced by chapter 01; the first is the primary task"),
    "norm": Param(str, _norms, doc="which readout's traces to select from"),
    "n_probe": Param(int, lo=4, hi=1000, doc="probe-set size N (paper: 40)"),
    "probe_sizes": Param(list, lo=1, hi=1000, item_kind=int, doc="N values compared with n_probe (paper: 20, 60)"),
    "M": Param(int, lo=1, hi=100000, doc="head budget (paper: 30); must not exceed L·H"),
    "n_splits": Param(int, lo=1, hi=100000, doc="random split-half partitions (paper: 200)"),
    "n_draws": Param(int, lo=1, hi=10000, doc="random probe draws for the probe-size analysis"),
    "tau_low": Param(float, lo=0.0, hi=1.0, doc="steadfast threshold (App. F: 0.05)"),
    "alpha_low": Param(float, lo=0.0, hi=1.0, doc="steadfast share of steps (App. F: 0.6)"),
    "c_low": Param(int, lo=1, hi=4096, doc="steadfast minimal run length (App. F: 10)"),
    "mu_low": Param(float, lo=0.0, hi=1.0, doc="steadfast mean bound (App. F: 0.25)"),
    "tau_high": Param(float, lo=0.0, hi=1.0, doc="wavering threshold (ours; paper gives none)"),
    "alpha_high": Param(float, lo=0.0, hi=1.0, doc="wavering share of steps (ours)"),
    "c_high": Param(int, lo=1, hi=4096, doc="wavering minimal run length (ours)"),
    "mu_high": Param(float, lo=0.0, hi=1.0, doc="wavering mean bound (ours)"),
}


SCHEMA["04_selective_sft"] = {
    **COMMON,
    "model_name": Param(str, _models, doc="model to fine-tune (must match chapters 01-02's)"),
    "tasks": Param(list, _tasks, item_kind=str, doc="tasks with chapter-02 head sets; the first is the primary task"),
    "n_train": Param(int, lo=1, hi=1000000, doc="SFT items per task"),
    "n_eval": Param(int, lo=1, hi=100000, doc="held-out evaluation items per task"),
    "epochs": Param(float, lo=0.0, lo_open=True, doc="training epochs (App. E: 10); max_steps > 0 overrides"),
    "max_steps": Param(int, lo=0, doc="optimizer steps (0: derive from epochs)"),
    "lr": Param(float, lo=0.0, lo_open=True, hi=1.0, doc="learning rate (App. E: 5e-5)"),
    "grad_accum": Param(int, lo=1, hi=4096, doc="gradient accumulation with batch 1 (App. E: 8)"),
    "max_length": Param(int, lo=16, hi=131072, doc="max tokens, truncated from the left (App. E: 1024)"),
    "train_dtype": Param(str, ("float32", "bfloat16"), doc="weights while training"),
    "n_seeds": Param(int, lo=1, hi=20, doc="training seeds (App. H.2: 3)"),
    "n_draws": Param(int, lo=1, hi=20, doc="random-head draws (App. H.3: 3)"),
    "budgets": Param(list, lo=1, item_kind=int, doc="head budgets for Fig. 4 (paper: 5-50); each must be ≤ L·H"),
    "n_probe": Param(int, lo=2, hi=1000, doc="probe prompts retraced before/after training (Fig. 5)"),
    "n_ppl": Param(int, lo=1, hi=100000, doc="general texts per source for perplexity (Table 2)"),
    "max_new_tokens": Param(int, lo=1, hi=4096, doc="evaluation decoding cap"),
    "template": Param(str, _TEMPLATES, doc="chat template for real datasets (App. B.2)"),
    "lora_r": Param(int, lo=1, hi=1024, doc="LoRA rank (App. E: 8)"),
    "lora_alpha": Param(int, lo=1, hi=4096, doc="LoRA alpha (App. E: 16)"),
    "save_every": Param(int, lo=0, doc="checkpoint every N optimizer steps (0: final state only)"),
}

def validate(chapter: str, namespace: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check the chapter's parameters (read from `namespace`, e.g. `globals()`); return them as a read-only map."""
    if chapter not in SCHEMA:
        raise ParameterError(f"unknown chapter {chapter!r}; valid choices: {sorted(SCHEMA)}")
    schema = SCHEMA[chapter]
    missing = [k for k in schema if k not in namespace]
    if missing:
        raise ParameterError(f"chapter {chapter} is missing parameters {missing}")
    for name, spec in schema.items():
        spec.check(name, namespace[name])
    return MappingProxyType({k: namespace[k] for k in schema})


def check_names(chapter: str, names: list[str] | tuple[str, ...]) -> None:
    """Fail if any override name is not a parameter of `chapter`, naming the valid ones."""
    if chapter not in SCHEMA:
        raise ParameterError(f"unknown chapter {chapter!r}; valid choices: {sorted(SCHEMA)}")
    bad = [n for n in names if n not in SCHEMA[chapter]]
    if bad:
        raise ParameterError(f"unknown parameter(s) {bad} for chapter {chapter}; valid: {sorted(SCHEMA[chapter])}")
