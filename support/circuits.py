"""Edge attribution (EAP, EAP-IG) on the TransformerBridge; circuits, faithfulness and emergent heads (paper 001).

**Graph** (paper 001 §2.1, Eq. 1-2; Hanna et al. 2024). Nodes N = {input, a{l}.h{h}, m{l}, logits}. A *sender*
writes into the residual stream (the embedding `hook_embed`, one head's `attn.hook_result`, one MLP's
`hook_mlp_out`); a *receiver* reads it (a head's query input `attn.hook_q_input`, a K/V head's key and value inputs
`attn.hook_k_input` / `attn.hook_v_input`, an MLP's `hook_mlp_in`, and the final residual `ln_final.hook_in`, which
the logits read). Every sender is wired to every receiver downstream of it; on the bridge every receiver input is
the sum of its upstream senders (exactly, for Qwen2/Qwen3/Llama: checked in the tests; a bias outside the heads would
add a constant, which cancels in every clean − corrupted difference), so edge-level patching is exact.
Scores live in one float32 matrix [n_senders, n_receivers]; `edge_mask` marks the real (upstream) pairs.

**Grouped-query attention.** Receivers follow the model: a layer has H query receivers but only G key and G value
receivers, one per K/V head (`a{l}.g{g}<k>`), because under GQA one K/V input feeds the n_rep = H/G query heads of
its group. The score of an edge into `a{l}.g{g}<k>` is the group's score; in the node graph (`to_networkx`) it is
attached to every query head of the group. It equals the sum, over the group's query heads, of the per-head scores
an ungrouped copy of the model gives (`ungroup_kv` builds that copy, K/V rows repeated; tested). For MHA, g = h.

**Scores** (paper 001 Eq. 3). With Δz_u = z_u − z'_u (clean minus corrupted sender output, summed over positions)
and L the metric, score(u→v) = Δz_u · (1/m) Σ_k ∂L/∂(input of v) at the point where the *input embedding* is
z'_emb + α_k (z_emb − z'_emb) (integrated gradients on the inputs, as in Hanna et al.'s EAP-IG). Steps:
``convention="right"`` takes α_k = k/m for k = 1..m (paper 001's Eq. 3; the default, and with m = 1 it is plain EAP,
the gradient at the clean run); ``convention="left"`` takes k = 0..m−1 (Hanna et al.'s code; with m = 1 the gradient
at the corrupted run, which is TransformerLens' `attribution_patch`). Sign: a score estimates
L(clean) − L(edge patched to corrupted), the metric the edge carries. Completeness: the input node's scores sum to
Δz_emb · ∂L/∂z_emb averaged on the path, which tends to L(clean) − L(corrupted) as m grows.

**Metrics**, at the answer position (the last token): ``"kl"`` = KL(p_clean ‖ p_run) (paper 001's choice; its
gradient at the clean run is zero, so plain EAP (m = 1, right) scores nothing under KL: use EAP-IG or
``"logit_diff"``), and ``"logit_diff"`` = logit[correct] − logit[incorrect] (`answers` gives the token pair).

**Pairs of different lengths** (``align="right"``, the default): a pair is right-aligned on the answer position and
the corrupted prompt is conformed to the clean prompt's length, dropping its first tokens when longer and
left-padding it with the pad token (attended, as an ordinary token) when shorter. Both runs of a pair then share
positions and the clean run's attention mask, so patching every edge reproduces the (conformed) corrupted run
exactly. Across a batch, sequences are left-padded with a masked pad token (positions follow the mask); padding
carries no attribution. ``align="strict"`` refuses pairs of different lengths.

**Memory.** Per batch: one [S, B, T, d] float32 buffer of Δz and one [R, B, T, d] buffer of gradients summed over the
m steps (no activations are kept per step), then one matmul into the [S, R] scores: (S + R)·d·4 bytes per token on
top of one forward/backward. `batch_size` bounds it.

**Circuits.** `select` takes the top-n edges by |score| and/or |score| ≥ τ (paper 001 App. A.2: n = 5000, τ = 0.1),
then prunes every edge not on a path input → … → logits. `faithfulness` runs the model with every edge outside the
circuit patched to its corrupted value (the receiver sees its current input minus Σ (current − corrupted) over the
patched edges' senders) and reports the fraction of L(clean) − L(corrupted) recovered.

**Emergent heads** (paper 001 §3.1, Fig. 2-3). `head_importance`: I(l, h), the sum of |score| over edges leaving the
head, normalised to sum to 1 over heads; `emergence_scores`: E = (I_post − I_pre)/(I_post + I_pre + 1e-6);
`emergence`: heads newly active, maintained and pruned against the base checkpoint, with cohorts by the checkpoint
where each head first appears.
"""

from __future__ import annotations

import copy
import numbers
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .artifacts import provenance, read_json, read_tensors, write_json, write_tensors
from .errors import ParameterError
from .heads import Head, HeadSet, as_head, eap_name

METRICS = ("kl", "logit_diff")
CONVENTIONS = ("right", "left")  # right: k = 1..m (paper 001 Eq. 3); left: k = 0..m-1 (Hanna et al.'s code)
ALIGNS = ("right", "strict")
DEFAULT_STEPS = 100  # paper 001 App. A.2: "ig-step is 100"
FINAL = "ln_final.hook_in"  # the final residual, read by the logits


# ----------------------------------------------------------------------------------------------- the graph
@dataclass
class Graph:
    """Senders × receivers of one model, with a float32 score per (sender, receiver) and the real-edge mask."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    scores: torch.Tensor  # [S, R] float32, zero off the edge mask
    meta: dict = field(default_factory=dict)

    @property
    def senders(self) -> list[str]:
        """input, then per layer its heads a{l}.h{h} and its MLP m{l}."""
        out = ["input"]
        for l in range(self.n_layers):
            out += [f"a{l}.h{h}" for h in range(self.n_heads)] + [f"m{l}"]
        return out

    @property
    def receivers(self) -> list[str]:
        """Per layer: query inputs a{l}.h{h}<q>, K/V inputs a{l}.g{g}<k>, a{l}.g{g}<v>, the MLP m{l}; then logits."""
        out = []
        for l in range(self.n_layers):
            out += [f"a{l}.h{h}<q>" for h in range(self.n_heads)]
            out += [f"a{l}.g{g}<k>" for g in range(self.n_kv_heads)]
            out += [f"a{l}.g{g}<v>" for g in range(self.n_kv_heads)]
            out += [f"m{l}"]
        return out + ["logits"]

    @property
    def edge_mask(self) -> torch.Tensor:
        """[S, R] bool: sender upstream of receiver (heads feed later layers' heads and their own layer's MLP)."""
        return edge_mask(self.n_layers, self.n_heads, self.n_kv_heads)

    @property
    def n_edges(self) -> int:
        return int(self.edge_mask.sum())

    def receiver_nodes(self, r: int) -> list[str]:
        """The node(s) receiver `r` feeds: its head, every query head of its K/V group, its MLP, or logits."""
        name = self.receivers[r]
        if name == "logits" or not name.endswith(">"):
            return [name]
        layer, rest = name[1:].split(".", 1)
        idx = int(rest[1:rest.index("<")])
        if rest[0] == "h":
            return [f"a{layer}.h{idx}"]
        rep = self.n_heads // self.n_kv_heads
        return [f"a{layer}.h{h}" for h in range(idx * rep, (idx + 1) * rep)]

    def to_frame(self):
        """Tidy frame of the real edges: sender, receiver, score, abs_score; strongest |score| first."""
        import pandas as pd

        s, r = torch.nonzero(self.edge_mask, as_tuple=True)
        sc = self.scores[s, r].numpy()
        snd, rcv = self.senders, self.receivers
        df = pd.DataFrame({"sender": [snd[i] for i in s.tolist()], "receiver": [rcv[j] for j in r.tolist()],
                           "score": sc.astype(np.float64), "abs_score": np.abs(sc).astype(np.float64)})
        return df.sort_values("abs_score", ascending=False, kind="stable").reset_index(drop=True)

    def to_networkx(self, circuit: "Circuit | None" = None):
        """Node-level `networkx.MultiDiGraph`: one arc per (edge, node it feeds), with `score`, `receiver`, `via`
        (q/k/v/mlp/logits). K/V group edges are attached to each query head of the group. Only the circuit's edges
        when `circuit` is given."""
        import networkx as nx

        keep = self.edge_mask if circuit is None else circuit.mask(self)
        g = nx.MultiDiGraph()
        g.add_nodes_from(node_names(self.n_layers, self.n_heads))
        snd, rcv = self.senders, self.receivers
        for s, r in torch.nonzero(keep).tolist():
            name = rcv[r]
            via = name[-2] if name.endswith(">") else ("logits" if name == "logits" else "mlp")
            for node in self.receiver_nodes(r):
                g.add_edge(snd[s], node, score=float(self.scores[s, r]), receiver=name, via=via)
        if circuit is not None:
            g.remove_nodes_from([n for n in list(g.nodes) if n not in set(circuit.nodes)])
        return g


def node_names(n_layers: int, n_heads: int) -> list[str]:
    """Eq. 1: N = {input, a{l}.h{h}, m{l}, logits}, in topological order."""
    out = ["input"]
    for l in range(n_layers):
        out += [f"a{l}.h{h}" for h in range(n_heads)] + [f"m{l}"]
    return out + ["logits"]


def _layers(n_layers: int, n_heads: int, n_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sender layer, sender is MLP, receiver layer): input = −1, logits = n_layers."""
    s_layer, s_mlp, r_layer = [-1], [False], []
    for l in range(n_layers):
        s_layer += [l] * (n_heads + 1)
        s_mlp += [False] * n_heads + [True]
        r_layer += [l] * (n_heads + 2 * n_kv_heads) + [l + 0.5]  # the MLP reads after its layer's heads
    r_layer.append(n_layers)
    return torch.tensor(s_layer, dtype=torch.float32), torch.tensor(s_mlp), torch.tensor(r_layer)


def edge_mask(n_layers: int, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """[S, R] bool: True where the sender writes before the receiver reads (Eq. 2 restricted to the DAG)."""
    s_layer, s_mlp, r_layer = _layers(n_layers, n_heads, n_kv_heads)
    written = s_layer + 0.5 * s_mlp.float()  # a head writes at l, an MLP at l + 0.5
    return written[:, None] < r_layer[None, :]


def empty_graph(model: Any) -> Graph:
    """A zero-score graph for `model` (a LoadedModel or a TransformerBridge)."""
    L, H, G, _ = _dims(_bridge(model))
    return Graph(L, H, G, torch.zeros(1 + L * (H + 1), L * (H + 2 * G + 1) + 1))


# ----------------------------------------------------------------------------------------------- model plumbing
def _bridge(model: Any):
    """The TransformerBridge of a LoadedModel (or the bridge itself)."""
    return model.bridge if hasattr(model, "bridge") else model


def _tokenizer(model: Any):
    return getattr(model, "tokenizer", None) or getattr(_bridge(model), "tokenizer", None)


def _dims(bridge) -> tuple[int, int, int, int]:
    """(layers, query heads, K/V heads, d_model) from the bridge config."""
    c = bridge.cfg
    kv = getattr(c, "n_key_value_heads", None) or c.n_heads
    return int(c.n_layers), int(c.n_heads), int(kv), int(c.d_model)


def _device(bridge) -> torch.device:
    return next(bridge.parameters()).device


@contextmanager
def edge_hooks_on(bridge) -> Iterator[None]:
    """Turn on the bridge hooks edges need (per-head results, split q/k/v inputs, MLP inputs); restore on exit."""
    c = bridge.cfg
    saved = (c.use_attn_result, c.use_split_qkv_input, c.use_hook_mlp_in, bool(getattr(c, "use_attn_in", False)))
    try:
        if saved[3]:
            bridge.set_use_attn_in(False)  # mutually exclusive with the split inputs
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
        yield
    finally:
        bridge.set_use_attn_result(saved[0])
        bridge.set_use_split_qkv_input(saved[1])
        bridge.set_use_hook_mlp_in(saved[2])
        if saved[3]:
            bridge.set_use_attn_in(True)


def _sender_slots(L: int, H: int) -> list[tuple[str, slice]]:
    """(hook name, sender rows) in sender order."""
    out = [("hook_embed", slice(0, 1))]
    for l in range(L):
        base = 1 + l * (H + 1)
        out += [(f"blocks.{l}.attn.hook_result", slice(base, base + H)),
                (f"blocks.{l}.hook_mlp_out", slice(base + H, base + H + 1))]
    return out


def _receiver_slots(L: int, H: int, G: int) -> list[tuple[str, slice]]:
    """(hook name, receiver columns) in receiver order."""
    out = []
    for l in range(L):
        base = l * (H + 2 * G + 1)
        out += [(f"blocks.{l}.attn.hook_q_input", slice(base, base + H)),
                (f"blocks.{l}.attn.hook_k_input", slice(base + H, base + H + G)),
                (f"blocks.{l}.attn.hook_v_input", slice(base + H + G, base + H + 2 * G)),
                (f"blocks.{l}.hook_mlp_in", slice(base + H + 2 * G, base + H + 2 * G + 1))]
    n = L * (H + 2 * G + 1)
    return out + [(FINAL, slice(n, n + 1))]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[B, T, d] or [B, T, k, d] -> [k, B, T, d] float32 (k = 1 for a whole-residual hook)."""
    x = x.float()
    return x.unsqueeze(0) if x.dim() == 3 else x.permute(2, 0, 1, 3)


def _unrows(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rows`, in `like`'s shape and dtype."""
    return (x[0] if like.dim() == 3 else x.permute(1, 2, 0, 3)).to(like.dtype)


# ----------------------------------------------------------------------------------------------- inputs
@dataclass
class Pairs:
    """Clean/corrupted token-id pairs, conformed to the alignment policy, with the answer token pairs."""

    clean: list[list[int]]
    corrupted: list[list[int]]
    answers: torch.Tensor | None  # [N, 2] (correct, incorrect) token ids, for logit_diff
    pad_id: int
    n_conformed: int = 0

    def __len__(self) -> int:
        return len(self.clean)

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple]:
        """(clean ids, corrupted ids, attention mask, answers | None, index slice), each [B, T], left-padded."""
        for lo in range(0, len(self), batch_size):
            idx = slice(lo, min(len(self), lo + batch_size))
            c, x = self.clean[idx], self.corrupted[idx]
            T = max(map(len, c))
            pad = [[self.pad_id] * (T - len(s)) for s in c]
            ids_c = torch.tensor([p + s for p, s in zip(pad, c)], device=device)
            ids_x = torch.tensor([p + s for p, s in zip(pad, x)], device=device)
            mask = torch.tensor([[0] * len(p) + [1] * len(s) for p, s in zip(pad, c)], device=device)
            ans = None if self.answers is None else self.answers[idx].to(device)
            yield ids_c, ids_x, mask, ans, idx


def _ids(model: Any, seq: Any, what: str) -> list[int]:
    if isinstance(seq, str):
        tok = _tokenizer(model)
        if tok is None:
            raise ParameterError(f"{what} is text but the model has no tokenizer; pass token ids instead")
        seq = tok(seq).input_ids
    out = [int(t) for t in (seq.tolist() if isinstance(seq, torch.Tensor) else seq)]
    if not out:
        raise ParameterError(f"{what} is empty; every prompt needs at least one token")
    return out


def _answer_id(model: Any, a: Any) -> int:
    if isinstance(a, str):
        tok = _tokenizer(model)
        i = None if tok is None else tok.convert_tokens_to_ids(a)
        if i is None or (tok.unk_token_id is not None and i == tok.unk_token_id and a != tok.unk_token):
            raise ParameterError(f"answer {a!r} is not a single token of the tokenizer; pass token ids instead")
        return int(i)
    return int(a)


def conform(clean: list[int], corrupted: list[int], pad_id: int) -> list[int]:
    """The alignment policy: the corrupted ids right-aligned to the clean length (first tokens dropped, or
    left-padded with `pad_id`)."""
    n = len(clean)
    return corrupted[-n:] if len(corrupted) >= n else [pad_id] * (n - len(corrupted)) + list(corrupted)


def pairs(model: Any, clean: Sequence, corrupted: Sequence, answers: Sequence | None = None,
          align: str = "right") -> Pairs:
    """Tokenize and check clean/corrupted pairs (text or token ids) and their (correct, incorrect) answers."""
    if align not in ALIGNS:
        raise ParameterError(f"unknown alignment {align!r}; valid choices: {list(ALIGNS)}")
    if isinstance(clean, (str, torch.Tensor)) or isinstance(corrupted, (str, torch.Tensor)):
        raise ParameterError("clean and corrupted must be sequences of prompts (text or token-id lists)")
    if len(clean) != len(corrupted) or not len(clean):
        raise ParameterError(f"clean and corrupted prompts must pair up one to one; got {len(clean)} clean and "
                             f"{len(corrupted)} corrupted (valid: the same non-zero count)")
    c = [_ids(model, s, f"clean prompt {i}") for i, s in enumerate(clean)]
    x = [_ids(model, s, f"corrupted prompt {i}") for i, s in enumerate(corrupted)]
    bad = [i for i, (a, b) in enumerate(zip(c, x)) if len(a) != len(b)]
    if bad and align == "strict":
        raise ParameterError(f"pairs {bad[:10]} have clean and corrupted prompts of different lengths; use "
                             f"align='right' (valid choices: {list(ALIGNS)})")
    tok = _tokenizer(model)
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
    ans = None
    if answers is not None:
        if len(answers) != len(c):
            raise ParameterError(f"got {len(answers)} answer pairs for {len(c)} prompt pairs (valid: one per pair)")
        ans = torch.tensor([[_answer_id(model, a) for a in pair] for pair in answers], dtype=torch.long)
        if ans.dim() != 2 or ans.shape[1] != 2:
            raise ParameterError("answers must be (correct, incorrect) token pairs, one per prompt pair")
    return Pairs(c, [conform(a, b, pad) for a, b in zip(c, x)], ans, int(pad), len(bad))


def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < lo:
        raise ParameterError(f"{name}={v!r} is out of range; valid choices: an integer >= {lo}")
    return int(v)


def check_method(metric: str, convention: str, m: Any, batch_size: Any, answers: Any) -> None:
    """Refuse unknown metrics and conventions, m < 1, batch_size < 1, logit_diff without answers (before any work)."""
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; valid choices: {list(METRICS)}")
    if convention not in CONVENTIONS:
        raise ParameterError(f"unknown IG convention {convention!r}; valid choices: {list(CONVENTIONS)} "
                             "(right: k = 1..m, paper 001 Eq. 3; left: k = 0..m-1, Hanna et al.'s code)")
    _check_int("m (IG steps)", m)
    _check_int("batch_size", batch_size)
    if metric == "logit_diff" and answers is None:
        raise ParameterError("metric 'logit_diff' needs answers: one (correct, incorrect) token pair per prompt pair")


# ----------------------------------------------------------------------------------------------- metrics
def metric_value(logits: torch.Tensor, clean_logp: torch.Tensor, answers: torch.Tensor | None,
                 metric: str) -> torch.Tensor:
    """Per-example metric at the answer position. logits, clean_logp: [B, V] (float32) -> [B].

    kl: KL(p_clean ‖ p) = Σ_v p_clean (log p_clean − log p); logit_diff: logit[correct] − logit[incorrect]."""
    if metric == "kl":
        return (clean_logp.exp() * (clean_logp - torch.log_softmax(logits, -1))).sum(-1)
    if metric == "logit_diff":
        return logits.gather(1, answers[:, :1])[:, 0] - logits.gather(1, answers[:, 1:])[:, 0]
    raise ParameterError(f"unknown metric {metric!r}; valid choices: {list(METRICS)}")


def _capture(bridge, ids: torch.Tensor, mask: torch.Tensor, buf: torch.Tensor, sign: float) -> tuple:
    """One no-grad run adding sign × every sender's output into buf [S, B, T, d]; returns (last logits, embedding)."""
    L, H, _, _ = _dims(bridge)
    emb: dict = {}

    def add(rows: slice):
        def hook(x, hook):
            buf[rows] += sign * _rows(x)
            if rows.start == 0:
                emb["e"] = x.detach().clone()
        return hook

    with torch.no_grad(), bridge.hooks(fwd_hooks=[(n, add(s)) for n, s in _sender_slots(L, H)]):
        logits = bridge(ids, attention_mask=mask)
    return logits[:, -1].float(), emb["e"]


# ----------------------------------------------------------------------------------------------- attribution
def attribute(model: Any, clean: Sequence, corrupted: Sequence, answers: Sequence | None = None, *,
              metric: str = "kl", m: int = DEFAULT_STEPS, convention: str = "right", batch_size: int = 8,
              align: str = "right") -> Graph:
    """EAP-IG edge scores (paper 001 Eq. 3; Hanna et al. 2024), averaged over the pairs; m = 1 is plain EAP.

    `model`: a LoadedModel or TransformerBridge. `clean`/`corrupted`: paired prompts (text or token ids); `answers`:
    (correct, incorrect) tokens per pair, needed for ``metric="logit_diff"``. See the module docstring for the
    conventions. `meta` records the method, the mean metrics L(clean), L(corrupted) and the mean input attribution
    (Δz_emb · ∂L/∂z_emb on the path), whose gap to L(clean) − L(corrupted) is the Riemann error."""
    check_method(metric, convention, m, batch_size, answers)
    bridge = _bridge(model)
    P = pairs(model, clean, corrupted, answers, align)
    L, H, G, d = _dims(bridge)
    graph = empty_graph(bridge)
    S, R = graph.scores.shape
    dev = _device(bridge)
    alphas = [k / m for k in (range(1, m + 1) if convention == "right" else range(m))]
    scores = torch.zeros(S, R, device=dev)
    sums = {"clean": 0.0, "corrupted": 0.0, "input": 0.0}
    with edge_hooks_on(bridge):
        for ids_c, ids_x, mask, ans, _ in P.batches(batch_size, dev):
            B, T = ids_c.shape
            delta = torch.zeros(S, B, T, d, device=dev)
            last_c, e_c = _capture(bridge, ids_c, mask, delta, 1.0)
            last_x, e_x = _capture(bridge, ids_x, mask, delta, -1.0)
            delta *= mask[None, :, :, None]  # padding carries no attribution
            clean_logp = torch.log_softmax(last_c, -1)
            sums["clean"] += float(metric_value(last_c, clean_logp, ans, metric).sum())
            sums["corrupted"] += float(metric_value(last_x, clean_logp, ans, metric).sum())
            grads = torch.zeros(R, B, T, d, device=dev)
            g_emb = _integrated_grads(bridge, ids_c, mask, e_c, e_x, alphas, clean_logp, ans, metric, grads)
            sums["input"] += float(((e_c - e_x).float() * g_emb * mask[..., None]).sum())
            scores += delta.reshape(S, -1) @ grads.reshape(R, -1).T
            del delta, grads
    n = len(P)
    graph.scores = (scores / (n * len(alphas))).cpu() * graph.edge_mask
    graph.meta = {"method": "EAP" if m == 1 else "EAP-IG", "metric": metric, "m": m, "convention": convention,
                  "align": align, "n_pairs": n, "n_conformed": P.n_conformed,
                  "metric_clean": sums["clean"] / n, "metric_corrupted": sums["corrupted"] / n,
                  "input_attribution": sums["input"] / (n * len(alphas))}
    return graph


def _integrated_grads(bridge, ids, mask, e_c, e_x, alphas, clean_logp, ans, metric, grads) -> torch.Tensor:
    """Σ over the path points of ∂L/∂(receiver input) into grads [R, B, T, d]; returns Σ ∂L/∂z_emb [B, T, d].

    The embedding is replaced by a leaf tensor on the path; no backward hook fires there (a forward hook replaced
    the output), so its gradient is the leaf's, taken with `torch.autograd.grad` (no parameter .grad is touched)."""
    L, H, G, _ = _dims(bridge)

    def acc(cols: slice):
        def hook(g, hook):
            grads[cols] += _rows(g)
        return hook

    bwd = [(n, acc(c)) for n, c in _receiver_slots(L, H, G)]
    g_emb = torch.zeros(e_c.shape, device=e_c.device)
    for a in alphas:
        leaf = (e_x + a * (e_c - e_x)).detach().requires_grad_(True)
        with bridge.hooks(fwd_hooks=[("hook_embed", lambda x, hook: leaf)], bwd_hooks=bwd):
            logits = bridge(ids, attention_mask=mask)
            value = metric_value(logits[:, -1].float(), clean_logp, ans, metric).sum()
            (g,) = torch.autograd.grad(value, leaf)
        g_emb += g.float()
    return g_emb


def eap(model: Any, clean: Sequence, corrupted: Sequence, answers: Sequence | None = None, *,
        metric: str = "logit_diff", batch_size: int = 8, align: str = "right") -> Graph:
    """Plain EAP (Nanda 2023; Syed et al.): the gradient at the clean run times Δz (m = 1, right convention).

    Defaults to logit_diff: under KL the gradient at the clean run is zero."""
    return attribute(model, clean, corrupted, answers, metric=metric, m=1, convention="right",
                     batch_size=batch_size, align=align)


def eap_ig(model: Any, clean: Sequence, corrupted: Sequence, answers: Sequence | None = None, *,
           metric: str = "kl", m: int = DEFAULT_STEPS, convention: str = "right", batch_size: int = 8,
           align: str = "right") -> Graph:
    """EAP-IG on the inputs (paper 001 Eq. 3 with KL, m = 100 as in App. A.2)."""
    return attribute(model, clean, corrupted, answers, metric=metric, m=m, convention=convention,
                     batch_size=batch_size, align=align)


# ----------------------------------------------------------------------------------------------- edge patching
def _patched_runs(bridge, ids_c, mask, patches: Sequence[torch.Tensor],
                  corrupted_buf: torch.Tensor) -> Iterator[torch.Tensor]:
    """One run per [S, R] mask of edges patched to corrupted (True = patched); yields each run's last logits [B, V].

    Senders record (current − corrupted) output as they fire; each receiver sees its current input minus that
    difference summed over its patched edges' senders, i.e. Σ_{kept} current + Σ_{patched} corrupted."""
    L, H, G, _ = _dims(bridge)
    diff = torch.zeros_like(corrupted_buf)

    def send(rows: slice):
        def hook(x, hook):
            diff[rows] = _rows(x) - corrupted_buf[rows]
        return hook

    def receive(w: torch.Tensor):
        used = torch.nonzero(w.any(1)).flatten()
        w = w[used].float()

        def hook(x, hook):
            if used.numel() == 0:
                return None
            return _unrows(_rows(x) - torch.einsum("sbtd,sr->rbtd", diff[used], w), x)
        return hook

    for off in patches:
        off = off.to(diff.device)
        hooks = [(n, send(s)) for n, s in _sender_slots(L, H)] + \
                [(n, receive(off[:, c])) for n, c in _receiver_slots(L, H, G)]
        diff.zero_()
        with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
            logits = bridge(ids_c, attention_mask=mask)[:, -1].float()
        yield logits


def _check_masks(bridge, patches: Sequence[torch.Tensor]) -> None:
    L, H, G, _ = _dims(bridge)
    shape = (1 + L * (H + 1), L * (H + 2 * G + 1) + 1)
    for p in patches:
        if tuple(p.shape) != shape or p.dtype != torch.bool:
            raise ParameterError(f"an edge mask is {p.dtype} {tuple(p.shape)}; valid: torch.bool {shape} for this "
                                 "model (True = edge patched to corrupted)")


def _patch_batches(model, clean, corrupted, patches, answers, metric, batch_size, align) -> Iterator[tuple]:
    """Per batch: (answers, clean last logits, corrupted last logits, iterator of patched last logits)."""
    check_method(metric, "right", 1, batch_size, answers)
    bridge = _bridge(model)
    P = pairs(model, clean, corrupted, answers, align)
    _check_masks(bridge, patches)
    S, d = 1 + bridge.cfg.n_layers * (bridge.cfg.n_heads + 1), int(bridge.cfg.d_model)
    dev = _device(bridge)
    with edge_hooks_on(bridge):
        for ids_c, ids_x, mask, ans, _ in P.batches(batch_size, dev):
            buf = torch.zeros(S, *ids_c.shape, d, device=dev)
            last_x, _ = _capture(bridge, ids_x, mask, buf, 1.0)
            with torch.no_grad():
                last_c = bridge(ids_c, attention_mask=mask)[:, -1].float()
            yield ans, last_c, last_x, _patched_runs(bridge, ids_c, mask, patches, buf)


def patch_edges(model: Any, clean: Sequence, corrupted: Sequence, patched: torch.Tensor, *,
                batch_size: int = 8, align: str = "right") -> torch.Tensor:
    """Answer-position logits [N, V] of the clean runs with the edges of `patched` ([S, R] bool) set to their
    corrupted values. Every edge patched gives the corrupted run, none the clean run (tested)."""
    out = []
    for _, _, _, runs in _patch_batches(model, clean, corrupted, [patched], None, "kl", batch_size, align):
        out += list(runs)
    return torch.cat(out).cpu()


def patched_metrics(model: Any, clean: Sequence, corrupted: Sequence, patches: Sequence[torch.Tensor],
                    answers: Sequence | None = None, *, metric: str = "kl", batch_size: int = 8,
                    align: str = "right") -> dict:
    """Mean metric of the clean run, the corrupted run, and one run per mask of edges patched to corrupted:
    {"clean": float, "corrupted": float, "patched": [float per mask]}."""
    tot, n = {"clean": 0.0, "corrupted": 0.0, "patched": torch.zeros(len(patches))}, 0
    for ans, last_c, last_x, runs in _patch_batches(model, clean, corrupted, patches, answers, metric, batch_size,
                                                    align):
        clean_logp = torch.log_softmax(last_c, -1)
        tot["clean"] += float(metric_value(last_c, clean_logp, ans, metric).sum())
        tot["corrupted"] += float(metric_value(last_x, clean_logp, ans, metric).sum())
        for i, logits in enumerate(runs):
            tot["patched"][i] += float(metric_value(logits, clean_logp, ans, metric).sum())
        n += len(last_c)
    return {"clean": tot["clean"] / n, "corrupted": tot["corrupted"] / n, "patched": (tot["patched"] / n).tolist()}


def exact_edge_scores(model: Any, clean: Sequence, corrupted: Sequence, edges: Sequence[tuple[int, int]],
                      answers: Sequence | None = None, *, metric: str = "kl", batch_size: int = 8,
                      align: str = "right") -> torch.Tensor:
    """Exact single-edge patching (validation): L(clean) − L(edge (s, r) patched to corrupted), mean over pairs.

    The same sign as the attribution scores. One forward pass per edge and batch."""
    graph = empty_graph(model)
    real = graph.edge_mask
    masks = []
    for s, r in edges:
        if not real[s, r]:
            raise ParameterError(f"({s}, {r}) is not an edge: {graph.senders[s]} does not write before "
                                 f"{graph.receivers[r]} reads")
        m = torch.zeros_like(real)
        m[s, r] = True
        masks.append(m)
    res = patched_metrics(model, clean, corrupted, masks, answers, metric=metric, batch_size=batch_size, align=align)
    return res["clean"] - torch.tensor(res["patched"])


# ----------------------------------------------------------------------------------------------- circuits
@dataclass
class Circuit:
    """A circuit C ⊆ (N, E): kept edges (sender, receiver) with their scores, and the nodes they connect."""

    edges: list[tuple[str, str]]
    scores: list[float]
    nodes: list[str]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    params: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.edges)

    @property
    def heads(self) -> list[Head]:
        """The attention heads among the nodes, as (layer, head), sorted."""
        return sorted(as_head(n) for n in self.nodes if n.startswith("a"))

    def mask(self, graph: Graph) -> torch.Tensor:
        """[S, R] bool of the circuit's edges in `graph`'s layout."""
        si = {n: i for i, n in enumerate(graph.senders)}
        ri = {n: i for i, n in enumerate(graph.receivers)}
        out = torch.zeros(len(si), len(ri), dtype=torch.bool)
        for s, r in self.edges:
            out[si[s], ri[r]] = True
        return out

    def head_set(self, kind: str = "circuit") -> HeadSet:
        """The circuit's heads as a `HeadSet` (what chapters 04 and 06 read)."""
        return HeadSet(kind=kind, heads=self.heads, n_layers=self.n_layers, n_heads=self.n_heads,
                       criteria=dict(self.params), provenance=dict(self.provenance))


def _alive(graph: Graph, keep: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Edges of `keep` on some path input → … → logits, and the nodes left (Hanna et al.'s pruning)."""
    snd = graph.senders
    arcs: dict[str, set[str]] = {}
    back: dict[str, set[str]] = {}
    pairs_ = torch.nonzero(keep).tolist()
    for s, r in pairs_:
        for node in graph.receiver_nodes(r):
            arcs.setdefault(snd[s], set()).add(node)
            back.setdefault(node, set()).add(snd[s])

    def reach(start: str, nbrs: dict) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for n in nbrs.get(todo.pop(), ()):
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        return seen

    alive = reach("input", arcs) & reach("logits", back)
    out = torch.zeros_like(keep)
    for s, r in pairs_:
        if snd[s] in alive and any(n in alive for n in graph.receiver_nodes(r)):
            out[s, r] = True
    order = node_names(graph.n_layers, graph.n_heads)
    return out, [n for n in order if n in alive]


def select(graph: Graph, top_n: int | None = None, threshold: float | None = None) -> Circuit:
    """Top-n edges by |score| and/or |score| ≥ τ, then prune edges off every input → logits path (paper 001 §2.1,
    App. A.2). Ties at the n-th edge go to the earlier (sender, receiver) index."""
    total = graph.n_edges
    if top_n is None and threshold is None:
        raise ParameterError("select needs top_n (an integer in [1, n_edges]) and/or threshold (a float >= 0)")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, numbers.Integral)
                              or not 1 <= top_n <= total):
        raise ParameterError(f"top_n={top_n!r} is out of range for this graph; valid choices: an integer in "
                             f"[1, {total}] (the number of edges)")
    if threshold is not None and not (isinstance(threshold, numbers.Real) and threshold >= 0):
        raise ParameterError(f"threshold={threshold!r} is out of range; valid choices: a float >= 0")
    mask = graph.edge_mask
    a = graph.scores.abs().masked_fill(~mask, -1.0).flatten()
    keep = mask.clone()
    if top_n is not None:
        order = torch.from_numpy(np.argsort(-a.numpy(), kind="stable")[:top_n].copy())
        keep = torch.zeros_like(a, dtype=torch.bool)
        keep[order] = True
        keep = keep.view_as(mask) & mask
    if threshold is not None:
        keep &= graph.scores.abs() >= threshold
    kept, nodes = _alive(graph, keep)
    snd, rcv = graph.senders, graph.receivers
    idx = torch.nonzero(kept).tolist()
    params = {**graph.meta, "top_n": top_n, "threshold": threshold, "n_selected": int(keep.sum())}
    return Circuit(edges=[(snd[s], rcv[r]) for s, r in idx], scores=[float(graph.scores[s, r]) for s, r in idx],
                   nodes=nodes, n_layers=graph.n_layers, n_heads=graph.n_heads, n_kv_heads=graph.n_kv_heads,
                   params=params)


def faithfulness(model: Any, graph: Graph, circuit: Circuit, clean: Sequence, corrupted: Sequence,
                 answers: Sequence | None = None, *, metric: str = "kl", batch_size: int = 8,
                 align: str = "right") -> float:
    """Fraction of the metric the circuit recovers, every edge outside it patched to corrupted:
    (L(circuit) − L(corrupted)) / (L(clean) − L(corrupted)), from the mean metrics over the pairs."""
    res = patched_metrics(model, clean, corrupted, [graph.edge_mask & ~circuit.mask(graph)], answers, metric=metric,
                          batch_size=batch_size, align=align)
    return _recovered(res["patched"][0], res)


def _recovered(value: float, res: Mapping) -> float:
    gap = res["clean"] - res["corrupted"]
    return float("nan") if gap == 0 else (value - res["corrupted"]) / gap


def faithfulness_curve(model: Any, graph: Graph, ns: Sequence[int], clean: Sequence, corrupted: Sequence,
                       answers: Sequence | None = None, *, metric: str = "kl", batch_size: int = 8,
                       align: str = "right"):
    """Faithfulness of the top-n circuits, one row per n: n, edges (after pruning), nodes, heads, metric,
    faithfulness (tidy pandas frame). The corrupted activations are computed once per batch for all n."""
    import pandas as pd

    circuits = [select(graph, top_n=n) for n in ns]
    masks = [graph.edge_mask & ~c.mask(graph) for c in circuits]
    res = patched_metrics(model, clean, corrupted, masks, answers, metric=metric, batch_size=batch_size, align=align)
    return pd.DataFrame({"n": list(ns), "edges": [len(c) for c in circuits],
                         "nodes": [len(c.nodes) for c in circuits], "heads": [len(c.heads) for c in circuits],
                         "metric": res["patched"], "faithfulness": [_recovered(v, res) for v in res["patched"]]})


# ----------------------------------------------------------------------------------------------- emergent heads
def head_importance(graph: Graph, circuit: Circuit | None = None):
    """I(l, h) = Σ |score| over edges leaving head (l, h) (circuit edges only when given), normalised to sum to 1
    over heads (paper 001 App. A). Tidy frame: layer, head, name, importance."""
    import pandas as pd

    keep = graph.edge_mask if circuit is None else circuit.mask(graph)
    per_sender = (graph.scores.abs() * keep).sum(1)
    L, H = graph.n_layers, graph.n_heads
    rows = torch.tensor([1 + l * (H + 1) + h for l in range(L) for h in range(H)])
    imp = per_sender[rows].double()
    imp = imp / imp.sum() if float(imp.sum()) > 0 else imp
    return pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                         "name": [eap_name((l, h)) for l in range(L) for h in range(H)], "importance": imp.numpy()})


def emergence_scores(pre: Any, post: Any, eps: float = 1e-6):
    """E(l, h) = (I_post − I_pre) / (I_post + I_pre + eps) per head; `pre`/`post` are Graphs or `head_importance`
    frames of the same architecture. Tidy frame: layer, head, name, I_pre, I_post, E."""
    a = head_importance(pre) if isinstance(pre, Graph) else pre
    b = head_importance(post) if isinstance(post, Graph) else post
    if len(a) != len(b):
        raise ParameterError(f"pre and post have {len(a)} and {len(b)} heads; valid: two models of one architecture")
    out = a[["layer", "head", "name"]].copy()
    out["I_pre"], out["I_post"] = a["importance"].to_numpy(), b["importance"].to_numpy()
    out["E"] = (out["I_post"] - out["I_pre"]) / (out["I_post"] + out["I_pre"] + eps)
    return out


@dataclass
class Emergence:
    """Emergent heads across checkpoints (paper 001 Fig. 2-3): `summary` (per checkpoint: active, new, maintained,
    pruned), `cohorts` (per checkpoint and cohort: active heads; stacked areas of Fig. 2A) and `heads` (per head
    and checkpoint: status and cohort)."""

    summary: Any
    cohorts: Any
    heads: Any


def emergence(head_sets: Mapping[str, Any]) -> Emergence:
    """Compare each checkpoint's circuit heads with the first (the base model), in the given order.

    `head_sets`: {checkpoint label: Circuit | HeadSet | iterable of heads}. A head is *new* when active at a
    checkpoint but not in the base, *maintained* when in both, *pruned* when in the base but not active there; its
    *cohort* is the label of the first checkpoint where it is active (the base label for base heads)."""
    import pandas as pd

    if len(head_sets) < 2:
        raise ParameterError(f"emergence needs a base and at least one checkpoint; got {len(head_sets)} head sets")
    labels = list(head_sets)
    sets = {k: set(_heads_of(v)) for k, v in head_sets.items()}
    base = sets[labels[0]]
    cohort: dict[Head, str] = {}
    for k in labels:
        for h in sorted(sets[k]):
            cohort.setdefault(h, k)
    rows = []
    for k in labels:
        for h in sorted(sets[k] | base):
            status = "maintained" if h in sets[k] and h in base else ("new" if h in sets[k] else "pruned")
            rows.append({"checkpoint": k, "layer": h[0], "head": h[1], "name": eap_name(h), "status": status,
                         "cohort": cohort[h]})
    heads = pd.DataFrame(rows, columns=["checkpoint", "layer", "head", "name", "status", "cohort"])
    summary = pd.DataFrame([{"checkpoint": k, "active": len(sets[k]), "new": len(sets[k] - base),
                             "maintained": len(sets[k] & base), "pruned": len(base - sets[k])} for k in labels])
    active = heads[heads.status != "pruned"]
    cohorts = (active.groupby(["checkpoint", "cohort"], sort=False).size().rename("heads").reset_index())
    order = {k: i for i, k in enumerate(labels)}
    cohorts = cohorts.sort_values(["checkpoint", "cohort"], key=lambda s: s.map(order)).reset_index(drop=True)
    return Emergence(summary=summary, cohorts=cohorts, heads=heads)


def _heads_of(x: Any) -> list[Head]:
    if isinstance(x, Circuit):
        return x.heads
    if isinstance(x, HeadSet):
        return list(x.heads)
    return [as_head(h) for h in x]


# ----------------------------------------------------------------------------------------------- files
def _identity(model: Any) -> dict:
    if model is None:
        return {}
    return dict(model.identity()) if hasattr(model, "identity") else dict(model)


def save_circuit(path: Path | str, circuit: Circuit, model: Any = None, dataset: str | None = None,
                 example_ids: Sequence | None = None) -> Path:
    """Write a circuit as JSON with provenance (model identity, dataset, example ids, parameters, code version).
    `model`: a LoadedModel or its `identity()`."""
    payload = {k: getattr(circuit, k) for k in ("n_layers", "n_heads", "n_kv_heads", "nodes")}
    payload["edges"] = [[s, r, float(v)] for (s, r), v in zip(circuit.edges, circuit.scores)]
    prov = provenance(_identity(model), dataset, example_ids, circuit.params, kind="circuit")
    circuit.provenance = prov
    return write_json(path, payload, prov)


def load_circuit(path: Path | str, expect_model: Mapping | None) -> Circuit:
    """Read a circuit; ProvenanceError if it was made with another model than `expect_model` (a
    `LoadedModel.identity()`; None only to inspect a file deliberately)."""
    body = read_json(path, expect_model=expect_model)
    prov = body.get("provenance", {})
    return Circuit(edges=[(s, r) for s, r, _ in body["edges"]], scores=[float(v) for _, _, v in body["edges"]],
                   nodes=list(body["nodes"]), n_layers=int(body["n_layers"]), n_heads=int(body["n_heads"]),
                   n_kv_heads=int(body["n_kv_heads"]), params=dict(prov.get("params") or {}), provenance=prov)


def save_graph(path: Path | str, graph: Graph, model: Any = None, dataset: str | None = None,
               example_ids: Sequence | None = None) -> Path:
    """Write a graph's scores as safetensors with its provenance (shape and method in the params)."""
    params = {**graph.meta, "n_layers": graph.n_layers, "n_heads": graph.n_heads, "n_kv_heads": graph.n_kv_heads}
    return write_tensors(path, {"scores": graph.scores}, provenance(_identity(model), dataset, example_ids, params,
                                                                    kind="edge_scores"))


def load_graph(path: Path | str, expect_model: Mapping | None) -> Graph:
    """Read a graph written by `save_graph` (checking the model identity when `expect_model` is given)."""
    tensors, prov = read_tensors(path, expect_model=expect_model)
    p = dict(prov.get("params") or {})
    dims = [int(p.pop(k)) for k in ("n_layers", "n_heads", "n_kv_heads")]
    return Graph(*dims, scores=tensors["scores"].float(), meta=p)


# ----------------------------------------------------------------------------------------------- GQA
def regroup(graph: Graph, n_kv_heads: int) -> Graph:
    """The graph of an ungrouped model (one K/V receiver per query head, `ungroup_kv` or SHFT's ``ungrouped``
    policy) in the grouped layout of a model with `n_kv_heads` K/V heads: each group's K (V) score is the sum of
    its query heads' K (V) scores (exact for `ungroup_kv`, tested), so graphs of both kinds compare edge by edge.
    A graph already in that layout is returned as is."""
    L, H, G = graph.n_layers, graph.n_heads, int(n_kv_heads)
    if graph.n_kv_heads == G:
        return graph
    if graph.n_kv_heads != H or G < 1 or H % G:
        raise ParameterError(f"cannot regroup a graph with {graph.n_kv_heads} K/V receivers per layer into {G} "
                             f"groups of {H} query heads; valid: an ungrouped graph ({H} K/V receivers) and a "
                             f"divisor of {H}")
    cols = []
    for l in range(L):
        base = l * (3 * H + 1)
        cols.append(graph.scores[:, base:base + H])
        for off in (H, 2 * H):
            cols.append(graph.scores[:, base + off:base + off + H].reshape(-1, G, H // G).sum(-1))
        cols.append(graph.scores[:, base + 3 * H:base + 3 * H + 1])
    cols.append(graph.scores[:, -1:])
    return Graph(L, H, G, torch.cat(cols, 1), {**graph.meta, "regrouped_from": H})


def ungroup_kv(hf_model):
    """An equivalent HF model with one K/V head per query head (K/V projection rows repeated per group).

    Same logits; its bridge has H key and value receivers per layer instead of G, and the score of a grouped K/V
    edge equals the sum of the ungrouped scores over the group's query heads (tested). Pass the plain HF model
    before it is bridged (booting a TransformerBridge rewraps the model's modules in place). A copy of `hf_model`
    ungrouped by `support.finetune.ungroup_layers`, the rewrite SHFT's ``ungrouped`` policy applies per layer."""
    from .finetune import ungroup_layers

    if any("_original_component" in k for k in hf_model.state_dict()):
        raise ParameterError("ungroup_kv needs the plain HF model; this one is already wrapped by a "
                             "TransformerBridge (load or build it again, ungroup, then bridge the result)")
    out = copy.deepcopy(hf_model)
    ungroup_layers(out)
    out.config.num_key_value_heads = out.config.num_attention_heads  # also when it was not grouped at all
    return out.eval()


# ----------------------------------------------------------------------------------------------- memory
def footprint(config: Any, batch_size: int, seq_len: int, dtype: Any = torch.float32) -> Any:
    """Estimated peak of one EAP-IG batch (`support.memory`; see the module docstring's **Memory**): the weights, one
    forward/backward's activations under eager attention, and the [S, B, T, d] Δz and [R, B, T, d] gradient buffers
    (float32)."""
    from .memory import BYTES, Footprint, Shape, activation_bytes

    s = Shape.from_config(config)
    S, R = edge_mask(s.n_layers, s.n_heads, s.n_kv_heads).shape
    b = BYTES.get(dtype, 4)
    return Footprint(f"EAP-IG batch ({batch_size} pairs × {seq_len} tokens)",
                     {"weights": b * s.n_params, "activations": activation_bytes(s, batch_size, seq_len, b),
                      "kept": (S + R) * batch_size * seq_len * s.d_model * 4})


def check_memory(config: Any, batch_size: int, seq_len: int, device: Any, dtype: Any = torch.float32) -> Any:
    """Memory guard before EAP-IG (Eq. 3): returns the footprint, or raises `memory.MemoryBudgetError` naming the
    `batch_size` that fits."""
    from .memory import guard

    return guard(lambda b: footprint(config, b, seq_len, dtype), "batch_size", batch_size, device)
