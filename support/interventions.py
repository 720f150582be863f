"""Head interventions, pass@k / success@k, and head-set overlap statistics (paper 001 §3.1, §4-6, App. A.3; paper 000
App. H.1-H.3).

**Where an intervention acts.** On each selected head's output *before* W_O, the per-head vector z[l, h] that the
output projection mixes into the residual stream (paper 001 §3.1 step 3: "disable the emergent heads by zeroing out
their outputs"; step 4: "scale up/down activations of each reasoning head"). The hook site depends on the model:

- a bridged model (a `LoadedModel`, its `hf_model`, or the `TransformerBridge` itself): the bridge's
  ``blocks.L.attn.hook_z`` HookPoint (an alias of ``blocks.L.attn.o.hook_in``). The bridge wraps the HF modules in
  place, so the same HookPoint fires on every path: bridge forward and `run_with_cache` (where the bridge computes
  per-head results from z), and HF-module calls such as `support.decoding.greedy_decode` (KV cache, per-head results
  off) and `support.decoding.generate` (HF `generate` on `lm.hf_model`). The hook sees z flat, [B, T, H·d_head].
- a plain HF model (or a peft wrapper of one): a forward pre-hook on ``layers.L.self_attn.o_proj``, whose input is the
  same pre-W_O tensor [B, T, H·d_head] (head-major: head h owns columns h·d_head … (h+1)·d_head − 1).

Either way each layer gets one plain torch hook (invisible to TransformerLens' `reset_hooks`, so `run_with_cache`
inside the context keeps the intervention and caches the intervened z). Heads are query heads (GQA included).

**Operations** (each on any head set: a `HeadSet`, a list of `(layer, head)` or any spelling `support.heads.as_head`
takes): `Ablate` (zero-ablation, paper 001 §3.1 step 3, Tables 2-3), `Scale(heads, factor)` (×1.3 up, ×0.5 down,
§4.2-4.3 and §5), `MeanAblate` (replace z by its mean over a reference set). Every operation is affine per head,
z ↦ a·z + b, so a list composes exactly in order: `intervene(lm, [Scale(h, 2), MeanAblate(h, …)])` gives the mean,
the reverse order twice the mean. Zero-ablated heads are set to b exactly (also for non-finite z).

**Mean ablation.** `head_means` runs the reference prompts (one forward pass per batch, right padding) and averages
z[l, h] over every non-padding token of every prompt (each token weighs the same): one position-agnostic d_head vector
per head. The means are those of the model as it runs when they are computed (normally: outside any intervention).

**Sampling metrics** (paper 001 App. A.3). pass@k = mean over problems of 1 − C(n−c, k)/C(n, k) (Chen et al. 2021's
unbiased estimator, computed as the product 1 − Π_{i=n−c+1}^{n} (1 − k/i), stable for large n); success@k = mean
over problems of 1{one of the first k samples, in generation order, is correct} (Eq. 8). Samples come from
`support.decoding.generate` with `Sampling(do_sample=True, temperature=0.6, top_p=0.95)` (the paper's setting).

**Overlap** (paper 000 App. H.1, Table 3; paper 001 §5). Jaccard |A∩B|/|A∪B| between head sets, against a seeded
permutation null: random sets of the same sizes drawn uniformly from all L·H heads. The one-sided p-value (overlap at
least as large as observed) carries the +1 correction, (1 + #{null ≥ observed})/(1 + n_draws); the exact
hypergeometric tail (|A∩B| of random sets is hypergeometric) and the analytical null mean are reported next to it.
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .decoding import Sampling, generate
from .errors import ParameterError
from .heads import Head, HeadSet, as_head, head_name

HeadsLike = Any  # a HeadSet, an iterable of head spellings, or one spelling ("L3H5", (3, 5))
_O_PROJ = re.compile(r"(?:^|\.)layers\.(\d+)(?:\._original_component)?\.self_attn(?:\._original_component)?"
                     r"\.o_proj$")


# ----------------------------------------------------------------------------------------------- head sets
def _heads(heads: HeadsLike) -> tuple[tuple[Head, ...], tuple[int, int] | None]:
    """Sorted unique heads of any head-set spelling, plus (n_layers, n_heads) when a HeadSet says so."""
    shape = None
    if isinstance(heads, HeadSet):
        heads, shape = heads.heads, (int(heads.n_layers), int(heads.n_heads))
    if isinstance(heads, (str, Mapping)) or (isinstance(heads, tuple) and len(heads) == 2
                                            and all(isinstance(x, numbers.Integral) for x in heads)):
        heads = [heads]
    try:
        out = tuple(sorted({as_head(h) for h in heads}))
    except (ValueError, TypeError, KeyError) as e:
        raise ParameterError(f"not a head set ({e}); valid choices: a HeadSet or heads spelled (3, 5), 'L3H5' or "
                             f"'a3.h5'") from None
    if not out:
        raise ParameterError("empty head set; valid choices: at least one head (layer, head)")
    return out, shape


def _check_range(heads: Iterable[Head], n_layers: int, n_heads: int, what: str = "head") -> None:
    bad = [head_name(h) if min(h) >= 0 else str(h) for h in heads
           if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ParameterError(f"unknown {what} index {bad}; valid choices: layer in [0, {n_layers - 1}], head in "
                             f"[0, {n_heads - 1}] ({n_layers} layers × {n_heads} heads)")


# ----------------------------------------------------------------------------------------------- operations
@dataclass
class HeadOp:
    """An affine map z ↦ a·z + b on the pre-W_O output of each head in `heads` (subclasses set a and b)."""

    heads: HeadsLike
    shape: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.heads, self.shape = _heads(self.heads)

    def affine(self, head: Head, a: float, b: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The map after this operation, given the map (a, b) composed so far for `head`."""
        raise NotImplementedError

    def check(self, n_layers: int, n_heads: int, d_head: int) -> None:
        """ParameterError unless every head exists in a model of this shape."""
        if self.shape is not None and self.shape != (n_layers, n_heads):
            raise ParameterError(f"{type(self).__name__}: the head set was selected on a model with "
                                 f"{self.shape[0]} layers × {self.shape[1]} heads; this model has {n_layers} × "
                                 f"{n_heads}; valid choices: a head set of this model")
        _check_range(self.heads, n_layers, n_heads)


@dataclass
class Ablate(HeadOp):
    """Zero-ablation: z[l, h] = 0 (paper 001 §3.1 step 3, Tables 2-3)."""

    def affine(self, head: Head, a: float, b: torch.Tensor) -> tuple[float, torch.Tensor]:
        return 0.0, torch.zeros_like(b)


@dataclass
class Scale(HeadOp):
    """z[l, h] ← factor · z[l, h] (paper 001 §3.1 step 4: ×1.3 up, ×0.5 down)."""

    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        f = self.factor
        if isinstance(f, bool) or not isinstance(f, numbers.Real) or not math.isfinite(float(f)):
            raise ParameterError(f"scale factor {f!r} is not a finite real number; valid choices: any finite real, "
                                 f"e.g. 1.3 (paper 001 scale-up) or 0.5 (scale-down)")
        self.factor = float(f)

    def affine(self, head: Head, a: float, b: torch.Tensor) -> tuple[float, torch.Tensor]:
        return a * self.factor, b * self.factor


@dataclass
class MeanAblate(HeadOp):
    """z[l, h] ← μ[l, h], its mean over a reference set (`head_means`; build both at once with `MeanAblate.fit`)."""

    means: Mapping[Any, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        given = {}
        for k, v in dict(self.means).items():
            try:
                given[as_head(k)] = torch.as_tensor(v, dtype=torch.float32).detach().cpu()
            except (ValueError, TypeError, KeyError):
                raise ParameterError(f"mean for {k!r}: not a head spelling; valid choices: (3, 5), 'L3H5'") from None
        missing = [head_name(h) for h in self.heads if h not in given]
        if missing:
            raise ParameterError(f"no reference mean for heads {missing}; valid choices: means for every ablated "
                                 f"head, e.g. from head_means(model, reference, heads)")
        self.means = {h: given[h] for h in self.heads}

    @classmethod
    def fit(cls, model: Any, heads: HeadsLike, reference: Sequence[Any], **kwargs: Any) -> "MeanAblate":
        """Mean-ablate `heads` with means over `reference` prompts (`head_means(model, reference, heads, **kwargs)`)."""
        return cls(heads, means=head_means(model, reference, heads, **kwargs))

    def check(self, n_layers: int, n_heads: int, d_head: int) -> None:
        super().check(n_layers, n_heads, d_head)
        bad = {head_name(h): tuple(m.shape) for h, m in self.means.items() if tuple(m.shape) != (d_head,)}
        if bad:
            raise ParameterError(f"reference means of the wrong shape {bad}; valid choices: one vector of d_head = "
                                 f"{d_head} values per head")

    def affine(self, head: Head, a: float, b: torch.Tensor) -> tuple[float, torch.Tensor]:
        return 0.0, self.means[head].to(b.dtype).clone()


# ----------------------------------------------------------------------------------------------- hook sites
@dataclass(frozen=True)
class Sites:
    """Where a model's head outputs can be hooked: one module per layer, the kind of hook, and the head shape."""

    modules: tuple[torch.nn.Module, ...]
    kind: str  # "hook_z": the bridge's blocks.L.attn.hook_z HookPoint (forward hook); "o_proj": pre-hook on o_proj
    n_heads: int
    d_head: int

    @property
    def n_layers(self) -> int:
        return len(self.modules)


def _hf(model: Any) -> torch.nn.Module:
    """The HF module tree that runs: a LoadedModel's hf_model, a bridge's original model, or the model itself."""
    if hasattr(model, "hf_model") and hasattr(model, "bridge"):
        return model.hf_model
    if hasattr(model, "original_model") and hasattr(model, "cfg"):
        return model.original_model
    if not isinstance(model, torch.nn.Module):
        raise ParameterError(f"cannot intervene on a {type(model).__name__}; valid choices: a LoadedModel, a "
                             f"TransformerBridge, or an HF causal LM (Qwen2/Qwen3/Llama naming)")
    return model


def _in_features(mod: torch.nn.Module) -> int:
    for m in (mod, getattr(mod, "original_component", None), getattr(mod, "base_layer", None)):
        if m is not None and isinstance(getattr(m, "in_features", None), int):
            return int(m.in_features)
    raise ParameterError(f"cannot read the input width of {type(mod).__name__}; valid choices: an HF model whose "
                         f"attention has an o_proj linear layer")


def hook_sites(model: Any) -> Sites:
    """The per-layer module that sees each head's pre-W_O output (see the module docstring), for any model form."""
    hf = _hf(model)
    found = {int(m.group(1)): mod for name, mod in hf.named_modules() if (m := _O_PROJ.search(name))}
    if not found or sorted(found) != list(range(len(found))):
        raise ParameterError(f"no `layers.<i>.self_attn.o_proj` modules in {type(hf).__name__}; valid choices: a "
                             f"Qwen2/Qwen3/Llama-style HF model, bridged or plain")
    cfg = getattr(hf, "config", None) or getattr(getattr(hf, "get_base_model", lambda: None)(), "config", None)
    n_heads = int(getattr(cfg, "num_attention_heads"))
    d_head = _in_features(found[0]) // n_heads
    mods = [found[i] for i in range(len(found))]
    hooks = [getattr(m, "hook_in", None) for m in mods]
    if all(isinstance(h, torch.nn.Module) for h in hooks):
        return Sites(tuple(hooks), "hook_z", n_heads, d_head)
    return Sites(tuple(mods), "o_proj", n_heads, d_head)


def _plan(ops: Sequence[HeadOp], sites: Sites) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """{layer: (a [H], b [H, d_head], zero [H])}: the ops composed in order, per head of each touched layer."""
    H, d = sites.n_heads, sites.d_head
    plan: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for op in ops:
        for layer, h in op.heads:
            a, b, _ = plan.setdefault(layer, (torch.ones(H), torch.zeros(H, d), torch.zeros(H, dtype=torch.bool)))
            ah, bh = op.affine((layer, h), float(a[h]), b[h].clone())
            a[h], b[h] = ah, bh
    for a, b, zero in plan.values():
        zero[:] = a == 0
    return plan


def _transform(a: torch.Tensor, b: torch.Tensor, zero: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """z ↦ a·z + b per head on a flat [..., H·d] (or [..., H, d]) tensor; heads with a = 0 become b exactly."""
    H, d = b.shape
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def f(x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = (a.to(x.device, x.dtype)[:, None], b.to(x.device, x.dtype), zero.to(x.device)[:, None])
        aa, bb, zz = cache[key]
        flat = x.shape[-1] == H * d
        if not flat and tuple(x.shape[-2:]) != (H, d):
            raise RuntimeError(f"head output of shape {tuple(x.shape)} is neither [..., {H * d}] nor [..., {H}, {d}]")
        z = x.unflatten(-1, (H, d)) if flat else x
        y = torch.where(zz, bb.expand_as(z), torch.addcmul(bb, z, aa))
        return y.flatten(-2) if flat else y

    return f


def _ops(interventions: HeadOp | Sequence[HeadOp]) -> list[HeadOp]:
    ops = [interventions] if isinstance(interventions, HeadOp) else list(interventions)
    bad = [type(o).__name__ for o in ops if not isinstance(o, HeadOp)]
    if bad:
        raise ParameterError(f"not an intervention: {bad}; valid choices: Ablate, MeanAblate, Scale (or a list)")
    return ops


@contextmanager
def intervene(model: Any, interventions: HeadOp | Sequence[HeadOp]) -> Iterator[Sites]:
    """Apply head interventions, in order, while the context is open (paper 001 §3.1 steps 3-4).

    `model`: a LoadedModel, a TransformerBridge or a plain HF causal LM. Inside the context every forward pass of
    that model (bridge forward, `run_with_cache`, `support.decoding` generation) runs intervened; on exit, also on an
    exception, every hook is removed. Heads are checked against the model before any hook is added. Yields the
    `Sites` used (``sites.kind`` says "hook_z" or "o_proj")."""
    ops = _ops(interventions)
    sites = hook_sites(model)
    for op in ops:
        op.check(sites.n_layers, sites.n_heads, sites.d_head)
    plan = _plan(ops, sites)
    handles = []
    try:
        for layer, (a, b, zero) in sorted(plan.items()):
            f = _transform(a, b, zero)
            mod = sites.modules[layer]
            if sites.kind == "hook_z":
                handles.append(mod.register_forward_hook(lambda _m, _i, out, f=f: f(out)))
            else:
                handles.append(mod.register_forward_pre_hook(lambda _m, args, f=f: (f(args[0]), *args[1:])))
        yield sites
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------------- reference means
def _tokenizer(model: Any, tokenizer: Any) -> Any:
    tok = tokenizer or getattr(model, "tokenizer", None)
    if tok is None:
        raise ParameterError("text prompts need a tokenizer; valid choices: pass tokenizer=..., a LoadedModel, or "
                             "token-id sequences")
    return tok


def _batch(model: Any, prompts: Sequence[Any], tokenizer: Any, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-padded (input_ids, attention_mask) of text prompts or token-id sequences."""
    if all(isinstance(p, str) for p in prompts):
        enc = _tokenizer(model, tokenizer)(list(prompts), return_tensors="pt", padding=True, padding_side="right")
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)
    rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ParameterError("empty reference prompt; valid choices: non-empty prompts")
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def head_means(model: Any, reference: Sequence[Any], heads: HeadsLike | None = None, *, tokenizer: Any = None,
               batch_size: int = 8) -> dict[Head, torch.Tensor]:
    """{head: mean pre-W_O output [d_head] over every non-padding token of the `reference` prompts} (float32, CPU).

    `reference`: text prompts (tokenized by `tokenizer` or the LoadedModel's) or token-id sequences; `heads`: all heads
    when None. One forward pass per batch of `batch_size` prompts, right padding with an attention mask."""
    if isinstance(reference, str) or len(reference) == 0:
        raise ParameterError(f"empty reference set ({reference!r}); valid choices: a non-empty list of prompts or "
                             f"token-id sequences")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be a positive integer, got {batch_size!r}")
    sites = hook_sites(model)
    L, H, d = sites.n_layers, sites.n_heads, sites.d_head
    want = [(l, h) for l in range(L) for h in range(H)] if heads is None else list(_heads(heads)[0])
    _check_range(want, L, H)
    layers = sorted({l for l, _ in want})
    hf = _hf(model)
    dev = next(hf.parameters()).device
    sums = {l: torch.zeros(H, d, dtype=torch.float64) for l in layers}
    count = 0
    mask_now: list[torch.Tensor] = []

    def grab(layer: int) -> Callable[[torch.Tensor], None]:
        def f(x: torch.Tensor) -> None:
            z = x.detach().double().unflatten(-1, (H, d)) if x.shape[-1] == H * d else x.detach().double()
            sums[layer] += (z * mask_now[0][..., None, None]).sum((0, 1)).cpu()
        return f

    handles = []
    try:
        for l in layers:
            f = grab(l)
            mod = sites.modules[l]
            handles.append(mod.register_forward_hook(lambda _m, _i, out, f=f: f(out)) if sites.kind == "hook_z"
                           else mod.register_forward_pre_hook(lambda _m, args, f=f: f(args[0])))
        for i in range(0, len(reference), batch_size):
            ids, mask = _batch(model, reference[i:i + batch_size], tokenizer, dev)
            mask_now[:] = [mask.double()]
            hf(input_ids=ids, attention_mask=mask, use_cache=False)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {(l, h): (sums[l][h] / count).float() for l, h in want}


# ----------------------------------------------------------------------------------------------- pass@k, success@k
def _int(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (numbers.Integral, np.integer))


def _counts(n: int | Sequence[int], c: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Validated per-problem (n, c) integer arrays."""
    cs = list(c) if isinstance(c, (Sequence, np.ndarray)) and not isinstance(c, str) else None
    if not cs or not all(_int(x) for x in cs):
        raise ParameterError(f"malformed correct counts {c!r}; valid choices: a non-empty list of integers c_i, one "
                             f"per problem, with 0 <= c_i <= n_i")
    ns = [n] * len(cs) if _int(n) else (list(n) if isinstance(n, (Sequence, np.ndarray)) else None)
    if ns is None or len(ns) != len(cs) or not all(_int(x) and x >= 1 for x in ns):
        raise ParameterError(f"malformed sample counts n={n!r}; valid choices: a positive integer or one positive "
                             f"integer per problem ({len(cs)} problems)")
    bad = [(i, ci, ni) for i, (ci, ni) in enumerate(zip(cs, ns)) if not 0 <= ci <= ni]
    if bad:
        raise ParameterError(f"correct counts outside [0, n] for (problem, c, n) {bad[:5]}; valid choices: "
                             f"0 <= c_i <= n_i")
    return np.asarray(ns, dtype=np.int64), np.asarray(cs, dtype=np.int64)


def _check_k(k: Any, n_min: int, what: str = "k") -> int:
    if not _int(k) or not 1 <= k <= n_min:
        raise ParameterError(f"{what}={k!r} is out of range; valid choices: an integer in [1, {n_min}] (k <= n, the "
                             f"fewest samples of any problem)")
    return int(k)


def pass_at_k_per_problem(n: int | Sequence[int], c: Sequence[int], k: int) -> np.ndarray:
    """1 − C(n−c, k)/C(n, k) per problem (Chen et al. 2021), as 1 − Π_{i=n−c+1}^{n} (1 − k/i): no huge binomials."""
    ns, cs = _counts(n, c)
    k = _check_k(k, int(ns.min()))
    out = np.ones(len(ns))
    for j, (ni, ci) in enumerate(zip(ns, cs)):
        if ni - ci >= k:
            out[j] = 1.0 - float(np.prod(1.0 - k / np.arange(ni - ci + 1, ni + 1, dtype=float)))
    return out


def pass_at_k(n: int | Sequence[int], c: Sequence[int], k: int) -> float:
    """pass@k averaged over problems (paper 001 App. A.3, Eq. 7): `c[i]` correct among `n` (or `n[i]`) samples."""
    return float(pass_at_k_per_problem(n, c, k).mean())


def _matrix(correct: Any) -> list[np.ndarray]:
    """Per-problem 0/1 vectors (rows may differ in length) from a [P, n] array or a list of sequences."""
    try:
        rows = [np.asarray(r) for r in correct]
    except TypeError:
        rows = []
    ok = rows and all(r.ndim == 1 and len(r) >= 1 and np.isin(r, (0, 1)).all() for r in rows)
    if not ok:
        raise ParameterError("malformed correctness: valid choices: one non-empty sequence of 0/1 (or bool) per "
                             "problem, in sample order, e.g. a [problems, n] boolean array")
    return [r.astype(bool) for r in rows]


def counts(correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n, c) per problem from a correctness matrix (rows in sample order)."""
    rows = _matrix(correct)
    return np.array([len(r) for r in rows]), np.array([int(r.sum()) for r in rows])


def success_at_k(correct: Any, k: int) -> float:
    """success@k (paper 001 App. A.3, Eq. 8): mean over problems of 1{one of the first k samples is correct}."""
    rows = _matrix(correct)
    k = _check_k(k, min(len(r) for r in rows))
    return float(np.mean([r[:k].any() for r in rows]))


def coverage(correct: Any | Mapping[str, Any], ks: Sequence[int] | None = None):
    """Tidy pandas table (condition, k, pass_at_k, success_at_k) of pass@k and success@k curves (paper 001 Fig. 5).

    `correct`: one correctness matrix, or {condition name: matrix}; `ks`: 1, 2, 4, … up to n by default."""
    import pandas as pd

    named = dict(correct) if isinstance(correct, Mapping) else {"model": correct}
    rows = []
    for name, mat in named.items():
        n, c = counts(mat)
        for k in ks if ks is not None else sorted({2 ** i for i in range(int(math.log2(n.min())) + 1)} | {n.min()}):
            rows.append({"condition": name, "k": int(k), "pass_at_k": pass_at_k(n, c, k),
                         "success_at_k": success_at_k(mat, k)})
    return pd.DataFrame(rows)


def sample_responses(model: Any, prompts: Sequence[str], n: int, *, tokenizer: Any = None,
                     interventions: HeadOp | Sequence[HeadOp] = (), temperature: float = 0.6, top_p: float = 0.95,
                     seed: int = 0, max_new_tokens: int = 256, batch_size: int = 16) -> list[list[str]]:
    """n sampled responses per prompt ([prompt][sample], in generation order) through `support.decoding.generate`
    (KV cache, left padding) under `interventions`; T = 0.6, top-p = 0.95 by default (paper 001, Tables 2-3)."""
    if not _int(n) or n < 1:
        raise ParameterError(f"n={n!r} samples per prompt; valid choices: a positive integer")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature > 0):
        raise ParameterError(f"temperature={temperature!r}; valid choices: a finite number > 0 (paper: 0.6)")
    if not (isinstance(top_p, numbers.Real) and 0 < top_p <= 1):
        raise ParameterError(f"top_p={top_p!r}; valid choices: a number in (0, 1] (paper: 0.95)")
    if isinstance(prompts, str) or not prompts:
        raise ParameterError("no prompts; valid choices: a non-empty list of formatted prompts")
    hf, tok = _hf(model), _tokenizer(model, tokenizer)
    sampling = Sampling(do_sample=True, temperature=float(temperature), top_p=float(top_p), seed=seed)
    with intervene(model, interventions):
        flat = generate(hf, tok, [p for p in prompts for _ in range(n)], max_new_tokens, batch_size,
                        sampling=sampling)
    return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]


def correctness(items: Sequence[Any], samples: Sequence[Sequence[str]],
                scorer: Callable[[Any, str], Any] | None = None) -> np.ndarray:
    """[problems, n] booleans: is each sample correct (`support.scoring.score(item, response)` by default)."""
    from .scoring import score

    if len(items) != len(samples):
        raise ParameterError(f"{len(items)} items but {len(samples)} sample lists; valid choices: one list per item")
    scorer = scorer or score
    return np.array([[bool(scorer(it, r)) for r in rs] for it, rs in zip(items, samples)], dtype=bool)


# ----------------------------------------------------------------------------------------------- overlap
def jaccard(a: HeadsLike, b: HeadsLike) -> float:
    """|A ∩ B| / |A ∪ B| of two head sets."""
    sa, sb = set(_heads(a)[0]), set(_heads(b)[0])
    return len(sa & sb) / len(sa | sb)


def _check_sizes(size_a: int, size_b: int, n_total: int) -> None:
    if not (_int(n_total) and n_total >= 1):
        raise ParameterError(f"n_total={n_total!r}; valid choices: the model's number of heads L·H (>= 1)")
    for s in (size_a, size_b):
        if not (_int(s) and 1 <= s <= n_total):
            raise ParameterError(f"head-set size {s!r}; valid choices: an integer in [1, {n_total}]")


def expected_jaccard(size_a: int, size_b: int, n_total: int) -> float:
    """E[J] for uniformly random sets of sizes a, b among N heads: Σ_x P(X = x)·x/(a + b − x), with the overlap
    X ~ Hypergeom(N, a, b)."""
    from scipy.stats import hypergeom

    _check_sizes(size_a, size_b, n_total)
    x = np.arange(max(0, size_a + size_b - n_total), min(size_a, size_b) + 1)
    return float((hypergeom.pmf(x, n_total, size_a, size_b) * x / (size_a + size_b - x)).sum())


def overlap_null(size_a: int, size_b: int, n_total: int, n_draws: int = 10_000, seed: int = 0) -> np.ndarray:
    """Jaccard of `n_draws` pairs of random sets of sizes a and b, each drawn uniformly from n_total heads (seeded)."""
    _check_sizes(size_a, size_b, n_total)
    if not (_int(n_draws) and n_draws >= 1):
        raise ParameterError(f"n_draws={n_draws!r}; valid choices: a positive integer (e.g. 10000)")
    rng = np.random.default_rng(seed)
    shared = np.empty(n_draws, dtype=np.int64)
    for i in range(0, n_draws, 1024):
        m = min(1024, n_draws - i)
        in_a = np.zeros((m, n_total), dtype=bool)
        in_b = np.zeros((m, n_total), dtype=bool)
        np.put_along_axis(in_a, rng.random((m, n_total)).argsort(1)[:, :size_a], True, 1)
        np.put_along_axis(in_b, rng.random((m, n_total)).argsort(1)[:, :size_b], True, 1)
        shared[i:i + m] = (in_a & in_b).sum(1)
    return shared / (size_a + size_b - shared)


def overlap_test(a: HeadsLike, b: HeadsLike, n_layers: int, n_heads: int, n_draws: int = 10_000,
                 seed: int = 0) -> dict[str, float]:
    """Observed overlap of two head sets vs the permutation null (module docstring): sizes, shared heads, Jaccard,
    null mean (sampled and analytical), one-sided permutation p (+1 correction) and the exact hypergeometric p."""
    from scipy.stats import hypergeom

    (ha, sa), (hb, sb) = _heads(a), _heads(b)
    for shape in (sa, sb):
        if shape is not None and shape != (n_layers, n_heads):
            raise ParameterError(f"a head set from a {shape[0]}×{shape[1]} model; valid choices: head sets of this "
                                 f"{n_layers}×{n_heads} model")
    _check_range(ha + hb, n_layers, n_heads)
    N, na, nb = n_layers * n_heads, len(ha), len(hb)
    shared = len(set(ha) & set(hb))
    obs = shared / (na + nb - shared)
    null = overlap_null(na, nb, N, n_draws, seed)
    return {"size_a": na, "size_b": nb, "shared": shared, "shared_frac": shared / min(na, nb), "jaccard": obs,
            "null_mean": float(null.mean()), "expected_jaccard": expected_jaccard(na, nb, N),
            "p_value": float((1 + (null >= obs - 1e-12).sum()) / (1 + n_draws)),
            "p_hypergeom": float(hypergeom.sf(shared - 1, N, na, nb))}


def overlap_table(sets: Mapping[str, HeadsLike], n_layers: int | None = None, n_heads: int | None = None,
                  n_draws: int = 10_000, seed: int = 0):
    """Tidy pandas table over all pairs of named head sets (`overlap_test` columns, plus `a`, `b` and the
    Benjamini-Hochberg `q_bh` over the pairs). Dimensions default to those the HeadSets carry."""
    import pandas as pd
    from scipy.stats import false_discovery_control

    if not isinstance(sets, Mapping) or len(sets) < 2:
        got = len(sets) if isinstance(sets, Mapping) else repr(sets)
        raise ParameterError(f"need at least two named head sets, got {got}; valid choices: a mapping "
                             f"{{name: head set}} with two or more entries")
    shapes = {(int(s.n_layers), int(s.n_heads)) for s in sets.values() if isinstance(s, HeadSet)}
    if n_layers is None or n_heads is None:
        if len(shapes) != 1:
            raise ParameterError(f"model shape unknown or inconsistent ({sorted(shapes)}); valid choices: pass "
                                 f"n_layers and n_heads, or HeadSets of one model")
        n_layers, n_heads = shapes.pop()
    rows = [{"a": x, "b": y, **overlap_test(sets[x], sets[y], n_layers, n_heads, n_draws, seed)}
            for x, y in itertools.combinations(list(sets), 2)]
    df = pd.DataFrame(rows)
    df["q_bh"] = false_discovery_control(df["p_value"].to_numpy()) if len(df) > 1 else df["p_value"]
    return df
