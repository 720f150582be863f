"""Preplan-and-anchor rhythm (paper 003 §4): attention metrics from one extra forward pass.

Given a prompt and a response, one forward pass over their concatenation captures the attention maps of the needed
layers only (all layers for analysis; 5 evenly spaced layers in [⌊L/3⌋, ⌊2L/3⌋] for RL, §5.1). From them:

- **head span** d(l, h) (Eq. 7): the attention-weighted mean backward distance over response rows;
- **head groups**: H_loc, the `frac` of heads with the smallest span, and H_glob, the `frac` with the largest; Ā_loc
  and Ā_glob are their mean maps (Eq. 8). Groups are chosen per response, from that response's own spans;
- **WAAD_t** (Eq. 9): Σ_s Ā_loc[t, s] · min(t − s, W), for response rows t;
- **FAI_s** (Eq. 10): the mean of Ā_glob[t, s] over T(s) = {t ∈ R : s + H_lo ≤ t ≤ min(N, s + H_hi)}. At the end of
  the response T(s) shrinks, and where it is empty (the last H_lo response tokens) FAI is undefined: NaN, never a
  peak and never selected. Analysis uses H_lo = 1, H_hi = ∞ ("to the end of the response", App. A.1); RL uses
  [10, 50] (§5.3.1);
- **receiver heads** (Bogdan et al. 2025): heads whose per-token received attention (each head's own FAI profile)
  has the highest kurtosis across response tokens; their mean map gives the receiver FAI;
- **token entropy** H_t of the policy's next-token distribution at each response token (§4.2);
- **peaks** (`peaks`): local maxima of a sequence that also lie in its top `top` share of values.

All positions are 0-based; "response positions" are those from `start` (the first response token) to the end.
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

Head = tuple[int, int]


# ----------------------------------------------------------------------------------------------- layers and maps
def rl_layers(n_layers: int, n: int = 5) -> list[int]:
    """§5.1: `n` evenly spaced layers in [⌊L/3⌋, ⌊2L/3⌋] (fewer when that range holds fewer layers)."""
    if not (isinstance(n_layers, int) and n_layers >= 1 and isinstance(n, int) and n >= 1):
        raise ValueError(f"n_layers and n must be positive integers, got {n_layers!r}, {n!r}")
    lo, hi = n_layers // 3, (2 * n_layers) // 3
    return sorted({int(round(x)) for x in np.linspace(lo, hi, n)})


def _base(model):
    """The plain HF model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attention_modules(model) -> dict[int, torch.nn.Module]:
    """{layer: self-attention module} of an HF decoder (Qwen2/Qwen3/Llama naming: `layers.<i>.self_attn`)."""
    mods = {int(m.group(1)): mod for name, mod in _base(model).named_modules()
            if (m := re.search(r"(?:^|\.)layers\.(\d+)(?:\._original_component)?\.self_attn$", name))}
    if not mods:
        raise ValueError(f"no `layers.<i>.self_attn` modules in {type(model).__name__}")
    return mods


@contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run the HF model with eager attention (which returns attention weights), restoring its implementation."""
    base = _base(model)
    prev = base.config._attn_implementation
    if prev != "eager":
        base.set_attn_implementation("eager")
    try:
        yield
    finally:
        if prev != "eager":
            base.set_attn_implementation(prev)


@torch.no_grad()
def attention_maps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   layers: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass keeping only `layers`' attention maps: ([B, len(layers), H, N, N] float32, logits [B, N, V]).

    `model` is an HF causal LM (a TRL policy, a peft model) or a `LoadedModel`, whose bridge gives `hook_pattern`
    under a names filter. Under eager attention every layer's weights exist for a moment inside its own forward,
    but only the requested layers' are kept: the peak is len(layers) + 1 maps. With an attention mask (left or right
    padding) positions follow the mask, as in generation.
    """
    if hasattr(model, "bridge"):
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("the bridge path takes unpadded sequences; pass the HF model for padded batches")
        layers = list(range(model.n_layers)) if layers is None else list(layers)
        names = {f"blocks.{layer}.attn.hook_pattern" for layer in layers}
        logits, cache = model.bridge.run_with_cache(input_ids.to(model.device), names_filter=lambda n: n in names)
        maps = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"].float() for layer in layers], 1)
        return maps, logits.float()
    mods = attention_modules(model)
    layers = sorted(mods) if layers is None else list(layers)
    if unknown := [layer for layer in layers if layer not in mods]:
        raise ValueError(f"unknown layers {unknown}; the model has layers 0..{len(mods) - 1}")
    kept: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(_mod, _args, out):
            if not (isinstance(out, tuple) and len(out) > 1 and out[1] is not None):
                raise RuntimeError("the attention module returned no weights (is attention eager?)")
            kept[layer] = out[1].float()
        return hook

    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    handles = [mods[layer].register_forward_hook(keep(layer)) for layer in layers]
    try:
        with eager_attention(model):
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()
    return torch.stack([kept[layer] for layer in layers], 1), logits.float()


# ----------------------------------------------------------------------------------------------- metrics
def _dist(n: int, device=None) -> torch.Tensor:
    t = torch.arange(n, device=device)
    return (t[:, None] - t[None, :]).clamp(min=0).float()


def head_span(maps: torch.Tensor, start: int) -> torch.Tensor:
    """Eq. 7: d(l, h), the mean over response rows t ≥ start of Σ_s A[t, s] (t − s). maps: [L, H, N, N] -> [L, H]."""
    n = maps.shape[-1]
    if not 0 <= start < n:
        raise ValueError(f"response start {start} outside the sequence of {n} tokens")
    return (maps[..., start:, :] * _dist(n, maps.device)[start:]).sum(-1).mean(-1)


def head_groups(span: torch.Tensor, frac: float = 0.3,
                layers: Sequence[int] | None = None) -> tuple[list[Head], list[Head]]:
    """§4.1: (H_loc, H_glob): the ⌈frac·|heads|⌉ heads with the smallest and the largest span (ties by index).

    `layers` maps span rows to model layer indices (when the maps hold only some layers)."""
    if not 0 < frac <= 0.5:
        raise ValueError(f"head group fraction must be in (0, 0.5], got {frac!r}")
    n_l, n_h = span.shape
    layers = list(range(n_l)) if layers is None else list(layers)
    k = max(1, math.ceil(frac * n_l * n_h))
    order = np.argsort(span.detach().cpu().numpy().ravel(), kind="stable")
    to_head = [(layers[i // n_h], i % n_h) for i in range(n_l * n_h)]
    return [to_head[i] for i in order[:k]], [to_head[i] for i in order[::-1][:k]]


def group_map(maps: torch.Tensor, heads: Sequence[Head], layers: Sequence[int] | None = None) -> torch.Tensor:
    """Eq. 8: the mean attention map of a head group. maps: [L, H, N, N] -> [N, N]."""
    row = {layer: i for i, layer in enumerate(range(maps.shape[0]) if layers is None else layers)}
    return torch.stack([maps[row[layer], h] for layer, h in heads]).mean(0)


def waad(a_loc: torch.Tensor, start: int, window: int = 10) -> torch.Tensor:
    """Eq. 9: WAAD_t = Σ_s Ā_loc[t, s] · min(t − s, W) for response rows t ≥ start. [N, N] -> [N − start]."""
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"WAAD window must be a positive integer, got {window!r}")
    n = a_loc.shape[-1]
    return (a_loc[..., start:, :] * _dist(n, a_loc.device)[start:].clamp(max=window)).sum(-1)


def fai(a_glob: torch.Tensor, start: int, h_lo: int = 1, h_hi: int | None = None) -> torch.Tensor:
    """Eq. 10: FAI_s = mean of Ā_glob[t, s] over t ∈ R with s + H_lo ≤ t ≤ s + H_hi, for response columns s ≥ start.

    [..., N, N] -> [..., N − start]. NaN where T(s) is empty (the last H_lo response tokens); `h_hi=None` reads to
    the end of the response. Also works on per-head maps [L, H, N, N]."""
    if not (isinstance(h_lo, int) and h_lo >= 1 and (h_hi is None or (isinstance(h_hi, int) and h_hi >= h_lo))):
        raise ValueError(f"FAI horizons must satisfy 1 <= h_lo <= h_hi, got {h_lo!r}, {h_hi!r}")
    n = a_glob.shape[-1]
    t = torch.arange(n, device=a_glob.device)
    gap = t[:, None] - t[None, :]  # [t, s]: t - s
    inside = (gap >= h_lo) & (t[:, None] >= start)
    if h_hi is not None:
        inside &= gap <= h_hi
    inside = inside[:, start:].float()
    total = (a_glob[..., :, start:] * inside).sum(-2)
    count = inside.sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def token_entropy(logits: torch.Tensor, start: int) -> torch.Tensor:
    """§4.2: H_t = −Σ_v p(v | q, o_<t) log p(v | ·) for response tokens t ≥ start (read at position t − 1), nats.

    logits: [N, V] -> [N − start]."""
    if start < 1:
        raise ValueError("the response must follow at least one prompt token")
    logp = torch.log_softmax(logits[start - 1:-1].float(), -1)
    return -(logp.exp() * logp).sum(-1)


def kurtosis(x: np.ndarray) -> np.ndarray:
    """Fisher kurtosis along the last axis, ignoring NaNs (scipy)."""
    from scipy.stats import kurtosis as _k

    return np.asarray(_k(x, axis=-1, fisher=True, nan_policy="omit"), dtype=float)


def peaks(x: np.ndarray | torch.Tensor, top: float = 0.3) -> np.ndarray:
    """Peaks of a token sequence: local maxima (scipy.signal.find_peaks; plateaus count once, at their middle) whose
    value is at least the (1 − top) quantile of the sequence. Endpoints count when they exceed their one neighbour.
    NaNs are never peaks. Returns sorted 0-based positions."""
    from scipy.signal import find_peaks

    if not 0 < top <= 1:
        raise ValueError(f"peak share `top` must be in (0, 1], got {top!r}")
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=float)
    ok = ~np.isnan(x)
    if ok.sum() == 0:
        return np.zeros(0, dtype=int)
    floor = np.nanmin(x) - 1.0
    padded = np.concatenate([[floor], np.where(ok, x, floor), [floor]])
    idx, _ = find_peaks(padded)
    idx = idx - 1
    cut = np.quantile(x[ok], 1 - top)
    return np.array(sorted(i for i in idx if ok[i] and x[i] >= cut), dtype=int)


# ----------------------------------------------------------------------------------------------- one response
@dataclass
class Rhythm:
    """Every §4 metric of one response (arrays over response tokens, index 0 = the first response token)."""

    tokens: list[str]
    start: int  # position of the first response token in the full sequence
    layers: list[int]
    span: np.ndarray  # [L, H], Eq. 7
    loc: list[Head]
    glob: list[Head]
    a_loc: np.ndarray  # [N, N], Eq. 8
    a_glob: np.ndarray
    waad: np.ndarray  # Eq. 9
    fai: np.ndarray  # Eq. 10 (global heads)
    head_fai: np.ndarray  # [L, H, n] each head's own FAI profile (receiver heads are chosen from it)
    entropy: np.ndarray
    window: int = 10
    horizon: tuple[int, int | None] = (1, None)
    extra: dict = field(default_factory=dict)

    @property
    def response_tokens(self) -> list[str]:
        return self.tokens[self.start:]

    def receiver_fai(self, receivers: Sequence[Head]) -> np.ndarray:
        """FAI over the receiver heads' mean map (the mean of their own FAI profiles: Eq. 10 is linear in the map)."""
        row = {layer: i for i, layer in enumerate(self.layers)}
        return np.mean([self.head_fai[row[layer], h] for layer, h in receivers], 0)


def signals(maps: torch.Tensor, logits: torch.Tensor, start: int, *, layers: Sequence[int], window: int = 10,
            h_lo: int = 1, h_hi: int | None = None, frac: float = 0.3) -> dict:
    """Span, groups, WAAD, FAI and entropy of one unpadded sequence from its maps [L, H, N, N] and logits [N, V]."""
    span = head_span(maps, start)
    loc, glob = head_groups(span, frac, layers)
    a_loc, a_glob = group_map(maps, loc, layers), group_map(maps, glob, layers)
    return {"span": span, "loc": loc, "glob": glob, "a_loc": a_loc, "a_glob": a_glob,
            "waad": waad(a_loc, start, window), "fai": fai(a_glob, start, h_lo, h_hi),
            "entropy": token_entropy(logits, start)}


def analyse(lm, prompt_ids: Sequence[int], response_ids: Sequence[int], *, layers: Sequence[int] | None = None,
            frac: float = 0.3, window: int = 10, h_lo: int = 1, h_hi: int | None = None) -> Rhythm:
    """All §4 metrics of one response, from one extra forward pass over prompt + response (through the bridge when
    `lm` is a LoadedModel). Analysis defaults: all layers, W = 10, FAI to the end of the response (App. A.1)."""
    if len(prompt_ids) < 1 or len(response_ids) < 2:
        raise ValueError("analyse needs a non-empty prompt and a response of at least 2 tokens")
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    n_layers = lm.n_layers if hasattr(lm, "n_layers") else len(attention_modules(lm))
    layers = list(range(n_layers)) if layers is None else list(layers)
    maps, logits = attention_maps(lm, ids, layers=layers)
    start = len(prompt_ids)
    s = signals(maps[0], logits[0], start, layers=layers, window=window, h_lo=h_lo, h_hi=h_hi, frac=frac)
    tok = lm.tokenizer if hasattr(lm, "tokenizer") else None
    tokens = tok.convert_ids_to_tokens(ids[0].tolist()) if tok is not None else [str(i) for i in ids[0].tolist()]
    return Rhythm(tokens=tokens, start=start, layers=layers, span=s["span"].cpu().numpy(), loc=s["loc"],
                  glob=s["glob"], a_loc=s["a_loc"].cpu().numpy(), a_glob=s["a_glob"].cpu().numpy(),
                  waad=s["waad"].cpu().numpy(), fai=s["fai"].cpu().numpy(),
                  head_fai=fai(maps[0], start, h_lo, h_hi).cpu().numpy(), entropy=s["entropy"].cpu().numpy(),
                  window=window, horizon=(h_lo, h_hi))


def receiver_heads(rhythms: Sequence[Rhythm], n: int | None = None) -> tuple[list[Head], np.ndarray]:
    """Bogdan et al.'s receiver heads: the `n` heads (default |H_glob|) whose per-token received attention has the
    highest kurtosis across response tokens, averaged over responses. Returns (heads, mean kurtosis [L, H])."""
    if not rhythms:
        raise ValueError("receiver_heads needs at least one analysed response")
    kurt = np.nanmean([kurtosis(r.head_fai) for r in rhythms], 0)
    n = len(rhythms[0].glob) if n is None else n
    layers, n_h = rhythms[0].layers, kurt.shape[1]
    order = np.argsort(-np.nan_to_num(kurt, nan=-np.inf).ravel(), kind="stable")[:n]
    return [(layers[i // n_h], int(i % n_h)) for i in order], kurt


# ----------------------------------------------------------------------------------------------- batches (RL)
@torch.no_grad()
def token_signals(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor, *,
                  layers: Sequence[int], window: int = 10, h_lo: int = 1, h_hi: int | None = None,
                  group_frac: float = 0.3, chunk: int = 8) -> dict[str, torch.Tensor]:
    """(B, N) "waad", "fai", "entropy" for a padded batch of prompt + response sequences (NaN outside the response and
    where undefined), from one extra forward pass that keeps only `layers`' maps, `chunk` sequences at a time.

    Each sequence's real tokens (attention_mask == 1) must be contiguous, as in TRL's left-padded prompt + right-
    padded completion; `response_mask` marks its response tokens, which must follow its prompt. Head groups are
    chosen per sequence from its own spans (§4.1)."""
    if not (input_ids.shape == attention_mask.shape == response_mask.shape):
        raise ValueError("input_ids, attention_mask and response_mask must have the same (B, N) shape")
    out = {k: torch.full(input_ids.shape, float("nan"), device=input_ids.device) for k in ("waad", "fai", "entropy")}
    for lo in range(0, input_ids.shape[0], chunk):
        ids, am = input_ids[lo:lo + chunk], attention_mask[lo:lo + chunk]
        maps, logits = attention_maps(model, ids, am, layers)
        for j in range(ids.shape[0]):
            real = am[j].nonzero().flatten()
            resp = response_mask[lo + j].nonzero().flatten()
            if len(resp) == 0:
                continue
            a, b = int(real[0]), int(real[-1]) + 1
            start = int(resp[0]) - a
            if start < 1 or int(resp[-1]) >= b:
                raise ValueError("each response must follow its prompt inside the sequence's real tokens")
            s = signals(maps[j, :, :, a:b, a:b], logits[j, a:b], start, layers=layers, window=window, h_lo=h_lo,
                        h_hi=h_hi, frac=group_frac)
            for k in out:
                out[k][lo + j, a + start:b] = s[k].to(out[k].device)
        del maps, logits
    return out


# ----------------------------------------------------------------------------------------------- couplings (Table 2)
def _lift(observed: float, random: float) -> float:
    return (observed - random) / random if random else float("nan")


def coupling_entropy(rhythms: Sequence[Rhythm], top: float = 0.3) -> dict:
    """Table 2 row 1 (App. A.1): mean entropy at WAAD peaks ("observed") against over all response tokens
    ("random"), pooled over responses."""
    at = np.concatenate([r.entropy[peaks(r.waad, top)] for r in rhythms])
    every = np.concatenate([r.entropy for r in rhythms])
    obs, rnd = float(at.mean()) if len(at) else float("nan"), float(every.mean())
    return {"coupling": "entropy at WAAD peaks", "random": rnd, "observed": obs, "lift": _lift(obs, rnd),
            "n_peaks": int(len(at))}


def coupling_receiver(rhythms: Sequence[Rhythm], receivers: Sequence[Head], top: float = 0.3) -> dict:
    """Table 2 row 2: the share of receiver-FAI peaks that are also global-FAI peaks ("observed") against the share of
    global-FAI peaks among all response tokens ("random", the overlap of uniformly placed peaks)."""
    hit = n_rec = n_glob = n_tok = 0
    for r in rhythms:
        g, rec = set(peaks(r.fai, top).tolist()), peaks(r.receiver_fai(receivers), top)
        hit += sum(int(p) in g for p in rec)
        n_rec, n_glob, n_tok = n_rec + len(rec), n_glob + len(g), n_tok + len(r.fai)
    obs, rnd = hit / max(n_rec, 1), n_glob / max(n_tok, 1)
    return {"coupling": "receiver & global FAI peaks co-occur", "random": rnd, "observed": obs,
            "lift": _lift(obs, rnd), "n_peaks": n_rec}


def coupling_follow(rhythms: Sequence[Rhythm], top: float = 0.3, lag: int = 1) -> dict:
    """Table 2 row 3: the share of FAI peaks s with a WAAD peak at s − lag..s ("observed") against its expectation
    when the FAI peaks are shuffled over the response keeping their count ("random": the share of positions that
    satisfy the condition, exact rather than sampled)."""
    hit = n_fai = covered = n_tok = 0
    for r in rhythms:
        n = len(r.waad)
        w = np.zeros(n, dtype=bool)
        w[peaks(r.waad, top)] = True
        ok = np.array([w[max(0, s - lag):s + 1].any() for s in range(n)])
        f = peaks(r.fai, top)
        hit, n_fai = hit + int(ok[f].sum()), n_fai + len(f)
        covered, n_tok = covered + int(ok.sum()) * len(f), n_tok + n * len(f)
    obs, rnd = hit / max(n_fai, 1), covered / max(n_tok, 1)
    return {"coupling": "FAI peak follows/coincides with WAAD peak", "random": rnd, "observed": obs,
            "lift": _lift(obs, rnd), "n_peaks": n_fai}


# ----------------------------------------------------------------------------------------------- perturbation (Table 1)
STOPWORDS = frozenset("a an the of to is are be and or in on at by for with as it this that so we then so".split())


def content_tokens(tokens: Sequence[str]) -> set[str]:
    """S(·) of Eq. 11: the distinct content tokens of a trajectory (alphanumeric, not a stopword, not special)."""
    out = set()
    for t in tokens:
        w = t.replace("Ġ", "").replace("▁", "").strip().lower()
        if w and any(c.isalnum() for c in w) and w not in STOPWORDS and not (w.startswith("<") and w.endswith(">")):
            out.add(w)
    return out


def jaccard(a: set, b: set) -> float:
    """Eq. 11 (1.0 when both sets are empty)."""
    return len(a & b) / len(a | b) if a | b else 1.0


def fai_positions(fai_values: np.ndarray, n: int, min_tail: int = 2) -> tuple[list[int], list[int]]:
    """The `n` highest- and `n` lowest-FAI response positions that leave at least `min_tail` tokens after them."""
    ok = [i for i in range(len(fai_values) - min_tail) if not np.isnan(fai_values[i]) and i > 0]
    order = sorted(ok, key=lambda i: (fai_values[i], i))
    n = min(n, len(order) // 2)
    return sorted(order[::-1][:n]), sorted(order[:n])


@torch.no_grad()
def perturb(lm, prompt_ids: Sequence[int], response_ids: Sequence[int], positions: Sequence[int], k: int = 3,
            max_new_tokens: int = 64, rollout_model=None) -> list[dict]:
    """Table 1 / Eq. 11: at each response position i*, force each of the top-k alternatives v ≠ o_i* of
    p(· | o_<i*), roll out greedily, and compare content tokens after i* with the original's (Jaccard).

    The original token is excluded from the candidates (forcing it would reproduce the trajectory). Roll-outs and the
    original tail are cut to the same horizon, `max_new_tokens` tokens after i*. All roll-outs of one response run
    as one left-padded greedy batch (positions follow the mask), the same tokens as one position at a time.
    `rollout_model`: the HF model that scores and rolls out (default `lm.hf_model`; a plain copy of the same weights
    without the bridge's hooks is several times faster)."""
    model, tok = rollout_model if rollout_model is not None else lm.hf_model, lm.tokenizer
    prompt, resp = list(prompt_ids), list(response_ids)
    ids = torch.tensor([prompt + resp], device=lm.device)
    logits = model(input_ids=ids).logits[0].float()
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    forced = [(int(i), v) for i in positions
              for v in [int(v) for v in logits[len(prompt) + i - 1].topk(k + 1).indices if int(v) != resp[i]][:k]]
    if not forced:
        return []
    seqs = [prompt + resp[:i] + [v] for i, v in forced]  # one greedy roll-out batch, left-padded
    n = max(map(len, seqs))
    batch = torch.tensor([[pad] * (n - len(q)) + q for q in seqs], device=lm.device)
    mask = torch.tensor([[0] * (n - len(q)) + [1] * len(q) for q in seqs], device=lm.device)
    gen = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=pad)
    rows = []
    for (i, v), g in zip(forced, gen[:, n:].tolist()):
        g = g[:g.index(eos)] if eos in g else g
        orig = content_tokens(tok.convert_ids_to_tokens(resp[i + 1:i + 1 + max_new_tokens]))
        rows.append({"position": i, "original": tok.convert_ids_to_tokens(resp[i]),
                     "forced": tok.convert_ids_to_tokens(v),
                     "jaccard": jaccard(orig, content_tokens(tok.convert_ids_to_tokens(g)))})
    return rows


def couplings(rhythms: Sequence[Rhythm], receivers: Sequence[Head], top: float = 0.3, lag: int = 1) -> list[dict]:
    """The three Table 2 rows (App. A.1 protocols), pooled over the analysed responses."""
    return [coupling_entropy(rhythms, top), coupling_receiver(rhythms, receivers, top),
            coupling_follow(rhythms, top, lag)]


def perturbation_summary(trials: Sequence[dict]) -> dict:
    """Table 1 from per-example trials {"top": [jaccard, ...], "bottom": [...]}: mean Jaccard of the top- and
    bottom-FAI roll-outs, and the share of examples whose top mean is lower than their bottom mean."""
    ok = [t for t in trials if t["top"] and t["bottom"]]
    if not ok:
        raise ValueError("no example had both top- and bottom-FAI perturbations")
    top = [float(np.mean(t["top"])) for t in ok]
    bottom = [float(np.mean(t["bottom"])) for t in ok]
    return {"top_jaccard": float(np.mean(top)), "bottom_jaccard": float(np.mean(bottom)),
            "pr_top_lt_bottom": float(np.mean([a < b for a, b in zip(top, bottom)])), "n_examples": len(ok)}
