"""The cross-method synthesis: how the head sets of papers 000, 001 and 003 relate on one model (none of the three
papers did this).

**Head sets** come from the chapters that select them (`PRODUCERS`): wavering and steadfast heads (paper 000,
chapter 02, per task), EAP-IG circuit, emergent and think-off-only heads (paper 001, chapter 03, on the option-check
pairs), local, global and receiver heads (paper 003, chapter 05). `load_sets` reads them all at once and fails with
one error naming every missing file and the chapter that writes it.

**Overlap.** Jaccard |A∩B|/|A∪B| per pair against the permutation null of `support.interventions.overlap_test`
(random sets of the same sizes, one-sided p with the +1 correction) and Benjamini-Hochberg q over the pairs.

**Entropy taxonomy.** Each head's mean time-averaged entropy m̄ (paper 000 Eq. 17) and its wavering and steadfast
frequencies F (Eq. 16), recomputed from chapter 01's traces of the probe set a wavering head set records, with its
criteria. A head set's *position* is the mean percentile of its heads' m̄ among all L·H heads, against random sets
of the same size (two one-sided permutation p-values: higher, lower); with its overlap with the wavering and the
steadfast set it places the set on one side of the taxonomy (`taxonomy`).

**Circuit change** (for "does SHFT change the circuit less than full SFT?"). EAP-IG graphs of the start model and
of a fine-tuned one on the same pairs: Jaccard of circuit heads and of circuit edges, heads added and removed, and
the Spearman correlation of all edge scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .artifacts import ProvenanceError
from .errors import ParameterError
from .heads import Head, HeadSet, as_head, head_set_path, load_head_set

#: Which chapter writes each kind of head set.
PRODUCERS = {"wavering": "02_head_selection", "steadfast": "02_head_selection", "random": "02_head_selection",
             "circuit": "03_circuits", "emergent": "03_circuits", "base_only": "03_circuits",
             "think_off_only": "03_circuits", "local": "05_attention_credit_rl", "global": "05_attention_credit_rl",
             "receiver": "05_attention_credit_rl"}
#: Chapter 03 builds its circuits on the organism's option-check pairs (`support.contrasts.check_pairs`).
CIRCUIT_TASK = "toy_check"
ENTROPY_KINDS = ("wavering", "steadfast", "random")
RHYTHM_KINDS = ("local", "global", "receiver")


# ----------------------------------------------------------------------------------------------- head sets
def set_task(kind: str, entropy_task: str, rhythm_task: str) -> str:
    """The task folder a head set of `kind` lives in (chapter 02: entropy_task, 05: rhythm_task, 03: toy_check)."""
    if kind not in PRODUCERS:
        raise ParameterError(f"unknown head set {kind!r}; valid choices: {sorted(PRODUCERS)}")
    return entropy_task if kind in ENTROPY_KINDS else rhythm_task if kind in RHYTHM_KINDS else CIRCUIT_TASK


def load_sets(run_dir: Path | str, wanted: Mapping[str, str], expect_model: Mapping | None) -> dict[str, HeadSet]:
    """{kind: task} -> {kind: HeadSet}, all checked against `expect_model` before any is used. One ParameterError
    lists every missing set (with the chapter that writes it) or every set selected on another model."""
    missing, foreign, out = [], [], {}
    for kind, task in wanted.items():
        path = head_set_path(run_dir, kind, task)
        if not path.exists():
            missing.append(f"{path} (run chapter {PRODUCERS[kind]} first, same run_dir)")
            continue
        try:
            out[kind] = load_head_set(path, expect_model)
        except ProvenanceError:
            foreign.append(f"{path} (re-run chapter {PRODUCERS[kind]} with this model_name)")
    parts = ([f"head sets missing: {'; '.join(missing)}"] if missing else []) + \
        ([f"head sets selected on another model: {'; '.join(foreign)}"] if foreign else [])
    if parts:
        raise ParameterError(" | ".join(parts))
    return out


#: Pairs whose overlap is fixed by how the sets are defined: reported, but left out of the multiple-testing family.
STRUCTURAL = {frozenset(("circuit", "emergent")): "emergent ⊆ circuit by definition",
              frozenset(("global", "local")): "disjoint by definition (top and bottom of one ranking)",
              frozenset(("wavering", "steadfast")): "opposite criteria (disjoint in practice)"}


def overlaps(sets: Mapping[str, Sequence[Any]], n_layers: int, n_heads: int, n_draws: int = 10_000, seed: int = 0):
    """`support.interventions.overlap_table` over all pairs, with a `structural` note (`STRUCTURAL`) and the
    Benjamini-Hochberg q recomputed over the other pairs only (NaN for structural ones)."""
    from scipy.stats import false_discovery_control

    from .interventions import overlap_table

    tab = overlap_table(dict(sets), n_layers, n_heads, n_draws, seed)
    tab["structural"] = [STRUCTURAL.get(frozenset((a, b)), "") for a, b in zip(tab.a, tab.b)]
    free = tab.structural == ""
    tab["q_bh"] = np.nan
    if free.any():
        tab.loc[free, "q_bh"] = false_discovery_control(tab.loc[free, "p_value"].to_numpy())
    return tab


def overlap_matrix(table: Any, names: Sequence[str], column: str = "jaccard") -> np.ndarray:
    """Symmetric [n, n] matrix of one `overlap_table` column over `names` (diagonal: 1 for Jaccard, else NaN)."""
    idx = {n: i for i, n in enumerate(names)}
    out = np.full((len(names), len(names)), np.nan)
    if column == "jaccard":
        np.fill_diagonal(out, 1.0)
    for _, r in table.iterrows():
        i, j = idx[r.a], idx[r.b]
        out[i, j] = out[j, i] = float(r[column])
    return out


# ----------------------------------------------------------------------------------------------- entropy taxonomy
def entropy_scores(run_dir: Path | str, selected: HeadSet, expect_model: Mapping | None):
    """Per head: m̄ (nats), its percentile among all heads, F as a wavering and as a steadfast candidate (paper 000
    Eq. 16-17), from chapter 01's traces of the probe set that `selected` (a chapter-02 head set) records."""
    import pandas as pd

    from .selection import Criteria, rank_heads
    from .tracing import load_traces, trace_dir

    prov = selected.provenance
    crit = (prov.get("criteria") or {})
    if not {"wavering", "steadfast"} <= set(crit) or not prov.get("example_ids"):
        raise ParameterError(f"head set {selected.kind!r} records no probe set and criteria; valid choices: a head "
                             f"set written by chapter 02_head_selection")
    norm = (prov.get("params") or {}).get("readout", "raw")
    traces = load_traces(trace_dir(run_dir, prov["dataset"], norm), ids=prov["example_ids"],
                         expect_model=expect_model)
    H = [t.entropy for t in traces]
    fields = ("kind", "tau", "alpha", "c", "mu", "tie_break")
    rk = {k: rank_heads(H, Criteria(**{f: crit[k][f] for f in fields if f in crit[k]}))
          for k in ("wavering", "steadfast")}
    mbar = rk["wavering"].mbar
    L, Hh = mbar.shape
    pct = percentiles(mbar)
    return pd.DataFrame([{"layer": l, "head": h, "name": f"L{l}H{h}", "mbar": float(mbar[l, h]),
                          "mbar percentile": float(pct[l, h]), "F wavering": float(rk["wavering"].F[l, h]),
                          "F steadfast": float(rk["steadfast"].F[l, h])} for l in range(L) for h in range(Hh)])


def percentiles(values: np.ndarray) -> np.ndarray:
    """Each entry's percentile rank in [0, 100] among all entries (average rank for ties; 100 = the highest)."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=float)
    r = rankdata(v.ravel(), method="average")
    return (100.0 * (r - 1) / max(1, v.size - 1)).reshape(v.shape)


def position(heads: Sequence[Any], values: np.ndarray, n_draws: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Mean percentile of `values` [L, H] over `heads`, against the mean over random sets of the same size:
    the null mean and one-sided permutation p-values for 'higher' and 'lower' (+1 correction)."""
    hs = sorted({as_head(h) for h in heads})
    if not hs:
        raise ParameterError("empty head set; valid choices: at least one head")
    pct = percentiles(values).ravel()
    H = values.shape[1]
    obs = float(np.mean([pct[l * H + h] for l, h in hs]))
    rng = np.random.default_rng(seed)
    null = np.array([pct[rng.choice(pct.size, len(hs), replace=False)].mean() for _ in range(n_draws)])
    return {"size": len(hs), "mean percentile": obs, "null mean": float(null.mean()),
            "p higher": float((1 + (null >= obs - 1e-9).sum()) / (1 + n_draws)),
            "p lower": float((1 + (null <= obs + 1e-9).sum()) / (1 + n_draws))}


def taxonomy(named: Mapping[str, Sequence[Any]], scores: Any, wavering: Sequence[Any], steadfast: Sequence[Any],
             n_draws: int = 10_000, seed: int = 0, alpha: float = 0.05):
    """Where each named head set sits in the entropy taxonomy: its m̄ position (`position`), mean wavering and
    steadfast F, and how many of its heads are wavering or steadfast heads (`overlap_test` p). Verdict: on the
    wavering side if its m̄ is higher than random or it shares more wavering heads than random sets do, on the
    steadfast side likewise; each test at α/2 (Bonferroni over the two tests of a side)."""
    import pandas as pd

    from .interventions import overlap_test

    mbar = scores.pivot(index="layer", columns="head", values="mbar").to_numpy()
    L, H = mbar.shape
    f = scores.set_index(["layer", "head"])
    rows = []
    for name, heads in named.items():
        hs = sorted({as_head(h) for h in heads})
        pos = position(hs, mbar, n_draws, seed)
        ov = {k: overlap_test(hs, ref, L, H, n_draws, seed) for k, ref in (("wavering", wavering),
                                                                           ("steadfast", steadfast))}
        wav = min(pos["p higher"], ov["wavering"]["p_value"]) < alpha / 2  # two tests per side: Bonferroni
        std = min(pos["p lower"], ov["steadfast"]["p_value"]) < alpha / 2
        verdict = ("wavering side" if wav and not std else "steadfast side" if std and not wav else
                   "both sides" if wav else "neither side")
        rows.append({"set": name, **pos, "mean F wavering": float(f.loc[hs, "F wavering"].mean()),
                     "mean F steadfast": float(f.loc[hs, "F steadfast"].mean()),
                     **{f"shared with {k}": int(o["shared"]) for k, o in ov.items()},
                     **{f"p overlap {k}": o["p_value"] for k, o in ov.items()}, "verdict": verdict,
                     "heads": ", ".join(f"L{l}H{h}" for l, h in hs)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- circuits
def circuit_change(ref: Any, circ: Any, ref_graph: Any = None, graph: Any = None) -> dict[str, float]:
    """How far a circuit moved from a reference built on the same pairs with the same settings: head and edge
    Jaccard, heads added and removed, and (given both graphs) the Spearman ρ of all edge scores."""
    from scipy.stats import spearmanr

    h0, h1 = set(ref.heads), set(circ.heads)
    e0, e1 = set(ref.edges), set(circ.edges)
    rho = float("nan")
    if ref_graph is not None and graph is not None:
        mask = ref_graph.edge_mask
        rho = float(spearmanr(ref_graph.scores[mask].numpy(), graph.scores[mask].numpy())[0])
    return {"heads": len(h1), "head jaccard": len(h0 & h1) / max(1, len(h0 | h1)), "heads added": len(h1 - h0),
            "heads removed": len(h0 - h1), "edge jaccard": len(e0 & e1) / max(1, len(e0 | e1)),
            "edge-score spearman": rho}


def sft_runs(root: Path | str, regimes: Sequence[str]) -> dict[str, list[Path]]:
    """Chapter 04's finished runs under `root` (`04_sft/<task>`), per regime: `full-s<k>`, and for head regimes
    `<regime>-M<M>-s<k>` at the budget M with the most seeds (chapter 04's main budget). Missing regimes map to []."""
    import re

    out = {}
    for regime in regimes:
        pat = re.compile(rf"^{re.escape(regime)}(?:-M(\d+))?-s(\d+)$")
        runs = [p for p in sorted(Path(root).glob(f"{regime}-*")) if pat.match(p.name)
                and (p / "final.safetensors").exists()]
        by_m: dict[str | None, list[Path]] = {}
        for p in runs:
            by_m.setdefault(pat.match(p.name).group(1), []).append(p)
        out[regime] = max(by_m.values(), key=len) if by_m else []
    return out


def question1_inputs(run_dir: Path | str, sft_task: str, regimes: Sequence[str], expect_model: Mapping | None):
    """(chapter 03's circuit of the start model, `sft_runs` of chapter 04), checked before any heavy work: one
    ParameterError naming what is missing or made with another model, and the chapter to run."""
    import json

    from safetensors import safe_open

    from .artifacts import check_model
    from .circuits import load_circuit

    problems = []
    path = Path(run_dir) / "circuits" / "SFT.json"
    ref = None
    try:
        ref = load_circuit(path, expect_model)
    except FileNotFoundError:
        problems.append(f"{path} missing (run chapter 03_circuits first)")
    except ProvenanceError:
        problems.append(f"{path} made with another model (re-run chapter 03_circuits with this model_name)")
    runs = sft_runs(Path(run_dir) / "04_sft" / sft_task, regimes)
    problems += [f"no finished {r!r} run under {Path(run_dir) / '04_sft' / sft_task} (run chapter 04_selective_sft "
                 f"first)" for r, v in runs.items() if not v]
    for p in (p for v in runs.values() for p in v):
        with safe_open(str(p / "final.safetensors"), framework="pt") as f:
            prov = json.loads((f.metadata() or {}).get("provenance", "{}"))
        try:
            check_model(prov, expect_model or {}, p)
        except ProvenanceError:
            problems.append(f"{p} trained another model (re-run chapter 04_selective_sft with this model_name)")
    if problems:
        raise ParameterError("inputs of question 1: " + "; ".join(problems))
    return ref, runs


def new_heads(post: Sequence[Head], pre: Sequence[Head]) -> list[Head]:
    """Heads in the `post` circuit and not in the `pre` one (paper 001's emergent heads, against `pre`)."""
    return sorted(set(map(as_head, post)) - set(map(as_head, pre)))
