"""Dynamic entropy tracing: stepwise head-wise option readout (paper 000, Sec. 3.1-3.2, Eq. 1-3; App. F stages 1-2).

At every greedy decoding step t and for every attention head (l, h) we read the head's output
o = z_{l,h} W_O[l,h] at the newest position through the unembedding, restricted to the option tokens K:

    z[k] = (W_U o)[pi(k)]            (Eq. 1 / Eq. 8)
    p    = softmax(beta * z)         (Eq. 2 / Eq. 9)
    H    = -sum_k p[k] log p[k]      (Eq. 3 / Eq. 10), natural log, in [0, log|K|].

Efficiency: nothing is projected onto the whole vocabulary. `W_O[l,h] @ W_U[:, K]` is precomputed once
([L, H, d_head, |K|]); a hook copies `hook_z` at the newest position only ([L, H, d_head] per step) and the
readout for all steps is one batched contraction after decoding. Under GQA `hook_z` is already per query head,
so the readout is per query head.

Two normalisations (`norm=`):

- ``"raw"`` (the paper's readout): z = W_U^T o. The logits scale with the head's output norm |o|, so a head that
  writes a large vector looks confident (low entropy) and a head that writes little looks uniform (high entropy),
  whatever its direction.
- ``"final_norm"``: apply the final RMSNorm to the single head's own output, z = W_U^T (gamma * o / rms(o)),
  rms(o) = sqrt(mean(o^2) + eps). This removes the norm dependence (entropy reflects the head's *direction* and
  the learned gamma reweighting), i.e. it reads the head as if it were the whole residual stream. We never reuse
  the final-norm scale cached from the full residual stream (TransformerLens issue #1076): that divides every
  head by the same, unrelated scale and acts as a step-dependent temperature on all heads at once.
  Cost: rms(o)^2 = z^T (W_O W_O^T) z / d_model uses a precomputed [L, H, d_head, d_head] Gram matrix.

Output biases (b_O, b_U) are ignored: they are not attributable to any single head.

Decoding (App. F stage 1): greedy, temperature 0, at most 256 new tokens, KV cache, a sliding-window loop detector
(window 120, overlap ratio 0.9) and an optional length extension (x2). The decoding loop is the same hand-written
KV-cache loop with and without tracing, so tracing cannot change the generated tokens (tests check this).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .artifacts import ProvenanceError, provenance, read_tensors, write_tensors

#: Named option sets (Sec. 3.1): 4-way and 5-way letters, and the arithmetic set of the Extensibility paragraph.
OPTION_SETS: dict[str, tuple[str, ...]] = {
    "A-D": tuple("ABCD"),
    "A-E": tuple("ABCDE"),
    "digits": tuple("0123456789"),
    "digits+ops": tuple("0123456789") + ("+", "-", "*", "="),
}
NORMS = ("raw", "final_norm")
AGGREGATES = ("mean", "first", "sum")
STOP_REASONS = ("eos", "max_tokens", "loop")


# ----------------------------------------------------------------------------------------------- option sets
@dataclass(frozen=True)
class OptionSet:
    """A fixed option set K: labels and the token id(s) pi(k) of each label (Eq. 1)."""

    labels: tuple[str, ...]
    token_ids: tuple[tuple[int, ...], ...]
    aggregate: str = "mean"

    def __len__(self) -> int:
        return len(self.labels)

    def matrix(self, n_vocab: int) -> torch.Tensor:
        """[|V|, |K|] aggregation matrix A so that (W_U o)[pi(k)] = (A^T W_U^T o)[k] (multi-token labels)."""
        A = torch.zeros(n_vocab, len(self.labels))
        for k, ids in enumerate(self.token_ids):
            if self.aggregate == "first":
                ids = ids[:1]
            w = 1.0 / len(ids) if self.aggregate == "mean" else 1.0
            for i in ids:
                A[i, k] += w
        return A


@dataclass(frozen=True)
class TopK:
    """The dynamic option set of App. H.5 path 1: K_t = the model's own top-k next-token predictions at step t."""

    k: int = 5

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 2:
            raise ValueError(f"TopK needs k >= 2 (an entropy over one token is always 0), got {self.k!r}")

    def __len__(self) -> int:
        return self.k

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(f"top{i + 1}" for i in range(self.k))


def _encode_label(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def option_set(tokenizer, labels: str | Sequence[str], prefix: str = " ", require_single: bool = False,
               aggregate: str = "mean") -> OptionSet:
    """Map option labels to token ids pi(k).

    `labels` is a named set (see OPTION_SETS), a string of one-character labels ("ABCD") or a list of labels.
    Each label is tried as `prefix + label` first (the form that follows "Answer:" in BPE vocabularies), then bare;
    the first variant that is a single token wins, otherwise the shortest multi-token encoding is kept and its
    token logits are aggregated (`aggregate`: mean, first or sum). Raises ValueError if a label is missing from the
    vocabulary (unknown token or empty encoding), or is split into several tokens while `require_single` is set.
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; valid choices: {', '.join(AGGREGATES)}")
    if isinstance(labels, str):
        labels = OPTION_SETS.get(labels, tuple(labels))
    labels = tuple(labels)
    if len(labels) < 2:
        raise ValueError(f"an option set needs at least 2 labels, got {labels!r}; named sets: {list(OPTION_SETS)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"option labels must be distinct, got {labels!r}")
    unk = getattr(tokenizer, "unk_token_id", None)
    ids_all: list[tuple[int, ...]] = []
    for lab in labels:
        variants = [prefix + lab, lab] if prefix else [lab]
        encs = [e for e in (_encode_label(tokenizer, v) for v in variants) if e and (unk is None or unk not in e)]
        if not encs:
            raise ValueError(f"option label {lab!r} is missing from the tokenizer's vocabulary (encodes to the "
                             "unknown token); choose labels the model can emit")
        single = [e for e in encs if len(e) == 1]
        ids = single[0] if single else min(encs, key=len)
        if len(ids) > 1 and require_single:
            raise ValueError(f"option label {lab!r} is split into {len(ids)} tokens {ids}; pass require_single=False "
                             f"to aggregate them ({'/'.join(AGGREGATES)}) or choose single-token labels")
        ids_all.append(tuple(ids))
    firsts = [ids[0] for ids in ids_all if len(ids) == 1]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"two option labels map to the same token: {dict(zip(labels, ids_all))}")
    return OptionSet(labels=labels, token_ids=tuple(ids_all), aggregate=aggregate)


def resolve_options(tokenizer, options: Any, **kw) -> OptionSet | TopK:
    """Accept an OptionSet, a TopK, "topk:<k>", a named set or a list of labels."""
    if isinstance(options, (OptionSet, TopK)):
        return options
    if isinstance(options, str) and options.startswith("topk:"):
        return TopK(int(options.split(":", 1)[1]))
    return option_set(tokenizer, options, **kw)


# ----------------------------------------------------------------------------------------------- readout math
def entropy(logits: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Eq. 2-3: entropy (nats) of softmax(beta * logits) over the last axis, clipped to [0, log|K|]."""
    logp = torch.log_softmax(beta * logits.float(), dim=-1)
    h = -(logp.exp() * logp).sum(-1)
    return h.clamp(0.0, math.log(logits.shape[-1]))


def option_readout(z: torch.Tensor, W_O: torch.Tensor, W_UK: torch.Tensor, norm: str = "raw",
                   gamma: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 1 for given head inputs, with explicit weights (reference implementation, used by the tests).

    z: [..., H, d_head]; W_O: [H, d_head, d_model]; W_UK: [d_model, |K|] (option columns of W_U).
    Returns [..., H, |K|]: raw, or with the final RMSNorm applied to each head's own output (norm="final_norm").
    """
    _check_norm(norm)
    o = torch.einsum("...hd,hdm->...hm", z.float(), W_O.float())
    if norm == "final_norm":
        g = torch.ones(o.shape[-1]) if gamma is None else gamma.float()
        o = g * o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return o @ W_UK.float()


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; valid choices: {', '.join(NORMS)}")


@dataclass
class Readout:
    """Precomputed per-model readout weights (App. F stage 1, computed once per model and option set).

    Only small tensors are kept on the CPU: P = W_O[l,h] W_U[:, K] and, for final_norm, the Gram matrices
    G = W_O W_O^T. The dynamic top-k set reads W_O and W_U from the model, layer by layer, on its device.
    """

    lm: Any = field(repr=False)
    norm: str
    beta: float
    options: OptionSet | TopK
    gamma: torch.Tensor  # [d_model] final RMSNorm weight (float32, CPU)
    eps: float
    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    P: torch.Tensor | None = None  # [L, H, d_head, |K|]: W_O[l,h] @ (gamma *) W_U[:, K]
    G: torch.Tensor | None = None  # [L, H, d_head, d_head]: W_O W_O^T (final_norm only)

    def W_O_layer(self, layer: int) -> torch.Tensor:
        """[H, d_head, d_model] output weights of one layer (model device and dtype)."""
        return self.lm.bridge.blocks[layer].attn.W_O.detach()

    def W_U_device(self) -> torch.Tensor:
        """[d_model, |V|] unembedding (a view of the model's weights, no copy)."""
        return self.lm.bridge.W_U.detach()

    @property
    def W_O(self) -> torch.Tensor:
        """[L, H, d_head, d_model] float32 CPU copy (reference implementations and tests; large for big models)."""
        return torch.stack([self.W_O_layer(l).float().cpu() for l in range(self.n_layers)])

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, |V|] float32 CPU copy (reference implementations and tests; large for big models)."""
        return self.W_U_device().float().cpu()


def final_norm_params(lm) -> tuple[torch.Tensor, float]:
    """Weight and epsilon of the model's final RMSNorm (read from the HF module the bridge wraps)."""
    mod = lm.bridge.ln_final
    mod = getattr(mod, "original_component", mod)
    eps = getattr(mod, "variance_epsilon", None) or getattr(mod, "eps", None) or 1e-6
    return mod.weight.detach().float().cpu().clone(), float(eps)


@torch.no_grad()
def build_readout(lm, options: Any = "A-D", norm: str = "raw", beta: float = 1.0, **option_kw) -> Readout:
    """Resolve the option set and precompute W_O[h] W_U[:, K] for every layer (and the Gram matrices)."""
    _check_norm(norm)
    if not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta > 0):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    opts = resolve_options(lm.tokenizer, options, **option_kw)
    gamma, eps = final_norm_params(lm)
    W_U = lm.bridge.W_U.detach()
    W0 = lm.bridge.blocks[0].attn.W_O
    ro = Readout(lm=lm, norm=norm, beta=float(beta), options=opts, gamma=gamma, eps=eps, n_layers=lm.n_layers,
                 n_heads=int(W0.shape[0]), d_head=int(W0.shape[1]), d_model=int(W0.shape[2]))
    W_UK = None
    if isinstance(opts, OptionSet):
        flat = [i for ids in opts.token_ids for i in ids]
        if max(flat) >= W_U.shape[1]:
            raise ValueError(f"option token id {max(flat)} is outside the model's vocabulary ({W_U.shape[1]})")
        A = opts.matrix(W_U.shape[1])[flat].to(W_U.device)  # only the rows of the label tokens
        W_UK = W_U[:, flat].float() @ A  # [d_model, |K|]
        if norm == "final_norm":
            W_UK = gamma.to(W_U.device)[:, None] * W_UK
    P, G = [], []
    for layer in range(ro.n_layers):
        Wo = ro.W_O_layer(layer).float()
        if W_UK is not None:
            P.append(torch.einsum("hdm,mk->hdk", Wo, W_UK.to(Wo.device)).cpu())
        if norm == "final_norm":
            G.append(torch.einsum("hdm,hem->hde", Wo, Wo).cpu())
    ro.P = torch.stack(P) if P else None
    ro.G = torch.stack(G) if G else None
    return ro


@torch.no_grad()
def readout_logits(ro: Readout, Z: torch.Tensor, topk_ids: torch.Tensor | None = None,
                   budget: float = 3e7) -> torch.Tensor:
    """Option logits [T, L, H, |K|] from newest-position head inputs Z [T, L, H, d_head] (Eq. 1)."""
    Z = Z.float().cpu()
    if isinstance(ro.options, OptionSet):
        out = torch.einsum("tlhd,lhdk->tlhk", Z, ro.P)
    else:  # dynamic top-k: K_t differs per step; per layer, o = z W_O then o . W_U[:, K_t], on the model's device
        W_U = ro.W_U_device()
        step = max(1, int(budget // (ro.n_heads * ro.d_model)))
        out = Z.new_zeros(Z.shape[0], ro.n_layers, ro.n_heads, len(ro.options))
        g = ro.gamma.to(W_U.device)
        for layer in range(ro.n_layers):
            Wo = ro.W_O_layer(layer).float()
            for s in range(0, Z.shape[0], step):
                o = torch.einsum("thd,hdm->thm", Z[s:s + step, layer].to(Wo.device), Wo)
                Wk = W_U[:, topk_ids[s:s + step].to(W_U.device)].float()  # [d_model, t, k]
                if ro.norm == "final_norm":
                    Wk = g[:, None, None] * Wk
                out[s:s + step, layer] = torch.einsum("thm,mtk->thk", o, Wk).cpu()
    if ro.norm == "final_norm":
        ms = torch.einsum("tlhd,lhde,tlhe->tlh", Z, ro.G, Z) / ro.d_model
        out = out / torch.sqrt(ms.clamp_min(0) + ro.eps)[..., None]
    return out


# ----------------------------------------------------------------------------------------------- decoding
@dataclass
class DecodeConfig:
    """App. F stage 1 decoding settings: greedy (temperature 0), KV cache, loop detector, optional extension."""

    max_new_tokens: int = 256
    loop_window: int = 120
    loop_ratio: float = 0.9
    extend_factor: float = 1.0  # 2.0 = the paper's optional x2 length extension when the cap is hit

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (isinstance(self.loop_window, int) and self.loop_window >= 2):
            raise ValueError(f"loop_window must be an integer >= 2, got {self.loop_window!r}")
        if not 0.0 < self.loop_ratio <= 1.0:
            raise ValueError(f"loop_ratio must be in (0, 1], got {self.loop_ratio!r}")
        if not 1.0 <= self.extend_factor <= 2.0:
            raise ValueError(f"extend_factor must be in [1, 2] (the paper allows up to x2), got {self.extend_factor!r}")

    @property
    def cap(self) -> int:
        return int(self.max_new_tokens * self.extend_factor)


@dataclass
class Decoded:
    """Greedy decoding output: generated token ids (EOS included when emitted) and why decoding stopped."""

    tokens: list[int]
    stop_reason: str  # "eos" | "max_tokens" | "loop"
    prompt_len: int
    extended: bool = False  # True when decoding ran past max_new_tokens (the optional x2 extension)


class LoopDetector:
    """Sliding-window overlap detector (App. F): within the last `window` generated tokens, the share of positions
    that equal the token p steps earlier (for the best period p <= window/2) reaching `ratio` means a copying loop."""

    def __init__(self, window: int = 120, ratio: float = 0.9):
        self.window, self.ratio = window, ratio
        pos = np.arange(window)[None, :]
        per = np.arange(1, window // 2 + 1)[:, None]
        self._a, self._b = np.broadcast_to(pos, (per.shape[0], window)), pos - per
        self._valid = self._b >= 0
        self._n = self._valid.sum(1)
        self._b = np.clip(self._b, 0, None)

    def overlap(self, tokens: Sequence[int]) -> float:
        """Best-period overlap ratio of the last window (0 when fewer than `window` tokens)."""
        if len(tokens) < self.window:
            return 0.0
        w = np.asarray(tokens[-self.window:])
        eq = (w[self._a] == w[self._b]) & self._valid
        return float((eq.sum(1) / self._n).max())

    def __call__(self, tokens: Sequence[int]) -> bool:
        return self.overlap(tokens) >= self.ratio


def eos_ids(lm) -> set[int]:
    """Token ids that end a response: the tokenizer's EOS plus the generation config's (ChatML <|im_end|> etc.)."""
    ids: set[int] = set()
    for src in (getattr(lm.hf_model, "generation_config", None), lm.hf_model.config, lm.tokenizer):
        e = getattr(src, "eos_token_id", None)
        if e is None:
            continue
        ids.update(e if isinstance(e, (list, tuple, set)) else [e])
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = lm.tokenizer.convert_tokens_to_ids(t) if t in lm.tokenizer.get_vocab() else None
        if tid is not None:
            ids.add(int(tid))
    return {int(i) for i in ids}


@contextmanager
def fast_attention(lm) -> Iterator[None]:
    """Switch off the bridge's per-head `hook_result` computation while decoding (restored afterwards).

    Both plain and traced decoding run under it, so they take the same numerical path as the HF model itself;
    hook_z (o.hook_in) keeps firing.
    """
    b = lm.bridge
    prev = bool(getattr(b.cfg, "use_attn_result", False))
    if prev:
        b.set_use_attn_result(False)
    try:
        yield
    finally:
        if prev:
            b.set_use_attn_result(True)


def encode_prompt(lm, prompt: str) -> torch.Tensor:
    """[1, P] input ids of a fully formatted prompt (chat template already applied).

    The tokenizer adds its BOS where it has one (Llama-2) unless the prompt text already starts with it.
    """
    bos = getattr(lm.tokenizer, "bos_token", None)
    add = not (bos and prompt.startswith(bos))
    ids = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=add)["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError("empty prompt")
    return ids.to(lm.device)


@torch.no_grad()
def greedy_decode(lm, input_ids: torch.Tensor, cfg: DecodeConfig | None = None,
                  on_step: Callable[[int, torch.Tensor], None] | None = None) -> Decoded:
    """The hand-written KV-cache greedy loop shared by plain and traced decoding.

    Step t (0-based) runs one forward pass whose newest position predicts generated token t; `on_step(t, logits)`
    is called after it with the final next-token logits [|V|].
    """
    from transformers import DynamicCache

    cfg = cfg or DecodeConfig()
    stop_ids = eos_ids(lm)
    detector = LoopDetector(cfg.loop_window, cfg.loop_ratio)
    cache = DynamicCache()
    x, out, reason = input_ids, [], "max_tokens"
    with fast_attention(lm):
        for t in range(cfg.cap):
            res = lm.hf_model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = res.past_key_values
            logits = res.logits[0, -1]
            if on_step is not None:
                on_step(t, logits)
            nxt = int(logits.argmax())
            out.append(nxt)
            if nxt in stop_ids:
                reason = "eos"
                break
            if detector(out):
                reason = "loop"
                break
            x = torch.tensor([[nxt]], device=input_ids.device)
    return Decoded(tokens=out, stop_reason=reason, prompt_len=int(input_ids.shape[1]),
                   extended=len(out) > cfg.max_new_tokens)


# ----------------------------------------------------------------------------------------------- tracing
@dataclass
class Trace:
    """One traced example: head-wise option logits [T, L, H, |K|], entropy [T, L, H] and the generation."""

    id: str
    logits: torch.Tensor
    entropy: torch.Tensor
    tokens: list[int]
    text: str
    answer: str | None
    stop_reason: str
    labels: tuple[str, ...]
    option_ids: torch.Tensor  # [|K|] first token id per label, or [T, k] for dynamic top-k
    final_logits: torch.Tensor  # [T, |K|] the model's own next-token logits on the option tokens
    meta: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return int(self.entropy.shape[0])


def parse(text: str, labels: Sequence[str]) -> str | None:
    """The parsed answer: an option letter when the labels are letters, else the text after the last 'Answer:'."""
    from .prompts import answer_text, parse_answer

    if all(len(s) == 1 and s.isalpha() for s in labels):
        return parse_answer(text, "".join(labels))
    return answer_text(text) or None


class _Recorder:
    """hook_z hooks that copy the newest position's per-head inputs into a preallocated [cap, L, H, d_head]."""

    def __init__(self, lm, cap: int):
        self.t, self.cap, self.L = 0, cap, lm.n_layers
        self.Z: torch.Tensor | None = None
        self.points = [lm.bridge.blocks[l].attn.hook_z for l in range(self.L)]

    def _fn(self, layer: int) -> Callable:
        def fn(z: torch.Tensor, hook=None) -> None:
            if self.Z is None:
                self.Z = z.new_zeros(self.cap, self.L, z.shape[-2], z.shape[-1])
            self.Z[self.t, layer].copy_(z[0, -1])
        return fn

    @contextmanager
    def attached(self) -> Iterator["_Recorder"]:
        handles = [hp.add_hook(self._fn(l)) for l, hp in enumerate(self.points)]
        try:
            yield self
        finally:
            for hp, h in zip(self.points, handles):
                h.hook.remove()
                hp.fwd_hooks = [x for x in hp.fwd_hooks if x is not h]


def _final_gather(opts: OptionSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat token ids of all labels and the [n_ids, |K|] matrix aggregating their logits per label."""
    flat, cols, w = [], [], []
    for k, ids in enumerate(opts.token_ids):
        use = ids[:1] if opts.aggregate == "first" else ids
        for i in use:
            flat.append(i)
            cols.append(k)
            w.append(1.0 / len(use) if opts.aggregate == "mean" else 1.0)
    agg = torch.zeros(len(flat), len(opts))
    agg[torch.arange(len(flat)), torch.tensor(cols)] = torch.tensor(w)
    return torch.tensor(flat), agg


@torch.no_grad()
def trace(lm, prompt: str, options: Any = "A-D", norm: str = "raw", beta: float = 1.0,
          decode: DecodeConfig | None = None, readout: Readout | None = None, id: str = "",
          **option_kw) -> Trace:
    """Greedy-decode `prompt` and record the head-wise option readout at every step (Eq. 1-3).

    `options`: "A-D", "A-E", a named or custom label list, an OptionSet, or TopK(k) / "topk:k" (App. H.5 path 1).
    `norm`: "raw" (paper) or "final_norm" (final RMSNorm on each head's own output; see the module docstring).
    Pass a prebuilt `readout` (build_readout) to reuse the precomputed weights across examples.
    """
    ro = readout or build_readout(lm, options, norm, beta, **option_kw)
    cfg = decode or DecodeConfig()
    ids = encode_prompt(lm, prompt)
    rec = _Recorder(lm, cfg.cap)
    dynamic = isinstance(ro.options, TopK)
    if not dynamic:
        flat, agg = _final_gather(ro.options)
        flat = flat.to(ids.device)
    picks: list = []  # per step: (top-k values, ids) when dynamic, else the option tokens' final logits

    def on_step(t: int, logits: torch.Tensor) -> None:
        rec.t = t + 1
        picks.append(logits.topk(ro.options.k) if dynamic else logits[flat])

    with rec.attached():
        dec = greedy_decode(lm, ids, cfg, on_step=on_step)
    T = len(dec.tokens)
    Z = rec.Z[:T].float().cpu()
    if dynamic:
        option_ids = torch.stack([p.indices for p in picks]).cpu()  # [T, k]
        final = torch.stack([p.values for p in picks]).float().cpu()
        logits = readout_logits(ro, Z, option_ids)
    else:
        option_ids = torch.tensor([t[0] for t in ro.options.token_ids])
        final = torch.stack(picks).float().cpu() @ agg
        logits = readout_logits(ro, Z)
    text = lm.tokenizer.decode(dec.tokens, skip_special_tokens=True)
    labels = tuple(ro.options.labels)
    return Trace(id=id, logits=logits, entropy=entropy(logits, ro.beta), tokens=dec.tokens, text=text,
                 answer=parse(text, labels), stop_reason=dec.stop_reason, labels=labels, option_ids=option_ids,
                 final_logits=final,
                 meta={"prompt_len": dec.prompt_len, "extended": dec.extended})


@torch.no_grad()
def plain_decode(lm, prompt: str, decode: DecodeConfig | None = None) -> Decoded:
    """Untraced greedy decoding: the very same KV-cache loop as `trace`, without hooks (the benchmark baseline)."""
    return greedy_decode(lm, encode_prompt(lm, prompt), decode)


@torch.no_grad()
def naive_trace(lm, prompt: str, readout: Readout, decode: DecodeConfig | None = None) -> tuple[torch.Tensor, list]:
    """Reference (slow) readout: `run_with_cache` on the whole sequence at every step, per-head `hook_result`
    projected through the full unembedding, then restricted to K. Returns (logits [T, L, H, |K|], tokens).

    Independent of the fast path (no KV cache, no precomputed products); the tests compare the two.
    """
    cfg = decode or DecodeConfig()
    if isinstance(readout.options, TopK):
        raise ValueError("naive_trace supports fixed option sets only")
    ids = encode_prompt(lm, prompt)
    stop_ids, detector = eos_ids(lm), LoopDetector(cfg.loop_window, cfg.loop_ratio)
    W_U = readout.W_U  # full float32 copy: the naive method projects onto the whole vocabulary
    A = readout.options.matrix(W_U.shape[1])
    names = [f"blocks.{l}.attn.hook_result" for l in range(lm.n_layers)]
    b, prev = lm.bridge, bool(getattr(lm.bridge.cfg, "use_attn_result", False))
    b.set_use_attn_result(True)
    rows, out = [], []
    try:
        for _ in range(cfg.cap):
            logits, cache = b.run_with_cache(ids, names_filter=lambda n: n in names)
            o = torch.stack([cache[n][0, -1] for n in names]).float().cpu()  # [L, H, d_model]
            if readout.norm == "final_norm":
                o = readout.gamma * o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + readout.eps)
            rows.append((o @ W_U) @ A)  # full-vocabulary logit lens, then restrict to K
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt in stop_ids or detector(out):
                break
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    finally:
        b.set_use_attn_result(prev)
    return torch.stack(rows), out


# ----------------------------------------------------------------------------------------------- storage
def trace_params(ro: Readout, decode: DecodeConfig) -> dict:
    """The parameters that define a trace (recorded in provenance; resuming requires them to match)."""
    opts = ro.options
    return {
        "options": list(opts.labels) if isinstance(opts, OptionSet) else f"topk:{opts.k}",
        "option_token_ids": [list(t) for t in opts.token_ids] if isinstance(opts, OptionSet) else None,
        "aggregate": getattr(opts, "aggregate", None), "norm": ro.norm, "beta": ro.beta,
        "max_new_tokens": decode.max_new_tokens, "loop_window": decode.loop_window,
        "loop_ratio": decode.loop_ratio, "extend_factor": decode.extend_factor,
    }


def trace_path(out_dir: Path | str, id: str) -> Path:
    """File of one example's trace: `<out_dir>/<id>.safetensors` (unsafe characters replaced)."""
    return Path(out_dir) / (re.sub(r"[^A-Za-z0-9._-]", "_", str(id)) + ".safetensors")


def save_trace(path: Path | str, tr: Trace, prov: dict) -> Path:
    """Write a trace's tensors (safetensors) with its provenance and generation record in the metadata."""
    rec = {"id": tr.id, "text": tr.text, "answer": tr.answer, "stop_reason": tr.stop_reason,
           "labels": list(tr.labels), **tr.meta}
    tensors = {"logits": tr.logits, "entropy": tr.entropy, "tokens": torch.tensor(tr.tokens, dtype=torch.long),
               "option_ids": tr.option_ids, "final_logits": tr.final_logits}
    return write_tensors(path, tensors, {**prov, "trace": rec})


def load_trace(path: Path | str, expect_model: dict | None = None) -> Trace:
    """Read one trace written by `save_trace`; refuses a trace made with another model when `expect_model`."""
    t, prov = read_tensors(path, expect_model=expect_model)
    rec = dict(prov.get("trace", {}))
    meta = {k: v for k, v in rec.items() if k not in ("id", "text", "answer", "stop_reason", "labels")}
    meta["provenance"] = prov
    return Trace(id=rec.get("id", Path(path).stem), logits=t["logits"], entropy=t["entropy"],
                 tokens=t["tokens"].tolist(), text=rec.get("text", ""), answer=rec.get("answer"),
                 stop_reason=rec.get("stop_reason", ""), labels=tuple(rec.get("labels", ())),
                 option_ids=t["option_ids"], final_logits=t["final_logits"], meta=meta)


def _check_resumable(path: Path, lm, params: dict) -> bool:
    """True if an existing trace file was made by this model with these parameters; raise if it conflicts."""
    if not path.exists():
        return False
    _, prov = read_tensors(path, expect_model=lm.identity())  # ProvenanceError on another model
    old = prov.get("params", {})
    diff = sorted(k for k in params if old.get(k) != params[k])
    if diff:
        raise ProvenanceError(f"{path} was traced with other parameters ({', '.join(diff)}: "
                              f"{[old.get(k) for k in diff]} vs {[params[k] for k in diff]}); use a fresh "
                              "trace directory")
    return True


def trace_many(lm, prompts: Sequence[str], ids: Sequence[str], out_dir: Path | str, options: Any = "A-D",
               norm: str = "raw", beta: float = 1.0, decode: DecodeConfig | None = None, dataset: str | None = None,
               progress: bool = False, **option_kw) -> list[Path]:
    """Trace every prompt and save each example as soon as it is done (resumable: existing traces are skipped).

    Also writes `<out_dir>/index.json` (the probe IDs in order, with provenance). Returns the trace paths.
    """
    import warnings

    from .artifacts import write_json

    with warnings.catch_warnings():  # tqdm.auto warns about missing ipywidgets inside notebooks
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    prompts, ids = list(prompts), [str(i) for i in ids]
    if not prompts:
        raise ValueError("empty probe set: give at least one prompt to trace")
    if len(prompts) != len(ids):
        raise ValueError(f"{len(prompts)} prompts but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("example ids must be unique (they name the trace files)")
    out_dir = Path(out_dir)
    cfg = decode or DecodeConfig()
    ro = build_readout(lm, options, norm, beta, **option_kw)
    params = trace_params(ro, cfg)
    paths = []
    for prompt, i in tqdm(list(zip(prompts, ids)), desc="tracing", disable=not progress):
        path = trace_path(out_dir, i)
        if not _check_resumable(path, lm, params):
            tr = trace(lm, prompt, readout=ro, decode=cfg, id=i)
            save_trace(path, tr, provenance(lm.identity(), dataset, [i], params))
        paths.append(path)
    write_json(out_dir / "index.json", {"ids": ids, "files": [p.name for p in paths]},
               provenance(lm.identity(), dataset, ids, params))
    return paths


def load_traces(out_dir: Path | str, ids: Sequence[str] | None = None,
                expect_model: dict | None = None) -> list[Trace]:
    """Load traces from a trace directory, in the order of `ids` (default: the order in `index.json`)."""
    from .artifacts import read_json

    out_dir = Path(out_dir)
    if ids is None:
        ids = read_json(out_dir / "index.json", expect_model=expect_model)["ids"]
    return [load_trace(trace_path(out_dir, i), expect_model) for i in ids]


# ----------------------------------------------------------------------------------------------- probe sets
TOY_OPTIONS = {"toy_mc4": "A-D", "toy_mc5": "A-E", "toy_countdown": "digits+ops"}


@dataclass
class ProbeSet:
    """Prompts to trace, with their ids, the option set to read out, and the gold answers."""

    task: str
    ids: list[str]
    prompts: list[str]
    options: str | tuple[str, ...]
    answers: list[str]
    skipped: int = 0  # malformed dataset rows skipped under support.tasks' policy (shown by chapter 01)


def probe_set(task: str, n: int, seed: int = 0, template: str = "chatml", tokenizer=None,
              split: str | None = None) -> ProbeSet:
    """A probe set of `n` examples (Sec. 3.3, D_probe).

    Toy tasks come from `support.organism.generate` (held-out split, seed 1000 + seed so the probe is not the first
    evaluation items); real multiple-choice tasks from `support.tasks.load_task` (the dev split where one exists),
    restricted to the most common option count (so |K| is fixed), sampled with `seed` and formatted with the
    App. B prompt in `template`.
    """
    import random

    if n < 1:
        raise ValueError(f"empty probe set: n must be >= 1, got {n}")
    if task in TOY_OPTIONS:
        from .organism import generate

        items = generate(task, n, split or "test", seed=1000 + seed)
        return ProbeSet(task, [it.id for it in items], [it.prompt for it in items], TOY_OPTIONS[task],
                        [it.answer for it in items])
    from .prompts import format_mc_prompt
    from .tasks import MCItem, load_task

    try:
        res = load_task(task, split=split or "dev")
    except (ValueError, FileNotFoundError):
        res = load_task(task, split=split)
    items = [it for it in res.items if isinstance(it, MCItem)]
    if not items:
        raise ValueError(f"task {task!r} has no multiple-choice items; tracing needs an option set")
    from collections import Counter

    k = Counter(len(it.options) for it in items).most_common(1)[0][0]  # one option count per probe set (|K| fixed)
    items = [it for it in items if len(it.options) == k]
    items = random.Random(seed).sample(items, min(n, len(items)))
    letters = tuple("ABCDEFGHIJ"[:k])
    return ProbeSet(task, [it.id for it in items],
                    [format_mc_prompt(it.question, it.options, template, tokenizer) for it in items],
                    letters, [it.answer for it in items], skipped=len(res.skipped))


def trace_dir(run_dir: Path | str, task: str, norm: str = "raw") -> Path:
    """Where chapter 01 writes (and chapter 02 reads) a task's traces: `<run_dir>/traces/<task>/<norm>/`."""
    _check_norm(norm)
    return Path(run_dir) / "traces" / task / norm
