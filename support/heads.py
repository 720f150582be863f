"""Attention heads and head sets: one naming scheme, budgets, random draws, and head sets as files (numpy only).

A head is a `(layer, head)` pair of 0-based indices over *query* heads. Three spellings name the same head:

- ``(3, 5)``: the tuple every function takes and returns;
- ``"L3H5"``: what tables and figures print;
- ``"a3.h5"``: EAP-IG's node name (Hanna et al.; paper 001's circuits).

`HeadSet` is what selection (chapter 02), circuits (03) and the rhythm metrics (05) write, and what fine-tuning (04)
and interventions (06) read, always with the provenance of the run that made it. Importing this module never loads
torch.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .artifacts import read_json, write_json
from .errors import ParameterError

Head = tuple[int, int]
_NAME_RE = re.compile(r"^(?:L(\d+)H(\d+)|a(\d+)\.h(\d+))$")


# ----------------------------------------------------------------------------------------------- names
def head_name(head: Any) -> str:
    """`(3, 5)` (or any spelling `as_head` accepts) -> "L3H5"."""
    layer, h = as_head(head)
    return f"L{layer}H{h}"


def eap_name(head: Any) -> str:
    """`(3, 5)` -> "a3.h5", EAP-IG's node name for the head."""
    layer, h = as_head(head)
    return f"a{layer}.h{h}"


def as_head(head: Any) -> Head:
    """Any spelling of one head -> `(layer, head)`: a pair, a {"layer", "head"} map, "L3H5" or "a3.h5"."""
    if isinstance(head, str):
        m = _NAME_RE.match(head.strip())
        if not m:
            raise ValueError(f"unknown head name {head!r}; valid spellings: 'L3H5', 'a3.h5', (3, 5)")
        a, b, c, d = m.groups()
        return (int(a), int(b)) if a is not None else (int(c), int(d))
    if isinstance(head, Mapping):
        return int(head["layer"]), int(head["head"])
    layer, h = head
    return int(layer), int(h)


def check_heads(heads: Iterable[Any], n_layers: int, n_heads: int) -> list[Head]:
    """Sorted unique heads; one ValueError naming the valid ranges for an empty set or an out-of-range index."""
    out = sorted({as_head(h) for h in heads})
    if not out:
        raise ValueError(f"empty head set; valid choices: 1 to {n_layers * n_heads} heads (layer, head) with "
                         f"layer in [0, {n_layers - 1}] and head in [0, {n_heads - 1}]")
    bad = [(l, h) for l, h in out if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(f"head index out of range: {bad}; valid choices: layer in [0, {n_layers - 1}], "
                         f"head in [0, {n_heads - 1}]")
    return out


# ----------------------------------------------------------------------------------------------- budgets
def check_budget(m: int, n_layers: int, n_heads: int, name: str = "M") -> int:
    """A head budget must fit the model: an integer with 1 ≤ M ≤ L·H (paper 000: M = 30). Returns it as int."""
    total = n_layers * n_heads
    if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= int(m) <= total:
        raise ParameterError(
            f"head budget {name}={m!r} is out of range for this model ({n_layers} layers × {n_heads} heads); "
            f"valid choices: an integer in [1, {total}]")
    return int(m)


def random_heads(n_layers: int, n_heads: int, M: int = 30, seed: int = 0) -> list[Head]:
    """A seeded uniformly random head set of size M (the Random-head baseline of paper 000, Table 1)."""
    check_budget(M, n_layers, n_heads)
    rng = np.random.default_rng(seed)
    pick = rng.choice(n_layers * n_heads, size=M, replace=False)
    return sorted((int(i // n_heads), int(i % n_heads)) for i in pick)


def by_layer(heads: Iterable[Any]) -> dict[int, list[int]]:
    """{layer: sorted head indices}, layers ascending."""
    out: dict[int, list[int]] = {}
    for layer, h in (as_head(x) for x in heads):
        out.setdefault(layer, []).append(h)
    return {k: sorted(v) for k, v in sorted(out.items())}


# ----------------------------------------------------------------------------------------------- head sets
@dataclass
class HeadSet:
    """A named head set (wavering, steadfast, random, circuit, global, ...) with the scores that chose it."""

    kind: str
    heads: list[Head]
    n_layers: int
    n_heads: int
    F: list[float] = field(default_factory=list)  # per selected head, where the method scores heads
    mbar: list[float] = field(default_factory=list)
    criteria: dict | None = None
    seed: int | None = None
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.heads)

    def by_layer(self) -> dict[int, list[int]]:
        """{layer: [heads]} for the intervention code."""
        return by_layer(self.heads)

    @property
    def names(self) -> list[str]:
        """The heads as "L3H5" strings."""
        return [head_name(h) for h in self.heads]


def head_set_path(run_dir: Path | str, kind: str, task: str | None = None) -> Path:
    """Where a head set lives in the run directory: `head_sets/[<task>/]<kind>.json`."""
    base = Path(run_dir) / "head_sets"
    return (base / task if task else base) / f"{kind}.json"


def write_head_set(path: Path | str, hs: HeadSet, prov: Mapping) -> Path:
    """Write a head set as JSON with its provenance (model identity, dataset, probe IDs, parameters, version)."""
    payload = {k: v for k, v in asdict(hs).items() if k != "provenance"}
    payload["heads"] = [list(h) for h in hs.heads]
    return write_json(path, payload, prov)


def load_head_set(path: Path | str, expect_model: Mapping | None) -> HeadSet:
    """Read a head set; raises ProvenanceError if it was selected on another model (or tokenizer) than
    `expect_model` (a `LoadedModel.identity()`). Pass None only to inspect a file deliberately."""
    body = read_json(path, expect_model=expect_model)
    prov = body.pop("provenance", {})
    heads = [(int(a), int(b)) for a, b in body.pop("heads")]
    return HeadSet(heads=heads, provenance=prov, **{k: body[k] for k in body if k in HeadSet.__dataclass_fields__})
