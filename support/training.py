"""Supervised fine-tuning data and the training loop shared by every regime of paper 000 (App. E).

Training recipe (App. E; `TrainConfig`): NLL on the assistant response only (prompt masked), max length 1024
truncating from the left (suffix kept), AdamW, cosine schedule with warmup ratio 0.03, lr 5e-5, batch 1 with
gradient accumulation 8, bf16 autocast where the hardware supports it (fp16 + loss scaling otherwise on GPU,
fp32 on CPU). Unstated in App. E, so HF Trainer defaults: weight decay 0, gradient clipping at norm 1.0,
betas (0.9, 0.999), eps 1e-8. Checkpoints every `save_every` steps (trainable tensors, optimizer state, scheduler,
RNG states; safetensors + JSON, no pickle) make `train` resumable: re-running with the same `out_dir` continues.

Several processes (`accelerate launch --multi_gpu --num_processes N`, or `torchrun`; on CPU the gloo backend): the
same `train` wraps the model in DDP through `accelerate` (`_Dist`) and gives every rank a share of each optimizer
step's micro-batches (`shard_step`), so the data order and the effective batch (batch_size · grad_accum examples per
step) are those of one process and the result matches it up to float rounding. Rank 0 alone writes checkpoints and
the final tensors; every rank resumes from them.

FSDP (`TrainConfig(sharding="fsdp")`, or a launch with an accelerate FSDP config, `ACCELERATE_USE_FSDP=true`;
configs/accelerate/fsdp.yaml): the same loop on torch's FSDP2 (`fully_shard`, per decoder layer, then the root)
instead of DDP. Every rank keeps a shard of every parameter, gradient and AdamW moment; clipping uses the global
norm; checkpoints and `final.safetensors` hold gathered whole tensors in the same format as one process (either
resumes the other's), and `train` leaves the model unsharded (plain, whole parameters on every rank, FSDP removed).
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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .artifacts import atomic_write_bytes, read_tensors, write_tensors
from .prompts import format_mc_prompt

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: How several processes hold the model: "none" (whole on every rank: DDP), "fsdp" (sharded: FSDP2).
SHARDINGS = ("none", "fsdp")


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held in this process's optimizer state (AdamW: two moments per trainable element plus a step counter;
    under FSDP this rank's shards)."""
    local = [v.to_local() if _sharded(v) else v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(v.numel() * v.element_size() for v in local)


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
    #: With validation examples: their loss every `eval_every` steps and at the end, and `train` keeps the state
    #: with the lowest one (App. E's best-validation-loss checkpoint). None: the final state.
    eval_every: int | None = None
    #: Under a multi-process launch: "fsdp" shards parameters, gradients and optimizer state over the ranks (FSDP2)
    #: instead of replicating them (DDP). One process ignores it; so does `run_key` (results match up to rounding).
    sharding: str = "none"

    def steps(self, n_examples: int) -> int:
        """Optimizer steps: `max_steps`, else ceil(epochs·n / (batch·accum))."""
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(self.epochs * n_examples / (self.batch_size * self.grad_accum)))

    def validate(self) -> "TrainConfig":
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid choices: {', '.join(PRECISIONS)}")
        if self.sharding not in SHARDINGS:
            raise ValueError(f"unknown sharding {self.sharding!r}; valid choices: {', '.join(SHARDINGS)}")
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


def _n_tokens(examples: Sequence[SFTExample], idx: Sequence[int]) -> int:
    """Tokens the shifted NLL counts for examples `idx` (labels after the first position that are not -100)."""
    return sum(sum(t != -100 for t in examples[j].labels[1:]) for j in idx)


def check_world(cfg: TrainConfig, world: int) -> None:
    """`world` processes can share a step when each takes whole micro-batches (grad_accum divisible by `world`)
    or a slice of every micro-batch (batch_size ≥ `world`)."""
    if world > 1 and cfg.grad_accum % world and cfg.batch_size < world:
        raise ValueError(f"{world} processes cannot share a step of grad_accum={cfg.grad_accum} micro-batches of "
                         f"batch_size={cfg.batch_size}; valid choices: a grad_accum divisible by {world} or a "
                         f"batch_size ≥ {world}")


def shard_step(idx: Sequence[int], examples: Sequence[SFTExample], cfg: TrainConfig, world: int = 1, rank: int = 0
               ) -> list[tuple[list[int], float]]:
    """This rank's part of one optimizer step (example indices `idx`, in order): (micro-batch, loss share) pairs.

    One process: the `grad_accum` micro-batches, share 1. With `world` ranks and grad_accum divisible by `world`,
    each rank takes a contiguous block of whole micro-batches (share 1); otherwise each rank takes a contiguous slice
    of every micro-batch, weighted by its share of the micro-batch's counted tokens, so that the slices' token-mean
    losses add up to the micro-batch's. Averaged over ranks (DDP) and scaled by `world`, the gradient is the
    single-process one."""
    check_world(cfg, world)
    b = cfg.batch_size
    micro = [list(idx[i * b:(i + 1) * b]) for i in range(cfg.grad_accum)]
    if cfg.grad_accum % world == 0:
        k = cfg.grad_accum // world
        return [(m, 1.0) for m in micro[rank * k:(rank + 1) * k]]
    out = []
    for m in micro:
        part = m[rank * len(m) // world:(rank + 1) * len(m) // world]
        out.append((part, _n_tokens(examples, part) / max(_n_tokens(examples, m), 1)))
    return out


def world_size() -> int:
    """Processes of the launch this one belongs to (torchrun / `accelerate launch` / MPI environment), 1 if none."""
    keys = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return max([int(os.environ.get(k, 1)) for k in keys])


def process_rank() -> int:
    """This process's rank in its launch (torchrun / `accelerate launch` / MPI environment), 0 if none."""
    keys = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
    return max([int(os.environ.get(k, 0)) for k in keys])


#: Launches `train` refuses: their own sharding engines (FSDP is `train`'s own: `TrainConfig.sharding`).
REFUSED = {"DEEPSPEED": "ACCELERATE_USE_DEEPSPEED", "MEGATRON_LM": "ACCELERATE_USE_MEGATRON_LM"}


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def check_launch(kind: str = "") -> None:
    """Refuse a DeepSpeed or Megatron-LM launch (`REFUSED`) naming the valid ones."""
    kind = kind or next((k for k, env in REFUSED.items() if _env_true(env)), "")
    if kind in REFUSED:
        raise ValueError(f"train runs DDP or FSDP, not {kind}; valid choices: one process, `accelerate launch "
                         "--multi_gpu --num_processes N` (DDP; configs/accelerate/ddp.yaml), or FSDP "
                         "(TrainConfig(sharding='fsdp') or configs/accelerate/fsdp.yaml)")


def launch_sharding(cfg: TrainConfig) -> str:
    """`cfg.sharding`, or "fsdp" under an accelerate FSDP config (`ACCELERATE_USE_FSDP=true`)."""
    return "fsdp" if _env_true("ACCELERATE_USE_FSDP") else cfg.sharding


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of an HF causal LM (`model.model.layers`; a peft model's through its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = getattr(getattr(base, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"FSDP needs the decoder layers at model.model.layers; {type(base).__name__} has none")
    return list(layers)


def fsdp_shard(model: nn.Module, device: torch.device, world: int) -> None:
    """FSDP2 in place: each decoder layer, then the root (embeddings, norm, head, SHFT deltas). Frozen and trainable
    parameters may share a group. Every group reshards after its forward, so between forwards the registered
    parameters are the sharded DTensors that the optimizer and checkpoints see."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


@torch.no_grad()
def fsdp_unshard(model: nn.Module) -> None:
    """Undo `fsdp_shard`: gather every parameter whole onto every rank as a plain Parameter (tied ones stay tied),
    then remove FSDP's forward hooks and class (torch 2.13 internals), so the model runs on each rank alone."""
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed._composable_state import _module_state_mapping
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    whole: dict[int, nn.Parameter] = {}
    for m in model.modules():
        for n, p in list(m.named_parameters(recurse=False)):
            if isinstance(p, DTensor):
                if id(p) not in whole:
                    whole[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
                setattr(m, n, whole[id(p)])
    for m in model.modules():
        if isinstance(m, FSDPModule):
            state = m._get_fsdp_state()
            state._pre_forward_hook_handle.remove()
            state._post_forward_hook_handle.remove()
            m.__class__ = m.__class__.__bases__[1]  # fully_shard made the class (FSDPModule, original)
            for k in (STATE_KEY, REGISTRY_KEY, "_is_fsdp_managed_module", "_fsdp_use_orig_params"):
                m.__dict__.pop(k, None)
            _module_state_mapping.pop(m, None)


def _sharded(t: torch.Tensor) -> bool:
    """Whether `t` is an FSDP shard (a DTensor; there are none where torch.distributed is missing)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _whole(t: torch.Tensor, keep: bool = True) -> torch.Tensor | None:
    """`t` itself, or a sharded `t` gathered whole (a collective: every rank calls it) onto the CPU; None where not
    `keep` (a rank that will not write it)."""
    if not _sharded(t):
        return t
    whole = t.full_tensor()
    return whole.cpu() if keep else None


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` as is, or, when `ref` is sharded, this rank's shard of the whole tensor `t` (sliced here, no collective)."""
    if not _sharded(ref) or t.dim() == 0:
        return t
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(t.to(ref.device, ref.dtype), ref.device_mesh, ref.placements, src_data_rank=None)


class _Dist:
    """The processes `train` runs in. One: the model as it is, nothing to synchronise. Several: an `accelerate`
    Accelerator (gloo on CPU) sets up the process group and wraps the model in DDP for the forward/backward
    (gradients averaged over ranks); `model` stays the unwrapped module whose parameters the optimizer and
    checkpoints see. Several with `sharding="fsdp"`: the model is sharded in place instead (`fsdp_shard`; FSDP
    averages gradients too), and `finish` unshards it."""

    def __init__(self, model: nn.Module | None = None, distributed: bool = False, sharding: str = "none"):
        self.model, self.module, self.acc = model, model, None
        self.world, self.rank, self.fsdp = 1, 0, False
        if distributed and model is not None:
            from accelerate import Accelerator

            check_launch()
            cpu = next(model.parameters()).device.type == "cpu"
            self.acc = Accelerator(cpu=cpu, mixed_precision="no")  # autocast: TrainConfig.precision, not the launch
            check_launch(self.acc.distributed_type.value)
            self.world, self.rank = self.acc.num_processes, self.acc.process_index
            self.fsdp = sharding == "fsdp"
            if self.fsdp:
                fsdp_shard(model.to(self.acc.device), self.acc.device, self.world)
            else:
                self.module = self.acc.prepare_model(model)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if self.acc is not None:
            return self.acc.device
        return next(p for p in self.model.parameters() if p.requires_grad).device  # the first trainable one's

    def no_sync(self, sync: bool):
        """Skip the gradient all-reduce (FSDP: reduce-scatter) of a backward that is not the step's last here."""
        if self.fsdp:
            self.module.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if self.acc is None or sync else self.acc.no_sync(self.module)

    def mean(self, x: float) -> float:
        """`x` averaged over ranks (unchanged in one process)."""
        if self.acc is None:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        return float(self.acc.reduce(t, "sum")) / self.world

    def agree(self, x: float) -> float:
        """Rank 0's `x` on every rank, so that all ranks take the same branch (and collectives) on it."""
        if self.acc is None:
            return x
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return float(t)

    def clip(self, params: Sequence[nn.Parameter], max_norm: float) -> None:
        """Clip to the global gradient norm (FSDP: the norm of the sharded DTensor gradients is the global one)."""
        if self.acc is None or self.fsdp:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            self.acc.clip_grad_norm_(params, max_norm)

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def finish(self) -> None:
        """After training: FSDP's model unsharded on every rank (`fsdp_unshard`); nothing to do otherwise."""
        if self.fsdp:
            fsdp_unshard(self.model)
            self.fsdp, self.module = False, self.model


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
    val_log: list[dict] = field(default_factory=list)
    best_step: int | None = None  # the step whose state was kept (best validation loss); None: the final state

    @property
    def final_loss(self) -> float | None:
        return self.log[-1]["loss"] if self.log else None


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def train(model: nn.Module, examples: Sequence[SFTExample], cfg: TrainConfig = TrainConfig(),
          out_dir: str | Path | None = None, progress: bool = False, pad_id: int = 0,
          callback: Callable[[int, float], None] | None = None, prov: Mapping[str, Any] | None = None,
          val_examples: Sequence[SFTExample] | None = None) -> TrainResult:
    """Train the model's requires_grad parameters on response-only NLL (App. E); resumable through `out_dir`.

    With `out_dir`, a checkpoint is written every `cfg.save_every` steps and the final trainable tensors to
    `out_dir/final.safetensors` (with `prov` as provenance); calling again with the same `out_dir` resumes from the
    latest checkpoint, or just reloads the final tensors when the run had finished.
    With `val_examples` and `cfg.eval_every`, the validation loss is logged every `eval_every` steps and at the end,
    and the model leaves with the trainable state of the lowest one (App. E: best validation loss), also what
    `final.safetensors` holds; `best_step` says which step that was.
    Under a multi-process launch (`world_size` > 1) every rank calls `train` alike (module docstring): the model
    goes to the rank's device wrapped in DDP (or sharded by FSDP: `TrainConfig.sharding`; it leaves whole again),
    `callback` runs on every rank with the rank-averaged loss, and only rank 0 writes to `out_dir`.
    """
    cfg.validate()
    params = _trainable(model)
    t0 = time.time()
    if not params:
        return TrainResult(steps=0, log=[], seconds=0.0)
    out = Path(out_dir) if out_dir is not None else None
    select = bool(val_examples) and bool(cfg.eval_every)
    key = run_key(cfg, examples, val_examples if select else None)
    if out is not None and (out / "train_log.json").exists():
        return _load_finished(model, out, key)
    check_world(cfg, world_size())
    dist = _Dist(model, distributed=world_size() > 1, sharding=launch_sharding(cfg))
    params = _trainable(model)  # FSDP replaced them by sharded ones
    dev = dist.device
    total = cfg.steps(len(examples))
    per_step = cfg.batch_size * cfg.grad_accum
    order = data_order(len(examples), total * per_step, cfg.seed)
    opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)
    amp = amp_dtype(cfg.precision, dev)
    if dist.fsdp and amp == torch.float16:
        raise ValueError("FSDP runs without fp16 loss scaling (each rank sees its shard's overflows only); valid "
                         "choices: precision 'bf16' or 'fp32', or DDP (sharding 'none')")
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    log: list[dict] = []
    start = 0
    best = _Best()
    if out is not None and (out / "checkpoint" / "latest.json").exists():
        start, log = load_checkpoint(out, model, opt, sched, scaler, key, rank=dist.rank)
        best = _Best.load(out / "checkpoint")
    model.train()
    bar = tqdm(total=total, initial=start, disable=not progress or not dist.main, desc="train", leave=False)
    try:
        for step in range(start, total):
            loss = _step(model, examples, order[step * per_step:(step + 1) * per_step], cfg, opt, sched, scaler,
                         amp, pad_id, dev, params, dist)
            if (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == total:
                log.append({"step": step + 1, "loss": round(loss, 6), "lr": sched.get_last_lr()[0]})
            bar.update(1)
            if select and ((step + 1) % cfg.eval_every == 0 or step + 1 == total):
                best.offer(step + 1, dist.agree(validation_loss(model, val_examples, pad_id, dev, amp)), params,
                           out / "checkpoint" if out is not None and dist.main else None)
                model.train()
            if out is not None and cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
                save_checkpoint(out, model, opt, sched, scaler, key, step + 1, log, dist)
            if callback is not None:
                callback(step + 1, loss)
    finally:
        bar.close()
        model.eval()
    if select and best.step is not None and best.step != total:
        _load_params(model, best.state, out or Path("."))
    dist.finish()
    params = _trainable(model)
    res = TrainResult(steps=total, log=log, seconds=time.time() - t0, resumed_from=start,
                      n_trainable=sum(p.numel() for p in params.values()), optimizer_bytes=optimizer_state_bytes(opt),
                      val_log=best.log, best_step=best.step if select else None)
    if out is not None and dist.main:
        write_tensors(out / "final.safetensors", {n: p for n, p in params.items()}, dict(prov or {}))
        atomic_write_bytes(out / "train_log.json", json.dumps(
            {"config": key, **asdict(res)}, indent=1).encode())
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    dist.barrier()
    return res


def _step(model, examples, idx, cfg, opt, sched, scaler, amp, pad_id, dev, params, dist: _Dist | None = None
          ) -> float:
    """One optimizer step over `grad_accum` micro-batches (this rank's share of them, `shard_step`); returns the
    mean loss (averaged over ranks)."""
    dist = dist or _Dist(model)
    parts = shard_step(idx, examples, cfg, dist.world, dist.rank)
    total = 0.0
    for i, (chunk, share) in enumerate(parts):
        batch = collate([examples[j] for j in chunk], pad_id, dev)
        with dist.no_sync(i + 1 == len(parts)):
            with torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext():
                loss = dist.module(**batch).loss * share * dist.world / cfg.grad_accum
            (scaler.scale(loss) if scaler else loss).backward()
        total += float(loss.detach())
    if scaler is not None:
        scaler.unscale_(opt)
    if cfg.max_grad_norm:
        dist.clip(list(params.values()), cfg.max_grad_norm)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return dist.mean(total)


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


def _opt_split(opt: torch.optim.Optimizer, keep: bool = True) -> tuple[dict, dict]:
    """Optimizer state dict as (tensors, json): per-parameter tensors to safetensors (sharded ones gathered whole
    by every rank, kept by the one that writes: `_whole`), the rest to JSON."""
    sd = opt.state_dict()
    tensors = {f"opt/{pid}/{k}": _whole(v, keep) for pid, s in sd["state"].items() for k, v in s.items()
               if torch.is_tensor(v)}
    scalars = {str(pid): {k: v for k, v in s.items() if not torch.is_tensor(v)} for pid, s in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _opt_join(tensors: Mapping[str, torch.Tensor], js: Mapping[str, Any],
              params: Sequence[torch.Tensor] | None = None) -> dict:
    """The optimizer state dict from `_opt_split`'s parts; with the optimizer's `params` (in order), each moment
    becomes this rank's shard of it where its parameter is sharded (`_like`)."""
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in js["scalars"].items()}
    for key, v in tensors.items():
        if key.startswith("opt/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = _like(v, params[int(pid)]) if params else v
    return {"state": state, "param_groups": js["param_groups"]}


def _hash(examples: Sequence[SFTExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.input_ids, e.labels]).encode())
    return h.hexdigest()[:16]


def run_key(cfg: TrainConfig, examples: Sequence[SFTExample], val_examples: Sequence[SFTExample] | None = None
            ) -> dict:
    """What identifies a training run for resuming: the config (but `sharding`: a run may resume under another)
    plus a hash of the encoded data (in order), and of the validation data when it selects the kept state."""
    key = {**{k: v for k, v in asdict(cfg).items() if k != "sharding"}, "data": _hash(examples),
           "n_examples": len(examples)}
    if val_examples:
        key["val_data"] = _hash(val_examples)
    return key


@torch.no_grad()
def validation_loss(model: nn.Module, examples: Sequence[SFTExample], pad_id: int, device, amp=None,
                    batch_size: int = 8) -> float:
    """Mean response-token NLL over `examples` (the prompt masked, as in training)."""
    model.eval()
    nll, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], pad_id, device)
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        nll -= float(lp[mask].sum())
        n += int(mask.sum())
    return nll / max(n, 1)


class _Best:
    """The lowest validation loss so far, its step and a CPU copy of the trainable state (kept on disk beside the
    checkpoints, so a resumed run still knows it)."""

    def __init__(self, step: int | None = None, loss: float = math.inf, state: dict | None = None,
                 log: list[dict] | None = None):
        self.step, self.loss, self.state, self.log = step, loss, state or {}, log or []

    def offer(self, step: int, loss: float, params: Mapping[str, nn.Parameter], root: Path | None) -> None:
        """Keep `params` if `loss` is the lowest so far (the same `loss` on every rank: sharded ones are gathered)."""
        self.log = [r for r in self.log if r["step"] < step] + [{"step": step, "val_loss": round(loss, 6)}]
        if loss < self.loss:
            self.step, self.loss = step, loss
            self.state = {n: _whole(p.detach()).to("cpu", copy=True) for n, p in params.items()}
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
                write_tensors(root / "best.safetensors", self.state, {"step": step, "loss": loss})
        if root is not None:
            atomic_write_bytes(root / "val_log.json", json.dumps(self.log).encode())

    @classmethod
    def load(cls, root: Path) -> "_Best":
        if not (root / "val_log.json").exists():
            return cls()
        log = json.loads((root / "val_log.json").read_text())
        if not (root / "best.safetensors").exists():
            return cls(log=log)
        state, meta = read_tensors(root / "best.safetensors")
        return cls(int(meta["step"]), float(meta["loss"]), state, log)


def save_checkpoint(out: Path, model, opt, sched, scaler, key: Mapping[str, Any], step: int, log: list[dict],
                    dist: _Dist | None = None) -> Path:
    """Write `out/checkpoint/step-<k>/` (trainable tensors, optimizer, RNG: safetensors; the rest: JSON), then
    point `latest.json` at it atomically and delete older checkpoints (at most one kept). Several ranks: each
    rank k > 0 adds its RNG states (`rng-<k>.safetensors`), rank 0 writes the rest once they are there (sharded
    tensors gathered whole by every rank first)."""
    dist = dist or _Dist(model)
    root = out / "checkpoint"
    d = root / f"step-{step}"
    d.mkdir(parents=True, exist_ok=True)
    rng_t, rng_j = _rng_state()
    if not dist.main:
        write_tensors(d / f"rng-{dist.rank}.safetensors", rng_t, rng_j)
    trainable = {n: _whole(p, dist.main) for n, p in _trainable(model).items()}
    opt_t, opt_j = _opt_split(opt, dist.main)
    dist.barrier()
    if dist.main:
        _write_checkpoint(root, d, trainable, (opt_t, opt_j), sched, scaler, key, step, log, rng_t, rng_j)
    dist.barrier()
    return d


def _write_checkpoint(root: Path, d: Path, trainable: Mapping[str, torch.Tensor], opt_parts: tuple[dict, dict],
                      sched, scaler, key: Mapping[str, Any], step: int, log: list[dict],
                      rng_t: Mapping[str, torch.Tensor], rng_j: Mapping[str, Any]) -> None:
    opt_t, opt_j = opt_parts
    write_tensors(d / "trainable.safetensors", trainable, {"step": step})
    write_tensors(d / "state.safetensors", {**opt_t, **rng_t}, {"step": step})
    state = {"step": step, "config": dict(key), "optimizer": opt_j, "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict() if scaler else None, "rng": rng_j, "log": log}
    atomic_write_bytes(d / "state.json", json.dumps(state).encode())
    atomic_write_bytes(root / "latest.json", json.dumps({"step": step, "dir": d.name}).encode())
    for old in root.glob("step-*"):
        if old != d:
            shutil.rmtree(old, ignore_errors=True)


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
            p.copy_(_like(tensors[n], p))  # a sharded parameter: its shard


def load_checkpoint(out: Path, model, opt, sched, scaler, key: Mapping[str, Any], rank: int = 0
                    ) -> tuple[int, list[dict]]:
    """Restore trainable tensors, optimizer, scheduler, scaler and RNG states (`rank`'s own when the checkpoint
    has them, else rank 0's); returns (step, log)."""
    root = out / "checkpoint"
    d = root / json.loads((root / "latest.json").read_text())["dir"]
    state = json.loads((d / "state.json").read_text())
    _check_config(state["config"], key, out)
    _load_params(model, read_tensors(d / "trainable.safetensors")[0], d)
    tensors, _ = read_tensors(d / "state.safetensors")
    opt.load_state_dict(_opt_join(tensors, state["optimizer"], [p for g in opt.param_groups for p in g["params"]]))
    sched.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    own = d / f"rng-{rank}.safetensors"
    _set_rng_state(*(read_tensors(own) if rank and own.exists() else (tensors, state["rng"])))
    return int(state["step"]), list(state["log"])


def _load_finished(model: nn.Module, out: Path, key: Mapping[str, Any]) -> TrainResult:
    info = json.loads((out / "train_log.json").read_text())
    _check_config(info["config"], key, out)
    _load_params(model, read_tensors(out / "final.safetensors")[0], out)
    model.eval()
    keys = ("steps", "log", "seconds", "resumed_from", "n_trainable", "optimizer_bytes", "val_log", "best_step")
    return TrainResult(**{k: info[k] for k in keys if k in info})

