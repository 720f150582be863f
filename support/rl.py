"""Attention-credit GRPO (paper 003, Sec. 5): rescale per-token advantages by the reasoning rhythm, on TRL.

GRPO gives every token of a response the same advantage A (Eq. 5). Paper 003 replaces A by Ã_t = γ_t·A (Eq. 12),
where γ_t ≥ 1 marks the tokens that the attention signals of chapter 05 call decisive:

- **local-chunk credit** (Eq. 13-14): preplan tokens, the top-q WAAD jumps Δ_t = |WAAD_t − WAAD_{t+1}|;
- **global-anchor credit** (Eq. 15-16): anchor tokens, the top-q FAI;
- **coupled rhythm credit** (Eq. 17-18): anchors, where a locally dominated anchor hands a fraction α of its bonus
  back to the token that introduced it;
- baselines: ``none`` (plain GRPO), ``random`` and ``entropy`` (top-q predictive entropy) credit, and the
  ``*-bottom`` ablations (Fig. 6, Table 5) that rank the same metric the other way.

TopQ is taken per response (Sec. 5.2: "for the tokens within each response"). The shaping signal is detached and
applies only to non-negative advantages (Sec. 5.3.1); a negative advantage keeps its sequence-level value.

`CreditGRPOTrainer` is TRL's `GRPOTrainer` with one override: after the parent has generated, scored and normalised
a batch, one extra no-grad forward pass of the policy (`support.rhythm.token_signals`, the paper's ``actor_attn``
on five middle layers, Sec. 5.1) gives WAAD, FAI and entropy per completion token, and the batch's 1-D advantages
are replaced by (B, T) shaped ones, which TRL's loss accepts as they are. The γ rules are pure functions of one
response's signals and are tested on hand-built sequences.

Rewards (`reward_function`) score with `support.scoring`, so training rewards and evaluation agree.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from trl import GRPOConfig, GRPOTrainer

from .errors import ParameterError
from .scoring import FAMILIES, LETTERS, score_countdown, score_letter, score_numeric

ArrayLike = Tensor | np.ndarray | Sequence[float]


class UnknownStrategyError(ParameterError):
    """A credit strategy name that `STRATEGIES` does not know."""


# ----------------------------------------------------------------------------------------------- selection
def _np(x: ArrayLike) -> np.ndarray:
    """A 1-D float64 numpy copy of a torch tensor, numpy array or sequence."""
    a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"expected one response's 1-D signal, got shape {tuple(a.shape)}")
    return a


def _check_q(q: float) -> float:
    if not 0.0 <= q <= 1.0:
        raise ParameterError(f"q={q!r}: the selected fraction must lie in [0, 1]")
    return float(q)


def n_selected(q: float, n: int) -> int:
    """How many of n candidates TopQ keeps: ceil(q·n) (robust to float error, so 0.6·5 keeps 3, not 4)."""
    return min(n, math.ceil(_check_q(q) * n - 1e-9))


def top_q(score: ArrayLike, q: float, valid: ArrayLike | None = None, bottom: bool = False) -> Tensor:
    """TopQ (Eq. 13, 15): a bool mask of the ceil(q·n) valid positions with the highest score (lowest if `bottom`).

    n counts the valid positions; NaN scores are never valid. Ties go to the earlier position, so the selection is
    deterministic.
    """
    s = _np(score)
    ok = ~np.isnan(s)
    if valid is not None:
        v = np.asarray(valid.detach().cpu() if isinstance(valid, Tensor) else valid, dtype=bool)
        if v.shape != s.shape:
            raise ValueError(f"valid has shape {v.shape}, score has shape {s.shape}")
        ok &= v
    key = np.where(ok, s if bottom else -s, 0.0)
    order = np.lexsort((np.arange(len(s)), key, ~ok))  # valid first, then by key, then by position
    out = torch.zeros(len(s), dtype=torch.bool)
    out[torch.as_tensor(order[: n_selected(q, int(ok.sum()))], dtype=torch.long)] = True
    return out


def _amplify(selected: Tensor, amp: float) -> Tensor:
    """Eq. 14/16: γ_t = 1 + (γ_amp − 1)·1{t selected}."""
    return 1.0 + (amp - 1.0) * selected.to(torch.float32)


def waad_jumps(waad: ArrayLike) -> np.ndarray:
    """Δ_t = |WAAD_t − WAAD_{t+1}| (Eq. 13); NaN at the last token, which has no successor."""
    w = _np(waad)
    return np.append(np.abs(w[:-1] - w[1:]), np.nan) if len(w) else w


# ----------------------------------------------------------------------------------------------- γ rules
def gamma_none(T: int) -> Tensor:
    """Plain GRPO: γ ≡ 1."""
    return torch.ones(T)


def gamma_random(T: int, q: float = 0.4, amp: float = 1.5, generator: torch.Generator | None = None) -> Tensor:
    """Random credit (Sec. 5.3.1 baseline): amplify ceil(q·T) positions drawn uniformly without replacement."""
    selected = torch.zeros(T, dtype=torch.bool)
    selected[torch.randperm(T, generator=generator)[: n_selected(q, T)]] = True
    return _amplify(selected, amp)


def gamma_entropy(entropy: ArrayLike, q: float = 0.4, amp: float = 1.5, bottom: bool = False) -> Tensor:
    """High-entropy credit (Sec. 5.3.1 baseline): amplify the top-q predictive-entropy tokens."""
    return _amplify(top_q(entropy, q, bottom=bottom), amp)


def gamma_local(waad: ArrayLike, q: float = 0.4, amp: float = 1.5, bottom: bool = False) -> Tensor:
    """Local-chunk credit (Eq. 13-14): amplify the top-q WAAD jumps Δ_t = |WAAD_t − WAAD_{t+1}|.

    Δ_t needs WAAD_{t+1}, so it is defined for t < T−1 only: the last response token (usually the end-of-turn
    token) is never a candidate, and q counts the T−1 defined jumps. NaN WAAD makes the jumps next to it undefined.
    """
    return _amplify(top_q(waad_jumps(waad), q, bottom=bottom), amp)


def gamma_global(fai: ArrayLike, q: float = 0.4, amp: float = 1.5, bottom: bool = False) -> Tensor:
    """Global-anchor credit (Eq. 15-16): amplify the top-q FAI tokens.

    FAI is NaN where its horizon [t + h_lo, t + h_hi] holds no response token (the last h_lo tokens); those
    positions are not candidates, and q counts the defined ones.
    """
    return _amplify(top_q(fai, q, bottom=bottom), amp)


def _threshold(x: np.ndarray, level: float) -> float:
    """The `level` quantile (linear interpolation) of the defined values of x; +inf when none is defined."""
    x = x[~np.isnan(x)]
    return float(np.quantile(x, _check_q(level))) if len(x) else math.inf


class CoupledSets(NamedTuple):
    """Eq. 17-18's sets on one response, as bool masks: anchors T_glob, dominated D ⊆ T_glob, intro tokens I(D)."""

    anchors: Tensor
    dominated: Tensor
    intro: Tensor


def coupled_sets(waad: ArrayLike, fai: ArrayLike, q: float = 0.4, k: int = 2, tau_waad: float = 0.5,
                 tau_delta: float | None = None, bottom: bool = False) -> CoupledSets:
    """Anchors, locally dominated anchors and their introductory tokens (Eq. 15, 17), on one response.

    T_glob = TopQ(FAI, q) (BottomQ if `bottom`). An anchor t is dominated (t ∈ D) when WAAD_t ≤ τ_waad and
    max_{u ∈ {t−k..t−1}} Δ_u ≥ τ_Δ (Eq. 17); intro(t) = the argmax of that window (earliest on ties), the onset of
    the recent WAAD drop, i.e. the preplan token that prepares the anchor. The window is clipped at the response
    start, so t = 0 has no predecessor and is never dominated; an anchor with NaN WAAD is never dominated.

    `tau_waad` and `tau_delta` are quantile *levels* of the response's own WAAD and Δ (scale-free across models and
    layers, whose raw WAAD scales differ); ``tau_delta=None`` uses the Δ threshold of Eq. 13 with the same q (the
    smallest Δ in TopQ(Δ, q)), so a "recent WAAD peak" is exactly a token local-chunk credit would select (ties at
    the threshold included).
    """
    w, f = _np(waad), _np(fai)
    if w.shape != f.shape:
        raise ValueError(f"WAAD has {len(w)} positions, FAI {len(f)}")
    if k < 1:
        raise ParameterError(f"k={k!r}: the back-allocation window needs k ≥ 1")
    delta = waad_jumps(w)
    anchors = top_q(f, q, bottom=bottom)
    tw = _threshold(w, tau_waad)
    if tau_delta is None:
        peaks = top_q(delta, q).numpy()
        td = float(delta[peaks].min()) if peaks.any() else math.inf
    else:
        td = _threshold(delta, tau_delta)
    dominated = torch.zeros_like(anchors)
    intro = torch.zeros_like(anchors)
    for t in torch.nonzero(anchors).flatten().tolist():
        lo = max(0, t - k)
        win = delta[lo:t]
        if not w[t] <= tw or not len(win) or np.isnan(win).all():
            continue
        if np.nanmax(win) >= td:
            dominated[t] = True
            intro[lo + int(np.nanargmax(win))] = True
    return CoupledSets(anchors, dominated, intro)


def gamma_coupled(waad: ArrayLike, fai: ArrayLike, q: float = 0.4, amp: float = 1.5, alpha: float = 0.5, k: int = 2,
                  tau_waad: float = 0.5, tau_delta: float | None = None, bottom: bool = False) -> Tensor:
    """Coupled rhythm credit (Eq. 17-18), taken literally (the sets are from `coupled_sets`):

        γ_t = 1 + b·1{t ∈ T_glob \\ D} + (1 − α)·b·1{t ∈ D} + α·b·1{t ∈ I(D)},   b = γ_amp − 1.

    The terms add, so a token that is both an undominated anchor and an intro token gets b + α·b; I(D) is a set, so
    an intro token shared by several dominated anchors gets α·b once.

    Defaults (the paper gives no values for α, τ_waad, τ_Δ; it uses k ∈ {1, 2, 3}):
    - α = 0.5: a dominated anchor and its preplan share the bonus equally ("diffuse a fraction backward"; the
      midpoint of [0, 1] favours neither token);
    - k = 2: the middle of the paper's range (one or two tokens before the anchor cover a short chunk onset);
    - τ_waad = the response's median WAAD: "low WAAD" means below the response's typical local distance;
    - τ_Δ = the Eq. 13 threshold with the same q (see `coupled_sets`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ParameterError(f"alpha={alpha!r}: the back-allocated fraction must lie in [0, 1]")
    s = coupled_sets(waad, fai, q=q, k=k, tau_waad=tau_waad, tau_delta=tau_delta, bottom=bottom)
    b = amp - 1.0
    fl = lambda m: m.to(torch.float32)  # noqa: E731
    return 1.0 + b * fl(s.anchors & ~s.dominated) + (1 - alpha) * b * fl(s.dominated) + alpha * b * fl(s.intro)


# ----------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CreditConfig:
    """How `CreditGRPOTrainer` shapes advantages (defaults: paper 003, Sec. 5.3.1).

    strategy: a `STRATEGIES` name; q: TopQ fraction (40%); amp: γ_amp (1.5); alpha, k, tau_waad, tau_delta: Eq. 17-18
    (see `gamma_coupled`); window: WAAD window W (10); h_lo, h_hi: FAI horizon H ∈ [10, 50]; group_frac: the fraction
    of heads in each head group of the WAAD/FAI aggregation (0.3, `support.rhythm`); n_layers: attention layers
    sampled in the middle third (5, Sec. 5.1); chunk: sequences per signal forward pass; seed: random credit's draws
    (process r of a distributed run draws from seed + r).
    """

    strategy: str = "coupled"
    q: float = 0.4
    amp: float = 1.5
    alpha: float = 0.5
    k: int = 2
    tau_waad: float = 0.5
    tau_delta: float | None = None
    window: int = 10
    h_lo: int = 10
    h_hi: int = 50
    group_frac: float = 0.3
    n_layers: int = 5
    chunk: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        check_strategy(self.strategy)
        for name in ("q", "alpha", "tau_waad", "group_frac") + (("tau_delta",) if self.tau_delta is not None else ()):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v <= 1.0:
                raise ParameterError(f"CreditConfig.{name}={v!r}: must be a number in [0, 1]")
        if self.group_frac == 0:
            raise ParameterError("CreditConfig.group_frac=0: a head group needs at least one head")
        if isinstance(self.amp, bool) or not isinstance(self.amp, numbers.Real) or not self.amp > 0:
            raise ParameterError(f"CreditConfig.amp={self.amp!r}: the amplification factor must be a number > 0")
        for name in ("k", "window", "h_lo", "n_layers", "chunk"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ParameterError(f"CreditConfig.{name}={v!r}: must be an integer ≥ 1")
        if isinstance(self.h_hi, bool) or not isinstance(self.h_hi, numbers.Integral) or self.h_hi < self.h_lo:
            raise ParameterError(f"CreditConfig.h_hi={self.h_hi!r}: must be an integer ≥ h_lo={self.h_lo}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ParameterError(f"CreditConfig.seed={self.seed!r}: must be an integer")


# ----------------------------------------------------------------------------------------------- registry
Rule = Callable[[Mapping[str, Tensor], int, CreditConfig, "torch.Generator | None"], Tensor]


class Strategy(NamedTuple):
    """A credit strategy: the token signals it reads and its γ rule on one response."""

    needs: tuple[str, ...]
    rule: Rule


def _local(bottom: bool) -> Strategy:
    return Strategy(("waad",), lambda s, T, c, g: gamma_local(s["waad"], c.q, c.amp, bottom))


def _global(bottom: bool) -> Strategy:
    return Strategy(("fai",), lambda s, T, c, g: gamma_global(s["fai"], c.q, c.amp, bottom))


def _coupled(bottom: bool) -> Strategy:
    return Strategy(("waad", "fai"), lambda s, T, c, g: gamma_coupled(
        s["waad"], s["fai"], c.q, c.amp, c.alpha, c.k, c.tau_waad, c.tau_delta, bottom))


#: Strategy name -> (signals needed, γ rule). The ``*-bottom`` variants select the bottom q of the same metric (for
#: coupled: the lowest-FAI anchors; the domination test of Eq. 17 is unchanged).
STRATEGIES: dict[str, Strategy] = {
    "none": Strategy((), lambda s, T, c, g: gamma_none(T)),
    "random": Strategy((), lambda s, T, c, g: gamma_random(T, c.q, c.amp, g)),
    "entropy": Strategy(("entropy",), lambda s, T, c, g: gamma_entropy(s["entropy"], c.q, c.amp)),
    "local": _local(False),
    "global": _global(False),
    "coupled": _coupled(False),
    "local-bottom": _local(True),
    "global-bottom": _global(True),
    "coupled-bottom": _coupled(True),
}


def check_strategy(name: str) -> Strategy:
    """The registered strategy `name`, or one UnknownStrategyError naming the valid choices."""
    if name not in STRATEGIES:
        raise UnknownStrategyError(f"unknown credit strategy {name!r}; valid choices: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def batch_gamma(signals: Mapping[str, Tensor], completion_mask: Tensor, credit: CreditConfig,
                generator: torch.Generator | None = None) -> Tensor:
    """γ for a batch: (B, T) float, 1 off the completion; each row's rule sees only its masked tokens, in order.

    signals: (B, T) completion-aligned tensors (those `credit.strategy` needs); completion_mask: (B, T).
    """
    strategy = check_strategy(credit.strategy)
    mask = completion_mask.bool().cpu()
    gamma = torch.ones(mask.shape, dtype=torch.float32)
    for i in range(mask.shape[0]):
        pos = torch.nonzero(mask[i]).flatten()
        if len(pos):
            row = {name: signals[name][i].detach().cpu()[pos] for name in strategy.needs}
            gamma[i, pos] = strategy.rule(row, len(pos), credit, generator).to(torch.float32)
    return gamma.to(completion_mask.device)


# ----------------------------------------------------------------------------------------------- shaping
def shape_advantages(advantages: Tensor, gamma: Tensor, completion_mask: Tensor) -> Tensor:
    """Ã_t = γ_t·A_t (Eq. 12) for A ≥ 0, A otherwise (Sec. 5.3.1), zero off the completion: (B,), (B, T) -> (B, T).

    γ is detached: it reweights the policy gradient and never receives one.
    """
    if advantages.dim() != 1 or gamma.shape != completion_mask.shape or gamma.shape[0] != advantages.shape[0]:
        raise ValueError(f"expected advantages (B,), gamma and mask (B, T); got {tuple(advantages.shape)}, "
                         f"{tuple(gamma.shape)}, {tuple(completion_mask.shape)}")
    a = advantages.unsqueeze(1)
    g = gamma.detach().to(a.device, a.dtype)
    return torch.where(a >= 0, a * g, a) * completion_mask.to(a.dtype)


# ----------------------------------------------------------------------------------------------- trainer
class CreditGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with attention-credit advantages (Eq. 12-18); ``credit=CreditConfig(...)``.

    Overrides `_generate_and_score_completions` only: the parent generates, scores and normalises (1-D advantages,
    logged by TRL as usual), then `shape_batch` replaces ``advantages`` by (B, T) shaped ones. TRL's `_compute_loss`
    unsqueezes advantages only when they are 1-D, so per-token advantages enter Eq. 12 as they are; the batch dict
    is then shuffled and split along dim 0 (`steps_per_generation`), which (B, T) tensors survive unchanged.
    Strategy ``none`` leaves the batch untouched (exactly GRPO).

    Under data parallelism (``accelerate launch``, DDP) the parent gathers every process's rewards, normalises them
    per group and returns this process's slice of the advantages with its own completions; γ is computed for, and
    applied to, exactly that local slice (`tests/test_distributed_rl.py` checks it against one process), and only
    the logged ``credit/*`` statistics are reduced across processes.
    """

    def __init__(self, *args: Any, credit: CreditConfig | None = None, **kwargs: Any) -> None:
        credit = CreditConfig() if credit is None else credit
        if not isinstance(credit, CreditConfig):
            raise TypeError(f"credit must be a CreditConfig, got {type(credit).__name__}")
        self.credit = credit
        super().__init__(*args, **kwargs)
        # Random credit's draws: one stream per process (seed + rank, as TRL seeds generation with device_specific),
        # so that under data parallelism the ranks' slices do not all get the same positions; rank 0 (and a
        # single-process run) keeps `credit.seed`.
        self._credit_generator = torch.Generator().manual_seed(credit.seed + self.accelerator.process_index)

    def token_signals(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """WAAD, FAI and entropy per completion token, (B, T) each, from one no-grad forward pass of the policy
        (in eval mode, so no dropout) over prompt + completion, capturing only the RL layers' attention (Sec. 5.1)."""
        from .rhythm import rl_layers, token_signals

        c = self.credit
        model = self.accelerator.unwrap_model(self.model)
        pm, cm = batch["prompt_mask"], batch["completion_mask"]
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        att = torch.cat([pm, cm], dim=1)
        resp = torch.cat([torch.zeros_like(pm), cm], dim=1).bool()
        layers = rl_layers(int(model.config.get_text_config().num_hidden_layers), int(c.n_layers))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                sig = token_signals(model, ids, att, resp, layers=layers, window=c.window, h_lo=c.h_lo, h_hi=c.h_hi,
                                    group_frac=c.group_frac, chunk=c.chunk)
        finally:
            model.train(was_training)
        return {name: v[:, pm.shape[1]:] for name, v in sig.items()}

    def shape_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Replace the batch's 1-D advantages by (B, T) shaped ones and log ``credit/*`` metrics."""
        mask = batch["completion_mask"]
        t0 = time.perf_counter()
        needs = check_strategy(self.credit.strategy).needs
        signals = self.token_signals(batch) if needs else {}
        gamma = batch_gamma(signals, mask, self.credit, self._credit_generator)
        shaped = shape_advantages(batch["advantages"], gamma, mask)
        batch["advantages"] = shaped
        m = mask.to(torch.float32)
        gamma = gamma.to(m.device)
        stats = torch.stack([(gamma * m).sum(), ((gamma > 1) * m).sum(), (shaped.float() * m).sum(), m.sum()])
        total = self.accelerator.reduce(stats, reduction="sum")
        n = total[3].clamp(min=1.0)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["credit/gamma_mean"].append((total[0] / n).item())
        self._metrics[mode]["credit/frac_amplified"].append((total[1] / n).item())
        self._metrics[mode]["credit/shaped_advantage_mean"].append((total[2] / n).item())
        self._metrics[mode]["credit/seconds"].append(time.perf_counter() - t0)
        return batch

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        out = super()._generate_and_score_completions(inputs)
        return out if self.credit.strategy == "none" else self.shape_batch(out)


# ----------------------------------------------------------------------------------------------- rewards
_END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_COLUMNS = {"countdown": ("numbers", "target"), "letter": ("answer",), "numeric": ("answer",)}


def completion_text(completion: Any) -> str:
    """A completion's text: the string itself, or the last message's content of a conversational completion;
    a trailing end-of-turn marker is dropped (TRL decodes with skip_special_tokens, but not every tokenizer marks
    it special)."""
    if isinstance(completion, list):
        content = completion[-1].get("content", "") if completion else ""
        completion = content if isinstance(content, str) else "".join(
            p.get("text", "") for p in content if isinstance(p, dict))
    text = str(completion).rstrip()
    for marker in _END_MARKERS:
        text = text.removesuffix(marker)
    return text


def reward_function(family: str) -> Callable[..., list[float]]:
    """A TRL reward function for one answer family (`support.scoring.FAMILIES`): 1.0 when correct, else 0.0.

    It reads the dataset's columns, which TRL passes as keyword lists: Countdown ``numbers`` and ``target``; letter
    ``answer`` (the gold letter; ``options``, if present, sets the valid letters); numeric ``answer``.
    """
    if family not in FAMILIES:
        raise ParameterError(f"unknown answer family {family!r}; valid choices: {', '.join(FAMILIES)}")
    need = _COLUMNS[family]

    def reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        missing = [c for c in need if c not in columns]
        if missing:
            raise ValueError(f"the {family} reward needs dataset columns {', '.join(need)}; missing: "
                             f"{', '.join(missing)}")
        out = []
        for i, completion in enumerate(completions):
            text = completion_text(completion)
            if family == "countdown":
                s = score_countdown(text, columns["numbers"][i], columns["target"][i])
            elif family == "letter":
                options = columns.get("options")
                letters = LETTERS[: len(options[i])] if options and options[i] else LETTERS
                s = score_letter(text, str(columns["answer"][i]).strip().upper(), letters)
            else:
                s = score_numeric(text, columns["answer"][i])
            out.append(float(s.reward))
        return out

    reward.__name__ = f"{family}_reward"  # TRL names the rewards/<name>/mean metric after it
    return reward


# ----------------------------------------------------------------------------------------------- config
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's, see grpo_config

def footprint(config: Any, prompts_per_step: int, num_generations: int, seq_len: int, credit: bool = True,
              n_layers: int = 5, chunk: int = 8, gradient_checkpointing: bool = True,
              micro_batch: int | None = None) -> Any:
    """Estimated peak of one GRPO step of `grpo_config`'s setting (`support.memory`), the larger of its two phases:

    - the training pass: fp32 policy, every parameter trained (gradients, AdamW), P·G sequences of `seq_len` tokens
      (or `micro_batch` of them per forward/backward), SDPA attention, gradient checkpointing unless switched off;
    - with attention credit, the no-grad credit pass over one `chunk` of completions: its eager attention maps on
      `n_layers` layers and its fp32 full-vocabulary logits (the token entropy), while AdamW's moments stay alive.
    """
    from .memory import Footprint, Shape, inference_footprint, train_footprint

    s = Shape.from_config(config)
    n = micro_batch or prompts_per_step * num_generations
    per = f", {n} per pass" if micro_batch else ""
    step = train_footprint(s, s.n_params, n, seq_len, "fp32", checkpointing=gradient_checkpointing, eager=False,
                           what=f"GRPO step ({prompts_per_step}×{num_generations} completions{per})")
    if not credit:
        return step
    c = min(chunk, prompts_per_step * num_generations)
    maps = c * min(n_layers, s.n_layers) * s.n_heads * seq_len ** 2 * 4
    inf = inference_footprint(s, c, seq_len, torch.float32, kept=maps + c * seq_len * s.vocab * 4)
    pass_ = Footprint(f"GRPO credit pass ({c} completions of {seq_len} tokens)",
                      {**inf.parts, "optimizer": 8 * s.n_params})
    return max(step, pass_, key=lambda f: f.total)


def check_memory(config: Any, prompts_per_step: int, num_generations: int, seq_len: int, device: Any,
                 credit: bool = True, n_layers: int = 5, chunk: int = 8, gradient_checkpointing: bool = True,
                 micro_batch: int | None = None) -> Any:
    """Memory guard before GRPO: `footprint` against `device`. Returns the footprint, or raises
    `memory.MemoryBudgetError` naming the `prompts_per_step` (or, when given, the `micro_batch`) that fits."""
    from .memory import guard

    if micro_batch:
        return guard(lambda m: footprint(config, prompts_per_step, num_generations, seq_len, credit, n_layers, chunk,
                                         gradient_checkpointing, m), "micro_batch", micro_batch, device)
    return guard(lambda p: footprint(config, p, num_generations, seq_len, credit, n_layers, chunk,
                                     gradient_checkpointing), "prompts_per_step", prompts_per_step, device)


def check_micro_batch(micro_batch: int, n: int) -> int:
    """The forward/backward passes of a step of `n` completions in micro-batches of `micro_batch`, or one
    ParameterError naming the divisors of `n`."""
    if micro_batch < 1 or n % micro_batch:
        raise ParameterError(f"micro_batch={micro_batch!r} must divide the {n} completions of a step; valid "
                             f"choices: {', '.join(str(d) for d in range(1, n + 1) if n % d == 0)}")
    return n // micro_batch


def grpo_config(output_dir: str | Path, *, max_steps: int = 100, prompts_per_step: int = 16, num_generations: int = 8,
                max_completion_length: int = 48, learning_rate: float = 1e-4, loss_type: str = "grpo",
                temperature: float = 1.0, beta: float = 0.0, steps_per_generation: int | None = None,
                save_steps: int | None = None, logging_steps: int = 10, seed: int = 0,
                gradient_checkpointing: bool = True, micro_batch: int | None = None, **overrides: Any) -> GRPOConfig:
    """A `trl.GRPOConfig` with the measured toy/CPU defaults (notes/grpo-on-the-organism.md; paper Sec. 5.3.1).

    One step sees `prompts_per_step` prompts × `num_generations` completions; temperature 1.0, no KL (beta 0) and no
    entropy term (as the paper), constant learning rate without warmup, fp32 (bf16 off), the CPU where no GPU is
    present, no external loggers, no checkpoints unless `save_steps` is given. `learning_rate` 1e-4 is the toy
    organism's measured setting (the paper trains 4B/8B models at 1e-6). `steps_per_generation` > 1 reuses one
    generation batch for several optimizer steps (the paper: 512 rollouts, 16 micro-batch steps each).
    `gradient_checkpointing` (TRL's default, on) trades a second forward pass in the backward for activation memory;
    a model as small as the organism fits without it and trains ~7% faster (12 steps: 69 s against 75 s, 2 threads).
    `micro_batch` (a divisor of P·G) runs the step's forward/backward passes on that many completions at a time
    (TRL's gradient accumulation) while one optimizer step still sees all P·G completions, generated at once: the
    full-vocabulary fp32 logits of 64 long completions alone outgrow a 16 GB card (`support.run --memory`).

    `loss_type` (TRL's aggregation of per-token losses; all accept (B, T) advantages):
    ``"grpo"`` (default; per-sequence mean, then batch mean, as Eq. 5/12's 1/|o| Σ_t), ``"dr_grpo"`` (sum over a
    fixed max_completion_length: no length bias), ``"dapo"`` / ``"bnpo"`` (mean over the active tokens of the global
    / local batch), ``"cispo"`` (clipped IS weights times log-probs), ``"sapo"`` (soft gate instead of clipping),
    ``"luspo"`` / ``"vespo"`` (sequence-level importance weights; with token-level credit their sequence weights
    see the per-token advantages' signs, an untested combination).
    """
    cfg: dict[str, Any] = dict(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=prompts_per_step * num_generations,
        num_generations=num_generations, max_completion_length=max_completion_length, learning_rate=learning_rate,
        loss_type=loss_type, temperature=temperature, beta=beta, lr_scheduler_type="constant", warmup_steps=0,
        use_cpu=not torch.cuda.is_available(), bf16=False, report_to="none", logging_steps=logging_steps, seed=seed,
        save_strategy="steps" if save_steps else "no", use_vllm=False, gradient_checkpointing=gradient_checkpointing,
    )
    if save_steps:
        cfg["save_steps"] = save_steps
    accum = 1
    if micro_batch is not None:
        accum = check_micro_batch(micro_batch, prompts_per_step * num_generations)
        cfg |= {"per_device_train_batch_size": micro_batch, "gradient_accumulation_steps": accum}
    if steps_per_generation is not None or accum > 1:  # TRL: generation batch = per-device batch × this
        cfg["steps_per_generation"] = (steps_per_generation or 1) * accum
    cfg.update(overrides)
    return GRPOConfig(**cfg)


# ----------------------------------------------------------------------------------------------- runs
def policy(model_name: str, device: str | None = None):
    """(HF policy, tokenizer) for GRPO: the plain model (no bridge), with eos and pad ids set from the tokenizer
    (the organism's config carries none; generation must stop at `<|im_end|>`).

    The policy runs SDPA attention: it computes no attention weights, so TRL's training forward and backward pass
    are faster (on the organism, one forward + backward over 64 completions of ~220 tokens on one CPU thread took
    7.7 s instead of 37 s under eager attention; `bench/bench_rl.py --attn eager` measures the eager policy). The
    credit pass switches to eager attention for its one no-grad forward (`rhythm.eager_attention`), so the maps are
    the same."""
    from .models import load_plain

    model, tok = load_plain(model_name, device=device, dtype="float32", attn="sdpa")
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    if tok.pad_token_id is None:
        tok.pad_token = tok.convert_ids_to_tokens(pad)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id = eos, pad
    return model, tok


def prompt_rows(items: Sequence[Any], tokenizer=None, template: str = "model") -> list[dict]:
    """GRPO dataset rows: the item's prompt plus the columns the reward reads. Toy items carry their own prompt;
    multiple-choice items get App. B's (`prompts.format_mc_prompt`), Countdown and math items paper 003's
    (`prompts.format_reasoning_prompt`)."""
    from .prompts import format_mc_prompt, format_reasoning_prompt, user_turn
    from .scoring import family

    def prompt(it: Any) -> str:
        if hasattr(it, "prompt") and hasattr(it, "response"):
            return it.prompt
        if getattr(it, "options", None):
            return format_mc_prompt(it.question, it.options, template, tokenizer)
        if template == "organism" and getattr(it, "numbers", None):  # the organism's own Countdown turn
            from .toydata import countdown_question

            return user_turn(countdown_question(it.numbers, it.target))
        return format_reasoning_prompt(it, template, tokenizer)

    fams = {family(it) for it in items}
    if len(fams) != 1:
        raise ParameterError(f"one GRPO run trains one answer family; these items mix {sorted(fams)}")
    rows = []
    for it in items:
        row = {"prompt": prompt(it), "id": str(getattr(it, "id", len(rows))),
               "answer": str(getattr(it, "answer", ""))}
        if getattr(it, "numbers", None):
            row |= {"numbers": [int(x) for x in it.numbers], "target": int(it.target)}
        if getattr(it, "options", None):
            row["options"] = [str(o) for o in it.options]
        rows.append(row)
    return rows


def policy_accuracy(model, tokenizer, items: Sequence[Any], prompts: Sequence[str], max_new_tokens: int,
                    sampled: bool = False, seed: int = 0, batch_size: int = 96, temperature: float = 1.0,
                    samples: int = 1) -> float:
    """Held-out accuracy of the current policy: greedy, or the mean over `samples` samples per item at
    `temperature` (pass the training temperature)."""
    from .decoding import Sampling, generate
    from .scoring import accuracy

    sampling = Sampling(do_sample=True, temperature=temperature, seed=seed) if sampled else Sampling()
    reps = samples if sampled else 1
    was = model.training
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:  # the evaluation's seeded sampling must not change the training run's random stream
        with torch.random.fork_rng(devices=devices):
            responses = generate(model, tokenizer, list(prompts) * reps, max_new_tokens, batch_size,
                                 sampling=sampling)
    finally:
        model.train(was)
    return accuracy(list(items) * reps, responses)


def eval_sets(eval_items: Sequence[Any], eval_prompts: Sequence[str], eval_samples: int = 1,
              train_items: Sequence[Any] = (), train_prompts: Sequence[str] = (), train_eval: int = 0
              ) -> dict[str, tuple[Sequence[Any], Sequence[str], int]]:
    """What GRPO's accuracy is measured on: prefix -> (items, prompts, samples per item). "" is the held-out set
    (`eval_samples` each); with `train_eval` > 0, "train_" is the first `train_eval` training items, sampled as many
    times in all as the held-out set."""
    sets = {"": (eval_items, eval_prompts, eval_samples)}
    k = min(train_eval, len(train_items))
    if k:
        sets["train_"] = (train_items[:k], train_prompts[:k], max(1, round(eval_samples * len(eval_items) / k)))
    return sets


def accuracy_row(model, tokenizer, sets: Mapping[str, tuple[Sequence[Any], Sequence[str], int]],
                 max_new_tokens: int, seed: int, temperature: float = 1.0) -> dict[str, float]:
    """Greedy and sampled (`seed`, `temperature`) accuracy on each of `eval_sets`: ``greedy``, ``sampled``, and
    ``train_greedy``, ``train_sampled`` where the training prompts are measured."""
    row: dict[str, float] = {}
    for prefix, (items, prompts, samples) in sets.items():
        row[f"{prefix}greedy"] = policy_accuracy(model, tokenizer, items, prompts, max_new_tokens)
        row[f"{prefix}sampled"] = policy_accuracy(model, tokenizer, items, prompts, max_new_tokens, True, seed,
                                                  temperature=temperature, samples=samples)
    return row


def _eval_callback(sets: Mapping[str, tuple[Sequence[Any], Sequence[str], int]], tokenizer, every: int,
                   max_new_tokens: int, seed: int, log: list[dict], at_start: bool = True, temperature: float = 1.0):
    """A TrainerCallback recording `accuracy_row` (sampling seed: `seed` + step) at the start (unless `at_start` is
    False), every `every` steps and at the end."""
    from transformers import TrainerCallback

    class HeldOut(TrainerCallback):
        def _eval(self, step: int, model) -> None:
            if any(r["step"] == step for r in log):
                return
            t0 = time.perf_counter()
            row = accuracy_row(model, tokenizer, sets, max_new_tokens, seed + step, temperature)
            log.append({"step": step, **row, "eval_seconds": round(time.perf_counter() - t0, 2)})

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.start_step = state.global_step  # > 0 when resumed from a checkpoint
            if at_start:
                self._eval(state.global_step, model)

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                self._eval(state.global_step, model)

    return HeldOut()


@dataclass
class GRPORun:
    """One GRPO run: its folder (checkpoints `checkpoint-<step>`, `run.json`), TRL's log and the held-out curve."""

    out_dir: Path
    strategy: str
    seed: int
    history: list[dict]
    evals: list[dict]
    seconds: float
    model: Any = None

    def final(self, key: str = "greedy") -> float:
        return float(self.evals[-1][key]) if self.evals else float("nan")


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence the FutureWarning about `gradient_checkpointing` that TRL 1.16 triggers at every step."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)
        yield


def train_grpo(model_name: str, train_items: Sequence[Any], eval_items: Sequence[Any], out_dir: str | Path, *,
               credit: CreditConfig, steps: int, prompts_per_step: int = 16, num_generations: int = 8,
               max_completion_length: int = 128, learning_rate: float = 1e-4, temperature: float = 1.0,
               eval_samples: int = 1, train_eval: int = 0, seed: int = 0, eval_every: int = 10,
               save_steps: int | None = None, resume: bool = False, template: str = "model", eval_at_start: bool = True,
               quiet: bool = True, provenance: Mapping[str, Any] | None = None, **config: Any) -> GRPORun:
    """Train `model_name` with (attention-credit) GRPO on `train_items` and record held-out accuracy.

    Checkpoints (model, optimizer, scheduler, RNG: TRL/transformers' own) go to `out_dir/checkpoint-<step>` every
    `save_steps`; `resume=True` continues from the last one. Held-out accuracy (greedy, and the mean of
    `eval_samples` samples per item at the training `temperature`) is measured at the start (skip it with
    `eval_at_start=False` when several runs share a starting point), every `eval_every` steps and at the end;
    with `train_eval` > 0 the same accuracies on the first `train_eval` training items as well (``train_greedy``,
    ``train_sampled``; sampled as many completions as the held-out set gets): whether GRPO learned the prompts it
    trained on, beside whether that carried over.
    `run.json` holds the log, the held-out curve and the
    provenance (model, dataset ids, parameters, code version) the caller passes."""
    import json

    from datasets import Dataset

    from .artifacts import write_json
    from .scoring import family

    if not train_items or not eval_items:
        raise ParameterError("train_grpo needs training items and held-out items")
    if steps < 1 or eval_every < 1:
        raise ParameterError(f"steps and eval_every must be ≥ 1, got {steps!r}, {eval_every!r}")
    if train_eval < 0:
        raise ParameterError(f"train_eval must be ≥ 0 (0: held-out items only), got {train_eval!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model, tok = policy(model_name)
    rows = prompt_rows(train_items, tok, template)
    eval_prompts = [r["prompt"] for r in prompt_rows(eval_items, tok, template)]
    evals: list[dict] = []
    if resume and (out / "run.json").exists():
        evals = list(json.loads((out / "run.json").read_text())["evals"])
    with _quiet_deprecations():  # transformers 5 renamed gradient checkpointing; TRL 1.16 uses the old names
        cfg = grpo_config(out, max_steps=steps, prompts_per_step=prompts_per_step, num_generations=num_generations,
                          max_completion_length=max_completion_length, learning_rate=learning_rate, seed=seed,
                          temperature=temperature, save_steps=save_steps, logging_steps=1, **config)
        sets = eval_sets(eval_items, eval_prompts, eval_samples, train_items, [r["prompt"] for r in rows], train_eval)
        held_out = _eval_callback(sets, tok, eval_every, max_completion_length, seed, evals, eval_at_start,
                                  temperature)
        trainer = CreditGRPOTrainer(
            model=model, reward_funcs=[reward_function(family(train_items[0]))], args=cfg,
            train_dataset=Dataset.from_list(rows), processing_class=tok, credit=credit, callbacks=[held_out])
        if quiet:  # chapters show tables and figures, not TRL's per-step log dicts
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
        last = None
        if resume:
            ckpts = sorted((p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                           key=lambda p: int(p.name.split("-")[1]))  # complete checkpoints only (a kill can cut one)
            last = str(ckpts[-1]) if ckpts else None
        t0 = time.perf_counter()
        trainer.train(resume_from_checkpoint=last)
    run = GRPORun(out, credit.strategy, seed, trainer.state.log_history, evals, time.perf_counter() - t0, model)
    if not trainer.accelerator.is_main_process:  # under `accelerate launch`, one process writes the record
        return run
    write_json(out / "run.json", {"strategy": credit.strategy, "credit": credit.__dict__, "seed": seed,
                                  "history": run.history, "evals": evals, "seconds": run.seconds,
                                  "resumed_from": last, "started_at_step": held_out.start_step},
               dict(provenance or {"model": {"name": model_name}, "example_ids": [r["id"] for r in rows]}))
    return run


# ----------------------------------------------------------------------------------------------- stored runs
def stored_runs(model_name: str, root: str | Path | None = None) -> dict[str, dict]:
    """Longer GRPO runs stored in `root` (default: the project's ``data/grpo_diagnosis``, written by
    ``experiments/grpo_organism.sh``) that were made with `model_name`: {folder name: run.json}; {} if none."""
    import json

    from .artifacts import PROJECT_ROOT, PROVENANCE_KEY

    root = Path(root) if root is not None else PROJECT_ROOT / "data" / "grpo_diagnosis"
    runs = {}
    for path in sorted(root.glob("*/run.json")):
        body = json.loads(path.read_text())
        if body.get(PROVENANCE_KEY, {}).get("model", {}).get("name") == model_name:
            runs[path.parent.name] = body
    return runs


def run_summary(runs: Mapping[str, dict]):
    """One tidy row per stored run: its settings, the training reward over the first and last fifth of the steps,
    the share of completions cut at the length cap, held-out accuracy before and after (and sampled accuracy on the
    prompts it trained on, where measured), and √2·SE, the binomial
    standard error of a difference of two sampled accuracies over the held-out items (a lift counts beyond it)."""
    import pandas as pd

    from .artifacts import PROVENANCE_KEY

    rows = []
    for name, body in runs.items():
        log = [h for h in body["history"] if "reward" in h]
        n = max(1, len(log) // 5)
        params, ev = body[PROVENANCE_KEY].get("params", {}), body["evals"]

        def fifth(key: str, part: list[dict]) -> float:
            return round(float(np.mean([h.get(key, float("nan")) for h in part])), 3)

        pool = {"lr": params.get("lr"), "training prompts": params.get("n_train")}
        if "train_sampled" in ev[0]:  # runs that also measured the prompts they trained on (--train-eval)
            pool |= {"trained-on sampled before": round(ev[0]["train_sampled"], 3),
                     "trained-on sampled after": round(ev[-1]["train_sampled"], 3)}
        rows.append({"run": name, "seed": body["seed"], "steps": len(log), "temperature": params.get("temperature"),
                     "loss": params.get("loss_type"), "mask truncated": params.get("mask_truncated"), **pool,
                     "reward, first fifth": fifth("reward", log[:n]), "reward, last fifth": fifth("reward", log[-n:]),
                     "clipped, first fifth": fifth("completions/clipped_ratio", log[:n]),
                     "clipped, last fifth": fifth("completions/clipped_ratio", log[-n:]),
                     "greedy before": round(ev[0]["greedy"], 3), "greedy after": round(ev[-1]["greedy"], 3),
                     "sampled before": round(ev[0]["sampled"], 3), "sampled after": round(ev[-1]["sampled"], 3),
                     "eval samples per item": params.get("eval_samples"), "held-out items": params.get("n_eval"),
                     "√2·SE": float(np.sqrt(2 * ev[0]["sampled"] * (1 - ev[0]["sampled"]) / params["n_eval"])),
                     "code": body[PROVENANCE_KEY].get("git_commit")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m support.rl` (or `accelerate launch -m support.rl` on several GPUs): one GRPO run."""
    import argparse

    from .artifacts import provenance
    from .tasks import DATASETS, load_task

    ap = argparse.ArgumentParser(prog="python -m support.rl", description=main.__doc__)
    ap.add_argument("--model", required=True, help="toy name, local directory or hub name")
    ap.add_argument("--task", required=True, choices=sorted(DATASETS))
    ap.add_argument("--strategy", default="coupled", choices=list(STRATEGIES))
    ap.add_argument("--q", type=float, default=0.4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--loss-type", default="grpo", choices=LOSS_TYPES)
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of training and evaluation")
    ap.add_argument("--eval-samples", type=int, default=1, help="sampled completions per held-out item")
    ap.add_argument("--train-eval", type=int, default=0,
                    help="also measure accuracy on the first N training prompts (what GRPO learned, not carried over)")
    ap.add_argument("--mask-truncated", action="store_true",
                    help="leave completions cut at --max-new-tokens out of the loss (TRL mask_truncated_completions)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="completions per forward/backward within a step (a divisor of prompts × generations)")
    ap.add_argument("--credit-chunk", type=int, default=8, help="completions per no-grad credit pass")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=50)
    ap.add_argument("--template", default="model")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in --out")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    credit = CreditConfig(strategy=a.strategy, q=a.q, seed=a.seed, chunk=a.credit_chunk)  # checked before loading
    if a.micro_batch is not None:
        check_micro_batch(a.micro_batch, a.prompts_per_step * a.num_generations)
    train, test = load_task(a.task, "train", a.n_train).items, load_task(a.task, "test", a.n_eval).items
    run = train_grpo(a.model, train, test, a.out, credit=credit, steps=a.steps, prompts_per_step=a.prompts_per_step,
                     num_generations=a.num_generations, max_completion_length=a.max_new_tokens, learning_rate=a.lr,
                     seed=a.seed, eval_every=a.eval_every, save_steps=a.save_every, resume=a.resume,
                     template=a.template, loss_type=a.loss_type, temperature=a.temperature,
                     eval_samples=a.eval_samples, train_eval=a.train_eval,
                     mask_truncated_completions=a.mask_truncated,
                     micro_batch=a.micro_batch,
                     provenance=provenance({"name": a.model}, a.task,
                                           [str(getattr(it, "id", i)) for i, it in enumerate(train)],
                                           vars(a) | {"out": str(a.out)}))
    pool = (f"; training prompts greedy {run.final('train_greedy'):.3f}, sampled {run.final('train_sampled'):.3f}"
            if a.train_eval else "")
    print(f"{a.strategy}: held-out greedy {run.final('greedy'):.3f}, sampled {run.final('sampled'):.3f}{pool} "
          f"after {a.steps} steps ({run.seconds:.0f} s); checkpoints and run.json in {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
