"""Head-set interventions across tasks and think modes: conditions, sampled accuracy, and the trade-off table
(paper 001 §3.1 steps 3-4, §4-6, Tables 2-3, Fig. 5; App. A.3).

**Conditions.** Every head set is zero-ablated (`Ablate`, Tables 2-3), scaled up ×1.3 (§4.2, §5) or down ×0.5
(§5, Table 3) through `support.interventions.intervene`. Controls are random head sets *matched in count*: for each
size that occurs, `n_random_draws` seeded uniform draws from all L·H heads (paper 000 App. H.3's random-head control;
paper 001 compares against base-model and TriviaQA heads instead). Sets of the same size share their random draws.

**Accuracy.** pass@1 as paper 001 reports it: the share of correct samples, `n_samples` per problem at T = 0.6,
top-p = 0.95 (Tables 2-3). Every condition samples the same problems with the same seed (common random numbers), so
the difference to the baseline is paired per problem. A change Δ counts as a gain or a loss only where
|Δ| > z · SE, with SE the standard error of the per-problem differences (z = 2 by default); it is *specific to the
set* where it also falls outside the range of the matched random draws under the same operation.

**Think modes.** The organism's items carry the mode flag at the end of the user turn (`/think`, `/no_think`);
a real model gets its chat template with `enable_thinking` (Qwen3's switch, paper 001 §6); a template without the
switch has one mode, `no_think` (its plain chat template), and `think` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ParameterError
from .heads import Head, as_head, random_heads
from .interventions import Ablate, HeadOp, Scale, correctness, sample_responses

OPS = ("ablate", "scale_up", "scale_down")
MODES = ("think", "no_think")
#: Paper 001's scale factors: ×1.3 up (§4.2, §5), ×0.5 down (§5, Table 3).
FACTORS = {"scale_up": 1.3, "scale_down": 0.5}
OP_LABELS = {"none": "–", "ablate": "ablate (×0)", "scale_up": "scale ×{f:g}", "scale_down": "scale ×{f:g}"}


# ----------------------------------------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Condition:
    """One intervention: an operation on one head set (or nothing: the baseline)."""

    name: str
    head_set: str  # "baseline", a set name, or "random <size>"
    op: str  # "none" or one of OPS
    heads: tuple[Head, ...] = ()
    factor: float = 1.0
    draw: int | None = None  # random draws only

    @property
    def is_random(self) -> bool:
        return self.draw is not None

    def interventions(self) -> list[HeadOp]:
        """The `support.interventions` operations of this condition (none for the baseline)."""
        if not self.heads:
            return []
        return [Ablate(list(self.heads))] if self.op == "ablate" else [Scale(list(self.heads), self.factor)]


def check_ops(ops: Sequence[str], what: str = "ops") -> list[str]:
    """The operations, validated: one ParameterError naming the valid ones."""
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ParameterError(f"{what}={list(ops)!r}; valid choices: a non-empty list of {list(OPS)}")
    return list(ops)


def op_label(op: str, factor: float = 1.0) -> str:
    """'ablate (×0)', 'scale ×1.3', ... for tables and legends."""
    return OP_LABELS[op].format(f=factor)


def conditions(sets: Mapping[str, Sequence[Any]], ops: Sequence[str], n_layers: int, n_heads: int,
               n_random_draws: int = 2, random_ops: Sequence[str] = ("ablate",), seed: int = 0,
               factors: Mapping[str, float] = FACTORS) -> list[Condition]:
    """Baseline, every set under every op, and `n_random_draws` count-matched random sets under `random_ops`."""
    check_ops(ops)
    if random_ops:
        check_ops(random_ops, "random_ops")
    fac = {"ablate": 0.0, **factors}
    out = [Condition("baseline", "baseline", "none")]
    for name, heads in sets.items():
        hs = tuple(sorted({as_head(h) for h in heads}))
        out += [Condition(f"{name} · {op_label(op, fac[op])}", name, op, hs, fac[op]) for op in ops]
    for size in sorted({len(set(map(as_head, h))) for h in sets.values()}):
        for d in range(n_random_draws):
            hs = tuple(random_heads(n_layers, n_heads, size, seed=random_seed(seed, size, d)))
            out += [Condition(f"random {size} #{d} · {op_label(op, fac[op])}", f"random {size}", op, hs, fac[op], d)
                    for op in random_ops]
    return out


def random_seed(seed: int, size: int, draw: int) -> int:
    """Seed of random draw `draw` of `size` heads: distinct per (seed, size, draw), reproducible."""
    return seed * 1_000_000 + size * 1_000 + draw


# ----------------------------------------------------------------------------------------------- prompts
def mode_prompt(item: Any, mode: str, tokenizer: Any = None, template: str = "model") -> str:
    """The prompt of `item` in think mode `mode` ('think' or 'no_think'); see the module docstring."""
    from .prompts import UNIFIED_SYSTEM, format_reasoning_prompt, user_message, wrap

    if mode not in MODES:
        raise ParameterError(f"unknown think mode {mode!r}; valid choices: {list(MODES)}")
    if hasattr(item, "in_mode"):
        return item.in_mode(mode == "think").prompt
    if template != "model" or tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ParameterError("think modes of a real dataset need template='model' and a tokenizer with a chat "
                             "template (e.g. Qwen3's, which takes enable_thinking)")
    switch = "enable_thinking" in str(tokenizer.chat_template)
    if mode == "think" and not switch:
        raise ParameterError("mode 'think' needs a chat template with an enable_thinking switch (Qwen3); this "
                             "model's has none: use modes ['no_think'] (its plain chat template)")
    if getattr(item, "options", None):
        system, user = UNIFIED_SYSTEM, user_message(item.question, item.options)
    else:  # free-form reasoning: reuse the plain layout "system\n\nuser\n\n"
        system, user = format_reasoning_prompt(item, "plain").strip().split("\n\n", 1)
    return wrap(system, user, "model", tokenizer, think=(mode == "think") if switch else None)


# ----------------------------------------------------------------------------------------------- sampling
def generation_model(name: str) -> tuple[Any, Any]:
    """(plain HF model, tokenizer) for sampling: the same weights as `load_model(name)`, without the bridge and with
    PyTorch SDPA attention (measured ~30% faster than eager on the organism). Head interventions hook `o_proj`,
    whatever computes the attention."""
    from .models import load_plain

    return load_plain(name, attn="sdpa")


def sample_grid(model: Any, tokenizer: Any, conds: Sequence[Condition], items: Mapping[tuple[str, str], Sequence],
                n_samples: int, *, seed: int = 0, max_new_tokens: int = 256, batch_size: int = 64,
                temperature: float = 0.6, top_p: float = 0.95, template: str = "model"):
    """Per (condition, task, mode, problem): correct samples `c` of `n`, and mean response length in tokens.

    `items`: {(task, mode): items}. Every cell samples with the same `seed` (paired differences)."""
    import pandas as pd

    rows = []
    for cond in conds:
        for (task, mode), its in items.items():
            prompts = [mode_prompt(it, mode, tokenizer, template) for it in its]
            samples = sample_responses(model, prompts, n_samples, tokenizer=tokenizer,
                                       interventions=cond.interventions(), temperature=temperature, top_p=top_p,
                                       seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size)
            ok = correctness(its, samples)
            for it, c, rs in zip(its, ok, samples):
                rows.append({"condition": cond.name, "head_set": cond.head_set, "op": cond.op, "task": task,
                             "mode": mode, "item": str(it.id), "c": int(c.sum()), "n": len(c),
                             "tokens": float(np.mean([len(tokenizer(r).input_ids) for r in rs]))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- trade-off
def tradeoff(grid: Any, conds: Sequence[Condition], z: float = 2.0):
    """Tables 2-3 in tidy form: per (condition, task, mode) pass@1, Δ against the baseline, the paired SE of Δ,
    the range of Δ over the count-matched random draws (same op), and the verdict (module docstring)."""
    import pandas as pd

    by = {c.name: c for c in conds}
    g = grid.assign(acc=grid.c / grid.n)
    base = g[g.condition == "baseline"].set_index(["task", "mode", "item"]).acc.sort_index()
    rows = []
    for (name, task, mode), df in g.groupby(["condition", "task", "mode"], sort=False):
        d = df.set_index("item").acc - base.loc[(task, mode)].reindex(df.item).to_numpy()
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
        cond = by[name]
        rows.append({"condition": name, "head_set": cond.head_set, "op": cond.op, "heads": len(cond.heads),
                     "random": cond.is_random, "task": task, "mode": mode, "problems": len(df),
                     "samples": int(df.n.sum()), "pass@1": float(df.c.sum() / df.n.sum()), "Δ": float(d.mean()),
                     "SE(Δ)": se, "tokens": float(df.tokens.mean())})
    out = pd.DataFrame(rows)
    out["real"] = (out.condition != "baseline") & (out.Δ.abs() > z * out["SE(Δ)"].fillna(0.0))
    out["verdict"] = np.where(~out.real, "–", np.where(out.Δ > 0, "gain", "loss"))
    lo, hi = [], []
    for _, r in out.iterrows():
        ctrl = out[(out.head_set == f"random {r.heads}") & (out.op == r.op) & (out.task == r.task)
                   & (out["mode"] == r["mode"])]
        lo.append(ctrl.Δ.min() if len(ctrl) and not r.random and r.op != "none" else float("nan"))
        hi.append(ctrl.Δ.max() if len(ctrl) and not r.random and r.op != "none" else float("nan"))
    out["random Δ min"], out["random Δ max"] = lo, hi
    out["beyond random"] = [bool(r.real and (r.Δ < r["random Δ min"] or r.Δ > r["random Δ max"]))
                            if r["random Δ min"] == r["random Δ min"] else None for _, r in out.iterrows()]
    return out


def tradeoff_view(tr: Any):
    """Tables 2-3's layout: conditions as rows, (mode, task) columns, 'pass@1 (Δ)' cells, ▲/▼ on real changes."""
    mark = {"gain": " ▲", "loss": " ▼", "–": ""}
    cells = tr.assign(cell=[f"{r['pass@1']:.2f}" + ("" if r.condition == "baseline" else
                                                     f" ({r.Δ:+.2f}){mark[r.verdict]}") for _, r in tr.iterrows()])
    order = list(dict.fromkeys(tr.condition))
    view = cells.pivot(index="condition", columns=["mode", "task"], values="cell").reindex(order)
    return view.sort_index(axis=1, level=0, sort_remaining=False)


def gains_and_losses(tr: Any):
    """Per condition (random draws aside): the (task, mode) cells that gain and those that lose beyond the noise."""
    import pandas as pd

    rows = []
    for name, df in tr[(tr.condition != "baseline") & ~tr.random].groupby("condition", sort=False):
        cell = (df.task + "/" + df["mode"]).to_numpy()
        spec = df["beyond random"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        side = np.where(df.Δ.to_numpy() < df["random Δ min"].to_numpy(), "below", "above")
        ctrl = tr[(tr.head_set == f"random {df.heads.iloc[0]}") & (tr.op == df.op.iloc[0])]
        rows.append({"condition": name, "gains": ", ".join(cell[(df.verdict == "gain").to_numpy()]) or "none",
                     "losses": ", ".join(cell[(df.verdict == "loss").to_numpy()]) or "none",
                     "beyond its random draws": ", ".join(f"{c} ({s} them)" for c, s in zip(cell[spec], side[spec]))
                     or "none",
                     "mean Δ": round(float(df.Δ.mean()), 3),
                     "mean Δ of its random draws": round(float(ctrl.Δ.mean()), 3) if len(ctrl) else float("nan")})
    return pd.DataFrame(rows)


def coverage_table(correct: Mapping[str, Any], ks: Sequence[int] | None = None):
    """`support.interventions.coverage` (pass@k, success@k per condition and k; paper 001 Fig. 5) with the standard
    error of each over problems."""
    from .interventions import counts, coverage, pass_at_k_per_problem

    cov = coverage(dict(correct), ks)
    se_p, se_s = [], []
    for _, r in cov.iterrows():
        mat = np.asarray(correct[r.condition], dtype=bool)
        n, c = counts(mat)
        p = pass_at_k_per_problem(n, c, int(r.k))
        s = mat[:, :int(r.k)].any(1).astype(float)
        se_p.append(float(p.std(ddof=1) / np.sqrt(len(p))) if len(p) > 1 else float("nan"))
        se_s.append(float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else float("nan"))
    return cov.assign(pass_se=se_p, success_se=se_s)
