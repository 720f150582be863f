"""The head-wise option readout: a logit lens restricted to the answer options (paper 000, Sec. 3.1-3.2,
Eq. 1-3; App. F stages 1-2).

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

`support.tracing` applies this readout at every decoding step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

#: Named option sets (Sec. 3.1): 4-way and 5-way letters, and the arithmetic set of the Extensibility paragraph.
OPTION_SETS: dict[str, tuple[str, ...]] = {
    "A-D": tuple("ABCD"),
    "A-E": tuple("ABCDE"),
    "digits": tuple("0123456789"),
    "digits+ops": tuple("0123456789") + ("+", "-", "*", "="),
}
NORMS = ("raw", "final_norm")
AGGREGATES = ("mean", "first", "sum")


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
    check_norm(norm)
    o = torch.einsum("...hd,hdm->...hm", z.float(), W_O.float())
    if norm == "final_norm":
        g = torch.ones(o.shape[-1]) if gamma is None else gamma.float()
        o = g * o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + eps)
    return o @ W_UK.float()


def check_norm(norm: str) -> None:
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
    check_norm(norm)
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
