"""Chapter parameters: one schema, checked once at the top of every chapter before any model loads.

Each chapter's parameter names come from its notebook's `parameters` cell; their types, ranges and choices live in
`schema.yaml` beside this file (loaded into `SCHEMA`). `validate(chapter, namespace)` fails at once with one clear
error naming the valid choices or range. Cross-parameter rules (e.g. a head budget larger than the model's L·H) are
checked where the model is known (`support.heads.check_budget`).
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
    empty_ok: bool = False  # a list that may be empty (an optional ablation)

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
            if not value and not self.empty_ok:
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


SCHEMA_FILE = Path(__file__).with_name("schema.yaml")
_KINDS = {"str": str, "int": int, "float": float, "list": list, "bool": bool}
_DYNAMIC = {"models": _models, "tasks": _tasks, "norms": _norms, "profiles": _profiles, "templates": _TEMPLATES}


def _param(spec: Mapping[str, Any]) -> Param:
    """One schema.yaml entry -> Param (a named `choices` list is resolved lazily, when a value is checked)."""
    ch = spec.get("choices")
    return Param(kind=_KINDS[spec["type"]], choices=_DYNAMIC[ch] if isinstance(ch, str) else
                 (tuple(ch) if ch is not None else None), lo=spec.get("lo"), hi=spec.get("hi"),
                 lo_open=bool(spec.get("lo_open", False)), doc=spec.get("doc", ""),
                 item_kind=_KINDS[spec["items"]] if "items" in spec else None,
                 empty_ok=bool(spec.get("empty_ok", False)))


def _load_schema() -> tuple[dict[str, Param], dict[str, dict[str, Param]]]:
    import yaml

    raw = yaml.safe_load(SCHEMA_FILE.read_text())
    common = {k: _param(v) for k, v in raw.pop("common").items()}
    return common, {ch: {**common, **{k: _param(v) for k, v in spec.items()}} for ch, spec in raw.items()}


COMMON, SCHEMA = _load_schema()


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
