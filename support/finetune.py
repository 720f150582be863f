"""Selective Head Fine-Tuning (SHFT) and its baselines (paper 000, Sec. 4, Eq. 4; App. E; Tables 1-2, 6-7).

Regimes (`REGIMES`), all trained by the same `train` loop with identical hyperparameters, prompts and data order:
``base`` (no training), ``wh`` / ``sh`` (SHFT on the wavering / steadfast head set), ``random`` (SHFT on a seeded
random draw of the same size, `random_heads`), ``full`` (every parameter) and ``lora`` (peft, r=8, alpha=16 on
q_proj/v_proj, dropout 0, bias none; injected into the plain HF model before any bridging, `lora_transform`).

SHFT (Eq. 4): only the Q, K, V and O projection slices of the selected heads Θ_H are trained; norms, MLPs,
embeddings, unembedding and every other slice stay at their pre-trained values.

* **GQA policy.** Each selected query head (l, h) trains its Q rows and its O columns; each key/value group
  (l, g) that contains at least one selected query head trains its (shared) K and V rows once. A group shared
  by several selected heads is therefore counted once.
* **Biases.** Qwen2 has q/k/v biases (o_proj has none). With ``include_bias=True`` (default) the bias entries of
  the selected Q rows and K/V rows are trained too; ``include_bias=False`` trains weights only.
* **Exact count** (`shft_param_count`), d = hidden size, d_head = head dim, M = |H|, G = number of distinct
  (layer, kv-group) pairs touched, b = 1 when q/k/v biases exist and are trained, else 0:

      P(H) = 2·d·d_head·M  +  2·d·d_head·G  +  b·d_head·(M + 2G)

  Without GQA (n_kv_heads = n_heads) G = M, so P = 4·d·d_head·M + 3·b·d_head·M, and with no biases exactly the
  paper's footnote 2: P = 4·d·d_head·M (Llama-2-7B, M = 30: 4·4096·128·30 = 62.9M).

Implementation: the trainable slices are small zero-initialised `nn.Parameter` deltas (one set per layer) held in
a `SHFT` module that is registered on the HF model as ``model.shft``; forward hooks on q/k/v/o_proj add the slice
contributions (x·ΔQᵀ scattered into the selected output rows; the selected input columns of o_proj times ΔO).
The function is exactly that of the weights W + Δ, gradients reach only Δ, AdamW sees only slice-sized tensors
(no full-size masked copies, no full-size weight gradients), and any standard loop (HF Trainer, accelerate,
DDP) trains it since the deltas are ordinary parameters of the model. `SHFT.merge()` writes W += Δ into the HF
weights and removes the hooks and the module (for saving, bridging and evaluation).

Training recipe (App. E; `TrainConfig`): NLL on the assistant response only (prompt masked), max length 1024
truncating from the left (suffix kept), AdamW, cosine schedule with warmup ratio 0.03, lr 5e-5, batch 1 with
gradient accumulation 8, bf16 autocast where the hardware supports it (fp16 + loss scaling otherwise on GPU,
fp32 on CPU). Unstated in App. E, so HF Trainer defaults: weight decay 0, gradient clipping at norm 1.0,
betas (0.9, 0.999), eps 1e-8. Checkpoints every `save_every` steps (trainable tensors, optimizer state, scheduler,
RNG states; safetensors + JSON, no pickle) make `train` resumable: re-running with the same `out_dir` continues.

Metrics: accuracy, macro recall and macro F1 on the final answer letter parsed from the `Answer: X` line
(`mc_metrics`); missing or invalid answers count as wrong and are reported as `n_invalid`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .artifacts import atomic_write_bytes, read_tensors, write_tensors
from .params import check_budget
from .prompts import LETTERS, format_mc_prompt, parse_answer
from .selection import Head, random_heads


#: Regime names, in the order of the paper's Table 1.
REGIMES = ("base", "full", "lora", "random", "sh", "wh")
REGIME_LABELS = {"base": "base", "full": "Full SFT", "lora": "LoRA", "random": "Random-head", "sh": "SH-only",
                 "wh": "WH-only"}
HEAD_REGIMES = ("wh", "sh", "random")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


# ----------------------------------------------------------------------------------------------- validation
def check_regime(regime: str) -> str:
    """Return `regime` or raise one ValueError naming the valid choices."""
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; valid choices: {', '.join(REGIMES)}")
    return regime


def _as_head(h: Any) -> Head:
    if isinstance(h, Mapping):
        return int(h["layer"]), int(h["head"])
    layer, head = h
    return int(layer), int(head)


def check_heads(heads: Iterable[Any], n_layers: int, n_heads: int) -> list[Head]:
    """Sorted unique (layer, head) pairs; raise one ValueError naming the valid ranges for any out-of-range index.

    Accepts (layer, head) pairs or dicts with "layer" and "head" keys (head-set JSON rows).
    """
    out = sorted({_as_head(h) for h in heads})
    if not out:
        raise ValueError(f"empty head set; valid choices: 1 to {n_layers * n_heads} heads (layer, head) with "
                         f"layer in [0, {n_layers - 1}] and head in [0, {n_heads - 1}]")
    bad = [(l, h) for l, h in out if not (0 <= l < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(f"head index out of range: {bad}; valid choices: layer in [0, {n_layers - 1}], "
                         f"head in [0, {n_heads - 1}]")
    return out


# ----------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class Geometry:
    """Attention shapes of an HF decoder (d = hidden size)."""

    d_model: int
    d_head: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    qkv_bias: bool

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The per-layer attention modules (those owning q/k/v/o_proj), in layer order. Plain HF models only."""
    mods = [m for _, m in model.named_modules() if all(hasattr(m, p) for p in PROJ)]
    n = int(model.config.num_hidden_layers)
    if len(mods) != n:
        raise ValueError(f"found {len(mods)} attention modules with {PROJ} for {n} layers; apply SHFT to the plain "
                         "HF model (before bridging); supported: Qwen2, Qwen3, Llama-style decoders")
    return mods


def _linear(mod: nn.Module) -> nn.Module:
    """The underlying nn.Linear (unwraps a peft LoRA layer's `base_layer`)."""
    return getattr(mod, "base_layer", mod)


def geometry(model: nn.Module) -> Geometry:
    """Read the attention geometry from the HF config (head_dim when the config has one, else d/H); also works on a
    bridged model."""
    c = model.config
    n_heads = int(c.num_attention_heads)
    d_head = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    q = next(m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "q_proj" in n.split(".")[-2:])
    return Geometry(d_model=int(c.hidden_size), d_head=d_head, n_layers=int(c.num_hidden_layers), n_heads=n_heads,
                    n_kv_heads=int(getattr(c, "num_key_value_heads", None) or n_heads),
                    qkv_bias=getattr(q, "bias", None) is not None)


def kv_groups(heads: Sequence[Head], geom: Geometry) -> list[Head]:
    """Distinct (layer, kv-group) pairs that contain a selected query head (GQA policy)."""
    return sorted({(l, h // geom.group_size) for l, h in heads})


def shft_param_count(heads: Sequence[Head], geom: Geometry, include_bias: bool = True) -> int:
    """Exact SHFT trainable-parameter count P(H) = 2·d·d_head·(M + G) + b·d_head·(M + 2G) (module docstring)."""
    heads = check_heads(heads, geom.n_layers, geom.n_heads)
    m, g = len(heads), len(kv_groups(heads, geom))
    b = int(include_bias and geom.qkv_bias)
    return 2 * geom.d_model * geom.d_head * (m + g) + b * geom.d_head * (m + 2 * g)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held in the optimizer state (AdamW: two moments per trainable element plus a step counter)."""
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


# ----------------------------------------------------------------------------------------------- SHFT
def _rows(units: Sequence[int], d_head: int, device) -> torch.Tensor:
    return torch.tensor([u * d_head + i for u in units for i in range(d_head)], dtype=torch.long, device=device)


class LayerDeltas(nn.Module):
    """Trainable slice deltas of one layer: ΔQ, ΔK, ΔV rows [r, d], ΔO columns [d, r], optional bias deltas."""

    def __init__(self, attn: nn.Module, q_heads: Sequence[int], groups: Sequence[int], geom: Geometry,
                 include_bias: bool, dtype: torch.dtype):
        super().__init__()
        dev = _linear(attn.q_proj).weight.device
        self.register_buffer("q_idx", _rows(q_heads, geom.d_head, dev), persistent=True)
        self.register_buffer("kv_idx", _rows(groups, geom.d_head, dev), persistent=True)
        nq, nkv, d = len(self.q_idx), len(self.kv_idx), geom.d_model
        zeros = lambda *s: nn.Parameter(torch.zeros(*s, device=dev, dtype=dtype))  # noqa: E731
        self.q, self.k, self.v, self.o = zeros(nq, d), zeros(nkv, d), zeros(nkv, d), zeros(d, nq)
        bias = include_bias and geom.qkv_bias
        self.q_bias = zeros(nq) if bias else None
        self.k_bias = zeros(nkv) if bias else None
        self.v_bias = zeros(nkv) if bias else None
        self.attn = [attn]  # a list, so the attention module is not registered as a submodule
        self.handles: list = []

    def _rows_hook(self, which: str) -> Callable:
        def hook(mod, args, out):
            x = args[0]
            w, b = getattr(self, which), getattr(self, f"{which}_bias")
            extra = F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
            idx = self.q_idx if which == "q" else self.kv_idx
            return out.index_add(-1, idx, extra.to(out.dtype))
        return hook

    def _o_hook(self, mod, args, out):
        x = args[0].index_select(-1, self.q_idx)
        return out + F.linear(x, self.o.to(x.dtype)).to(out.dtype)

    def attach(self) -> None:
        a = self.attn[0]
        self.handles = [a.q_proj.register_forward_hook(self._rows_hook("q")),
                        a.k_proj.register_forward_hook(self._rows_hook("k")),
                        a.v_proj.register_forward_hook(self._rows_hook("v")),
                        a.o_proj.register_forward_hook(self._o_hook)]

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    @torch.no_grad()
    def merge(self) -> None:
        """W[rows] += Δ in the HF weights (q/k/v rows, o columns, biases)."""
        a = self.attn[0]
        for which, idx in (("q", self.q_idx), ("k", self.kv_idx), ("v", self.kv_idx)):
            lin = _linear(getattr(a, f"{which}_proj"))
            lin.weight.index_add_(0, idx, getattr(self, which).to(lin.weight.dtype))
            b = getattr(self, f"{which}_bias")
            if b is not None:
                lin.bias.index_add_(0, idx, b.to(lin.bias.dtype))
        o = _linear(a.o_proj)
        o.weight.index_add_(1, self.q_idx, self.o.to(o.weight.dtype))


class SHFT(nn.Module):
    """All layers' slice deltas for a head set; registered on the HF model as `model.shft` while active."""

    def __init__(self, model: nn.Module, heads: Sequence[Head], include_bias: bool = True,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.geom = geometry(model)
        self.heads = check_heads(heads, self.geom.n_layers, self.geom.n_heads)
        self.include_bias = include_bias
        attns = attention_modules(model)
        by_layer: dict[int, list[int]] = {}
        for l, h in self.heads:
            by_layer.setdefault(l, []).append(h)
        self.layers = nn.ModuleDict({
            str(l): LayerDeltas(attns[l], hs, sorted({h // self.geom.group_size for h in hs}), self.geom,
                                include_bias, dtype)
            for l, hs in sorted(by_layer.items())})
        self.model = [model]

    def deltas(self) -> dict[str, torch.Tensor]:
        """The trainable deltas and their row indices (a state dict; save with `artifacts.write_tensors`)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def merge(self) -> nn.Module:
        """Write W += Δ into the HF weights, remove hooks and the `shft` module; returns the plain HF model."""
        for ld in self.layers.values():
            ld.merge()
            ld.detach()
        model = self.model[0]
        if getattr(model, "shft", None) is self:
            del model.shft
        return model


def apply_shft(model: nn.Module, heads: Sequence[Any], include_bias: bool = True,
               dtype: torch.dtype = torch.float32) -> SHFT:
    """Freeze `model` entirely and attach trainable Q/K/V/O slice deltas for `heads` (Eq. 4; GQA policy above).

    Works on a plain HF model; the deltas become parameters of `model` (as `model.shft`), so `model.parameters()`
    with requires_grad yields exactly the slices for any optimizer or standard training loop.
    """
    if getattr(model, "shft", None) is not None:
        raise ValueError("model already has SHFT deltas attached; merge() them first")
    for p in model.parameters():
        p.requires_grad_(False)
    shft = SHFT(model, heads, include_bias, dtype)
    model.add_module("shft", shft)
    for ld in shft.layers.values():
        ld.attach()
    return shft


# ----------------------------------------------------------------------------------------------- baselines
def lora_config(r: int = 8, alpha: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")):
    """App. E LoRA: rank 8, alpha 16 on q_proj/v_proj of every layer, dropout 0, bias none."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")


def apply_lora(model: nn.Module, r: int = 8, alpha: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")):
    """Inject peft LoRA adapters in place (same HF class, so it bridges); only adapter weights train."""
    from peft import inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    model = inject_adapter_in_model(lora_config(r, alpha, targets), model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def lora_transform(r: int = 8, alpha: int = 16, targets: Sequence[str] = ("q_proj", "v_proj")) -> Callable:
    """`load_model(name, transform=lora_transform())`: LoRA applied to the HF model before bridging."""
    return lambda model: apply_lora(model, r, alpha, targets)


def lora_param_count(geom: Geometry, r: int = 8) -> int:
    """LoRA r on q_proj and v_proj in every layer: r·(d_in + d_out) per module."""
    q = r * (geom.d_model + geom.n_heads * geom.d_head)
    v = r * (geom.d_model + geom.n_kv_heads * geom.d_head)
    return geom.n_layers * (q + v)


@dataclass
class Prepared:
    """A model made ready for one regime: what trains, how many parameters, and how to finish."""

    regime: str
    model: nn.Module
    heads: list[Head] = field(default_factory=list)
    shft: SHFT | None = None

    @property
    def n_trainable(self) -> int:
        return count_trainable(self.model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What to save for this regime: SHFT deltas, LoRA adapter weights, nothing for base/full."""
        if self.shft is not None:
            return self.shft.deltas()
        if self.regime == "lora":
            return {n: p.detach() for n, p in self.model.named_parameters() if "lora_" in n}
        return {}

    def finish(self, merge: bool | None = None) -> nn.Module:
        """Freeze, eval mode, and merge SHFT deltas into the weights (LoRA adapters stay live, as peft runs them).

        `merge=None` merges only fp32 weights: adding small deltas to bf16/fp16 weights would round them away,
        so there the hooks stay live instead (the model then computes exactly W + Δ in the forward pass).
        """
        if self.shft is not None:
            w = _linear(attention_modules(self.model)[0].q_proj).weight
            if merge or (merge is None and w.dtype == torch.float32):
                self.shft.merge()
                self.shft = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self.model.eval()


def prepare(regime: str, model: nn.Module, heads: Sequence[Any] | None = None, include_bias: bool = True,
            lora_r: int = 8, lora_alpha: int = 16) -> Prepared:
    """Freeze/unfreeze `model` for `regime`; head regimes need `heads` (random: pass `random_heads(...)`)."""
    check_regime(regime)
    if regime in HEAD_REGIMES:
        if heads is None:
            raise ValueError(f"regime {regime!r} needs a head set; head regimes: {', '.join(HEAD_REGIMES)}")
        shft = apply_shft(model, heads, include_bias)
        return Prepared(regime, model, shft.heads, shft)
    if regime == "lora":
        return Prepared(regime, apply_lora(model, lora_r, lora_alpha))
    for p in model.parameters():
        p.requires_grad_(regime == "full")
    return Prepared(regime, model)


# ----------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SFTExample:
    """Token ids and labels (-100 on the prompt) of one training example."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def sft_pair(item: Any, tokenizer=None, template: str = "model") -> tuple[str, str]:
    """(prompt, response) for a toy item (its own ChatML prompt) or an MCItem (App. B prompt + rationale)."""
    if hasattr(item, "prompt") and hasattr(item, "response"):
        return item.prompt, item.response
    prompt = format_mc_prompt(item.question, item.options, template, tokenizer)
    rationale = (getattr(item, "rationale", None) or "").strip()
    eos = getattr(tokenizer, "eos_token", None) or ""
    return prompt, (f"{rationale}\n" if rationale else "") + f"Answer: {item.answer}{eos}"


def encode_example(tokenizer, prompt: str, response: str, max_length: int = 1024, id: str = "") -> SFTExample:
    """Prompt ids (masked, -100) + response ids (trained); truncated from the left to keep the suffix (App. E)."""
    p = tokenizer(prompt).input_ids
    r = tokenizer(response, add_special_tokens=False).input_ids
    ids, labels = (p + r)[-max_length:], ([-100] * len(p) + r)[-max_length:]
    return SFTExample(id=id, input_ids=tuple(ids), labels=tuple(labels))


def build_dataset(items: Sequence[Any], tokenizer, max_length: int = 1024, template: str = "model"
                  ) -> list[SFTExample]:
    """Encode items (toy items or MCItems) for SFT."""
    return [encode_example(tokenizer, *sft_pair(it, tokenizer, template), max_length=max_length,
                           id=str(getattr(it, "id", i))) for i, it in enumerate(items)]


def collate(batch: Sequence[SFTExample], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and loss."""
    n = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[i, : len(e.labels)] = torch.tensor(e.labels)
        mask[i, : len(e.input_ids)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


# ----------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """App. E recipe. Profiles change `epochs`/`max_steps` (and the ci profile may raise `lr`)."""

    lr: float = 5e-5
    epochs: float = 10.0
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 8
    warmup_ratio: float = 0.03
    max_length: int = 1024
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"
    log_every: int = 10
    save_every: int | None = None

    def steps(self, n_examples: int) -> int:
        """Optimizer steps: `max_steps`, else ceil(epochs·n / (batch·accum))."""
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * n_examples / (self.batch_size * self.grad_accum)))

    def validate(self) -> "TrainConfig":
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid choices: {', '.join(PRECISIONS)}")
        for k in ("batch_size", "grad_accum", "max_length"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be ≥ 1, got {getattr(self, k)}")
        return self


def data_order(n: int, n_needed: int, seed: int) -> list[int]:
    """Example indices in training order: a seeded permutation per epoch, concatenated (identical across regimes)."""
    out: list[int] = []
    epoch = 0
    while len(out) < n_needed:
        perm = list(range(n))
        random.Random(f"order|{seed}|{epoch}").shuffle(perm)
        out += perm
        epoch += 1
    return out[:n_needed]


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16 where supported, fp16 on other GPUs, none (fp32) on CPU, unless asked otherwise."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass
class TrainResult:
    """Loss log and bookkeeping of one `train` call."""

    steps: int
    log: list[dict]
    seconds: float
    resumed_from: int = 0
    n_trainable: int = 0
    optimizer_bytes: int = 0

    @property
    def final_loss(self) -> float | None:
        return self.log[-1]["loss"] if self.log else None


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def train(model: nn.Module, examples: Sequence[SFTExample], cfg: TrainConfig = TrainConfig(),
          out_dir: str | Path | None = None, progress: bool = False, pad_id: int = 0,
          callback: Callable[[int, float], None] | None = None, prov: Mapping[str, Any] | None = None
          ) -> TrainResult:
    """Train the model's requires_grad parameters on response-only NLL (App. E); resumable through `out_dir`.

    With `out_dir`, a checkpoint is written every `cfg.save_every` steps and the final trainable tensors to
    `out_dir/final.safetensors` (with `prov` as provenance); calling again with the same `out_dir` resumes from the
    latest checkpoint, or just reloads the final tensors when the run had finished.
    """
    cfg.validate()
    params = _trainable(model)
    t0 = time.time()
    if not params:
        return TrainResult(steps=0, log=[], seconds=0.0)
    out = Path(out_dir) if out_dir is not None else None
    key = run_key(cfg, examples)
    if out is not None and (out / "train_log.json").exists():
        return _load_finished(model, out, key)
    dev = next(iter(params.values())).device
    total = cfg.steps(len(examples))
    per_step = cfg.batch_size * cfg.grad_accum
    order = data_order(len(examples), total * per_step, cfg.seed)
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
    amp = amp_dtype(cfg.precision, dev)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    log: list[dict] = []
    start = 0
    if out is not None and (out / "checkpoint" / "latest.json").exists():
        start, log = load_checkpoint(out, model, opt, sched, scaler, key)
    model.train()
    bar = tqdm(total=total, initial=start, disable=not progress, desc="train", leave=False)
    try:
        for step in range(start, total):
            loss = _step(model, examples, order[step * per_step:(step + 1) * per_step], cfg, opt, sched, scaler,
                         amp, pad_id, dev, params)
            if (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == total:
                log.append({"step": step + 1, "loss": round(loss, 6), "lr": sched.get_last_lr()[0]})
            bar.update(1)
            if out is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                save_checkpoint(out, model, opt, sched, scaler, key, step + 1, log)
            if callback is not None:
                callback(step + 1, loss)
    finally:
        bar.close()
        model.eval()
    res = TrainResult(steps=total, log=log, seconds=time.time() - t0, resumed_from=start,
                      n_trainable=sum(p.numel() for p in params.values()), optimizer_bytes=optimizer_state_bytes(opt))
    if out is not None:
        write_tensors(out / "final.safetensors", {n: p for n, p in params.items()}, dict(prov or {}))
        atomic_write_bytes(out / "train_log.json", json.dumps(
            {"config": key, **asdict(res)}, indent=1).encode())
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return res


def _step(model, examples, idx, cfg, opt, sched, scaler, amp, pad_id, dev, params) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns the mean loss."""
    total = 0.0
    for i in range(cfg.grad_accum):
        chunk = idx[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        batch = collate([examples[j] for j in chunk], pad_id, dev)
        with torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            loss = model(**batch).loss / cfg.grad_accum
        (scaler.scale(loss) if scaler else loss).backward()
        total += float(loss.detach())
    if scaler is not None:
        scaler.unscale_(opt)
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.max_grad_norm)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return total


# ----------------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> tuple[dict, dict]:
    """(tensors, json) for torch (CPU + CUDA), Python `random` and NumPy RNG states."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    v, st, gauss = random.getstate()
    n = np.random.get_state()
    js = {"python": [v, list(st), gauss], "numpy": [n[0], n[1].tolist(), int(n[2]), int(n[3]), float(n[4])]}
    return tensors, js


def _set_rng_state(tensors: Mapping[str, torch.Tensor], js: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, st, gauss = js["python"]
    random.setstate((v, tuple(st), gauss))
    n = js["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def _opt_split(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Optimizer state dict as (tensors, json): per-parameter tensors to safetensors, the rest to JSON."""
    sd = opt.state_dict()
    tensors = {f"opt/{pid}/{k}": v for pid, s in sd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    scalars = {str(pid): {k: v for k, v in s.items() if not torch.is_tensor(v)} for pid, s in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _opt_join(tensors: Mapping[str, torch.Tensor], js: Mapping[str, Any]) -> dict:
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in js["scalars"].items()}
    for key, v in tensors.items():
        if key.startswith("opt/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": js["param_groups"]}


def run_key(cfg: TrainConfig, examples: Sequence[SFTExample]) -> dict:
    """What identifies a training run for resuming: the config plus a hash of the encoded data (in order)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return {**asdict(cfg), "data": h.hexdigest()[:16], "n_examples": len(examples)}


def save_checkpoint(out: Path, model, opt, sched, scaler, key: Mapping[str, Any], step: int, log: list[dict]
                    ) -> Path:
    """Write `out/checkpoint/step-<k>/` (trainable tensors, optimizer, RNG: safetensors; the rest: JSON), then
    point `latest.json` at it atomically and delete older checkpoints (at most one kept)."""
    root = out / "checkpoint"
    d = root / f"step-{step}"
    d.mkdir(parents=True, exist_ok=True)
    opt_t, opt_j = _opt_split(opt)
    rng_t, rng_j = _rng_state()
    write_tensors(d / "trainable.safetensors", _trainable(model), {"step": step})
    write_tensors(d / "state.safetensors", {**opt_t, **rng_t}, {"step": step})
    state = {"step": step, "config": dict(key), "optimizer": opt_j, "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict() if scaler else None, "rng": rng_j, "log": log}
    atomic_write_bytes(d / "state.json", json.dumps(state).encode())
    atomic_write_bytes(root / "latest.json", json.dumps({"step": step, "dir": d.name}).encode())
    for old in root.glob("step-*"):
        if old != d:
            shutil.rmtree(old, ignore_errors=True)
    return d


def _check_config(saved: Mapping[str, Any], key: Mapping[str, Any], where: Path) -> None:
    keep = ("save_every", "log_every")
    a = {k: v for k, v in saved.items() if k not in keep}
    b = {k: v for k, v in key.items() if k not in keep}
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"{where} holds a run with a different training config or data (differs in {diff}); "
                         "use a fresh output directory")


def _load_params(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: Path) -> None:
    params = _trainable(model)
    if set(params) != set(tensors):
        raise ValueError(f"{where} was saved for other trainable parameters (e.g. another regime or head set); "
                         "use a fresh output directory")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])


def load_checkpoint(out: Path, model, opt, sched, scaler, key: Mapping[str, Any]) -> tuple[int, list[dict]]:
    """Restore trainable tensors, optimizer, scheduler, scaler and RNG states; returns (step, log)."""
    root = out / "checkpoint"
    d = root / json.loads((root / "latest.json").read_text())["dir"]
    state = json.loads((d / "state.json").read_text())
    _check_config(state["config"], key, out)
    _load_params(model, read_tensors(d / "trainable.safetensors")[0], d)
    tensors, _ = read_tensors(d / "state.safetensors")
    opt.load_state_dict(_opt_join(tensors, state["optimizer"]))
    sched.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    _set_rng_state(tensors, state["rng"])
    return int(state["step"]), list(state["log"])


def _load_finished(model: nn.Module, out: Path, key: Mapping[str, Any]) -> TrainResult:
    info = json.loads((out / "train_log.json").read_text())
    _check_config(info["config"], key, out)
    _load_params(model, read_tensors(out / "final.safetensors")[0], out)
    model.eval()
    keys = ("steps", "log", "seconds", "resumed_from", "n_trainable", "optimizer_bytes")
    return TrainResult(**{k: info[k] for k in keys})


# ----------------------------------------------------------------------------------------------- loading
def load_plain(name: str, device: str | None = None, dtype: str | torch.dtype | None = None):
    """(plain HF model, tokenizer) for training, resolved exactly as `support.models.load_model` does (no bridge).

    Train on the plain model, then `support.models.rebridge(lm, model)` for tracing/analysis.
    """
    from .models import load_hf, load_tokenizer, pick_device, pick_dtype, resolve

    kind, path = resolve(name)
    dev = pick_device(device)
    tok = load_tokenizer(kind, path, name)
    return load_hf(kind, path, name, dev, pick_dtype(dev, dtype)), tok


# ----------------------------------------------------------------------------------------------- evaluation
def eval_prompt(item: Any, tokenizer=None, template: str = "model") -> str:
    """The evaluation prompt: the same prompt the model is trained on (`sft_pair`)."""
    return sft_pair(item, tokenizer, template)[0]


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int = 256, batch_size: int = 16,
             progress: bool = False) -> list[str]:
    """Greedy responses (KV cache, left padding), decoded without the prompt."""
    model.eval()
    dev = next(model.parameters()).device
    outs: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="generate", leave=False):
        enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True, padding_side="left"
                        ).to(dev)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        outs += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outs


def mc_metrics(golds: Sequence[str], preds: Sequence[str | None], letters: str = LETTERS) -> dict[str, float]:
    """Accuracy, macro recall, macro F1 on answer letters (Table 1); `n_invalid` counts missing/invalid answers.

    Invalid answers are wrong (a miss for their gold letter) and form no class of their own. Macro averages run
    over the letters that occur as gold or valid prediction (scikit-learn's default label set, zero_division=0).
    """
    if len(golds) != len(preds) or not golds:
        raise ValueError(f"need equally many gold and predicted answers (got {len(golds)} and {len(preds)}), ≥ 1")
    valid = [p if p is not None and p in letters else None for p in preds]
    labels = sorted(set(golds) | {p for p in valid if p is not None})
    rec, f1 = [], []
    for c in labels:
        tp = sum(g == c and p == c for g, p in zip(golds, valid))
        fn = sum(g == c and p != c for g, p in zip(golds, valid))
        fp = sum(p == c and g != c for g, p in zip(golds, valid))
        r = tp / (tp + fn) if tp + fn else 0.0
        pr = tp / (tp + fp) if tp + fp else 0.0
        rec.append(r)
        f1.append(2 * pr * r / (pr + r) if pr + r else 0.0)
    n = len(golds)
    return {"acc": sum(g == p for g, p in zip(golds, valid)) / n, "rec": float(np.mean(rec)),
            "f1": float(np.mean(f1)), "n_invalid": sum(p is None for p in valid), "n": n}


def evaluate_mc(model: nn.Module, tokenizer, items: Sequence[Any], template: str = "model",
                max_new_tokens: int = 256, batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """Generate, parse `Answer: X` (support.prompts.parse_answer) and score; returns metrics + predictions."""
    prompts = [eval_prompt(it, tokenizer, template) for it in items]
    responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
    letters = [LETTERS[: len(it.options)] for it in items]
    preds = [parse_answer(r, ls) for r, ls in zip(responses, letters)]
    return {**mc_metrics([it.answer for it in items], preds, "".join(sorted(set("".join(letters))))),
            "preds": preds, "responses": responses}


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 1024, batch_size: int = 8,
               progress: bool = False) -> float:
    """Token-level perplexity exp(Σ NLL / Σ tokens) over texts, each cut into non-overlapping windows (Table 2)."""
    model.eval()
    dev = next(model.parameters()).device
    windows = [ids[i:i + max_length] for t in texts for ids in [tokenizer(t).input_ids]
               for i in range(0, len(ids), max_length) if len(ids[i:i + max_length]) > 1]
    nll, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), disable=not progress, desc="ppl", leave=False):
        chunk = [SFTExample("", tuple(w), tuple(w)) for w in windows[i:i + batch_size]]
        b = collate(chunk, tokenizer.pad_token_id or 0, dev)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        labels = b["labels"][:, 1:]
        nll += float(F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=-100, reduction="sum"))
        count += int((labels != -100).sum())
    return math.exp(nll / max(1, count))


def entropy_drop_test(dh_wh: Sequence[float], dh_sh: Sequence[float]) -> dict[str, float]:
    """Fig. 5 statistics for ΔH = H_pre − H_post: two-sided Mann–Whitney U (scipy), rank-biserial r, Cliff's δ.

    r_rb = 2·U_WH/(n₁n₂) − 1 and δ = (#{x>y} − #{x<y})/(n₁n₂) are algebraically equal (ties count half in U);
    both are reported, computed independently, as the paper does.
    """
    from scipy.stats import mannwhitneyu

    x, y = np.asarray(dh_wh, dtype=float), np.asarray(dh_sh, dtype=float)
    if len(x) < 1 or len(y) < 1:
        raise ValueError("need at least one ΔH value per group")
    res = mannwhitneyu(x, y, alternative="two-sided")
    n = len(x) * len(y)
    cliff = float((np.sign(x[:, None] - y[None, :])).sum() / n)
    return {"U": float(res.statistic), "p": float(res.pvalue), "r_rb": float(2 * res.statistic / n - 1),
            "cliffs_delta": cliff, "mean_wh": float(x.mean()), "mean_sh": float(y.mean()), "n_wh": len(x),
            "n_sh": len(y)}
