"""Decoding: every generation in the book goes through here, with its inputs on the model's device.

Two paths:

- `greedy_decode`: a hand-written KV-cache loop, one sequence, one step at a time, calling `on_step(t, logits)`
  after each forward pass. Tracing (paper 000, App. F stage 1) hooks into it: greedy (temperature 0), at most 256
  new tokens, a sliding-window loop detector (window 120, overlap ratio 0.9) and an optional x2 length extension.
  The loop is the same with and without tracing, so tracing cannot change the generated tokens.
- `generate`: batched generation through HF `generate` (left padding, KV cache), greedy or sampled with temperature
  and top-p (paper 001 samples at T = 0.6, top-p 0.95 for pass@k). Organism evaluation, fine-tuning evaluation, GRPO
  evaluation and pass@k use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

STOP_REASONS = ("eos", "max_tokens", "loop")


# ----------------------------------------------------------------------------------------------- stepwise greedy
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


# ----------------------------------------------------------------------------------------------- batched
@dataclass(frozen=True)
class Sampling:
    """How `generate` picks tokens: greedy (the default), or sampled with a temperature and nucleus (top-p)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r} (use do_sample=False for greedy)")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    def kwargs(self) -> dict:
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": 0}


GREEDY = Sampling()


def model_device(model) -> torch.device:
    """The device of a plain HF model, a peft wrapper or a LoadedModel's HF model."""
    return next(model.parameters()).device


@torch.no_grad()
def generate_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int = 16, *,
                 sampling: Sampling = GREEDY) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) per prompt, batched like `generate`; the response stops before its first
    end-of-turn token (so analyses see the reasoning text only) and never contains padding."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    model.eval()
    dev = model_device(model)
    stop = {tokenizer.eos_token_id} | {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")
                                        if t in tokenizer.get_vocab()}
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="left"
                        ).to(dev)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **sampling.kwargs())
        width = enc["input_ids"].shape[1]
        for row, mask, g in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), gen.tolist()):
            resp = g[width:]
            cut = next((j for j, t in enumerate(resp) if t in stop), len(resp))
            out.append(([t for t, m in zip(row, mask) if m], resp[:cut]))
    return out


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int = 16, *,
             sampling: Sampling = GREEDY, progress: bool = False) -> list[str]:
    """Responses to fully formatted prompts (batched, left padding, KV cache), decoded without the prompt.

    Greedy by default; pass `Sampling(do_sample=True, temperature=0.6, top_p=0.95, seed=0)` to sample (the seed makes
    a batch reproducible). Inputs are moved to the model's device. Stops at the tokenizer's EOS.
    """
    from tqdm.auto import tqdm

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    model.eval()
    dev = model_device(model)
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    outs: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="generate", leave=False):
        enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="left"
                        ).to(dev)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **sampling.kwargs())
        outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outs
