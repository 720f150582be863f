"""Memory guard: a step's peak memory estimated from the model's config alone, checked against the device before any
heavy work, with one clear message that names a setting that fits (issue 15).

The estimate adds the parts a step keeps alive at its peak (bytes):

- **weights**: every parameter at the dtype it is held in (the fp32 masters of `support.finetune.MASTER_DTYPE` when
  training);
- **gradients and optimizer state**: one gradient per trainable parameter and AdamW's two fp32 moments;
- **activations**: what backward needs, per layer and token, for a decoder layer of hidden size d, K/V width
  d_kv and MLP width f: the norm inputs, Q/K/V, the attention output and the MLP's four f-wide tensors, plus the
  H·T² attention probabilities of eager attention (which the TransformerBridge uses); then the logits and their
  fp32 log-softmax, and the transient gradients of one layer's attention. Gradient checkpointing keeps one layer
  input per layer plus one layer's full set;
- **kept**: what a method holds on purpose (attention maps of the credit pass, EAP buffers, traced head outputs).

`guard` compares the total with what the device has free (CUDA: `torch.cuda.mem_get_info`; CPU: MemAvailable) and,
when it does not fit, halves the named setting until it does and says so. The estimate is checked against measured
CPU peaks in tests/test_memory.py (within the tolerance `TOLERANCE` states).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import ParameterError

GiB = 1024 ** 3
#: How far the estimate may sit from a measured peak (relative), as tested on CPU in fp32.
TOLERANCE = 0.35
#: Share of the free memory a step may plan to use (allocator fragmentation, CUDA context, Python objects).
HEADROOM = 0.85
BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2, "fp32": 4, "fp16": 2, "bf16": 2}


class MemoryBudgetError(ParameterError):
    """The step will not fit the device: the message names a setting that would."""


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that memory depends on, read from its HF config."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_ff: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: Any) -> "Shape":
        d, h = int(cfg.hidden_size), int(cfg.num_attention_heads)
        return cls(n_layers=int(cfg.num_hidden_layers), d_model=d, n_heads=h,
                   n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or h),
                   d_head=int(getattr(cfg, "head_dim", None) or d // h), d_ff=int(cfg.intermediate_size),
                   vocab=int(cfg.vocab_size), tied=bool(getattr(cfg, "tie_word_embeddings", False)))

    @property
    def n_params(self) -> int:
        """Parameters of a gated-MLP decoder (Qwen2/3, Llama), biases and norms included approximately."""
        d, q, kv = self.d_model, self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        layer = d * q + 2 * d * kv + q * d + 3 * d * self.d_ff + 2 * d + q + 2 * kv
        return self.n_layers * layer + self.vocab * d * (1 if self.tied else 2) + d


@dataclass
class Footprint:
    """Estimated peak bytes of one step, by part."""

    what: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def text(self) -> str:
        body = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.parts.items() if v)
        return f"{self.what}: ~{self.total / GiB:.2f} GiB ({body} GiB)"


def activation_bytes(s: Shape, batch: int, seq: int, act: int, eager: bool = True, checkpointing: bool = False
                     ) -> int:
    """Activations kept for backward (see the module docstring), `act` bytes per element."""
    kv = s.n_kv_heads * s.d_head
    per_token = 4 * s.d_model + 2 * s.n_heads * s.d_head + 2 * kv + 4 * s.d_ff  # norms, q/attn out, k/v, MLP
    attn = s.n_heads * seq * seq if eager else 0  # the softmax output, per sequence (the matmul with V keeps it)
    layer = batch * (seq * per_token + attn) * act
    transient = 2 * batch * attn * act  # backward of one layer: the gradients of the scores and probabilities
    logits = batch * seq * s.vocab * (act + 2 * 4)  # logits, their fp32 upcast and log-softmax
    if checkpointing:
        return s.n_layers * batch * seq * s.d_model * act + layer + transient + logits
    return s.n_layers * layer + transient + logits


def train_footprint(s: Shape, trainable: int, batch: int, seq: int, precision: str = "fp32",
                    checkpointing: bool = False, eager: bool = True, kept: int = 0,
                    what: str = "training step") -> Footprint:
    """One optimizer step: fp32 master weights, gradients and AdamW moments of `trainable` parameters,
    activations at the autocast width of `precision` (fp32, bf16 or fp16); `kept` bytes held on purpose."""
    act = BYTES.get(precision, 4)
    return Footprint(what, {"weights": 4 * s.n_params, "gradients": 4 * trainable, "optimizer": 8 * trainable,
                            "activations": activation_bytes(s, batch, seq, act, eager, checkpointing),
                            "kept": kept})


def inference_footprint(s: Shape, batch: int, seq: int, dtype: Any = torch.float32, kept: int = 0,
                        what: str = "forward pass") -> Footprint:
    """A no-grad pass (or generation up to `seq` tokens): weights, the KV cache, one layer's transient activations
    (eager attention's H·T² scores included) and the last position's logits; `kept` bytes held on purpose."""
    b = BYTES.get(dtype, 4)
    cache = 2 * s.n_layers * batch * seq * s.n_kv_heads * s.d_head * b
    transient = batch * (seq * (2 * s.d_model + 3 * s.d_ff) + 2 * s.n_heads * seq * seq) * b
    return Footprint(what, {"weights": b * s.n_params, "kv cache": cache, "activations": transient,
                            "logits": batch * s.vocab * 4, "kept": kept})


def free_bytes(device: torch.device | str) -> int:
    """What the device can still give: CUDA's free memory, or the machine's MemAvailable on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # pragma: no cover - non-Linux

    return int(psutil.virtual_memory().available)


def guard(estimate: Callable[[int], Footprint], knob: str, value: int, device: torch.device | str,
          available: int | None = None, headroom: float = HEADROOM) -> Footprint:
    """Check `estimate(value)` against the device before heavy work; returns the footprint when it fits.

    Otherwise raise one `MemoryBudgetError` with the estimate, what is free, and the largest `knob` (halving from
    `value`) whose estimate fits, or, when even 1 does not, that the model itself does not fit."""
    budget = int(headroom * (free_bytes(device) if available is None else available))
    fp = estimate(value)
    if fp.total <= budget:
        return fp
    v = value
    while v > 1:
        v = max(1, v // 2)
        if estimate(v).total <= budget:
            raise MemoryBudgetError(
                f"{fp.text()} does not fit {budget / GiB:.2f} GiB usable on {torch.device(device)}; "
                f"{knob}={v} would (~{estimate(v).total / GiB:.2f} GiB)")
    raise MemoryBudgetError(
        f"{fp.text()} does not fit {budget / GiB:.2f} GiB usable on {torch.device(device)}, not even with "
        f"{knob}=1 (~{estimate(1).total / GiB:.2f} GiB): choose a smaller model, a lower precision or fewer "
        "trainable parameters")
