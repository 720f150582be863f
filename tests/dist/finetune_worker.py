"""Fine-tune the organism (toy-qwen2) under several regimes with `support.training.train`, in one process or as
one rank of `accelerate launch --multi_gpu --num_processes N` (gloo on CPU): tests/test_distributed_finetune.py.

    python tests/dist/finetune_worker.py OUT SPECS_JSON [--stop-after K]

SPECS_JSON: a list of runs {"name", "regime", "policy", "batch_size", "grad_accum", "save_every", "eval_every",
"sharding", "max_grad_norm"} (eval_every: the best validation state is kept, App. E, over 4 held-out items; sharding: "fsdp" trains
under FSDP2, and each rank then checks that `train` left its model whole and usable alone); each trains into
OUT/<name> (rank 0 writes final.safetensors and train_log.json there; rank k > 0 writes its trainable tensors to
rank-<k>.safetensors; a single process also writes those it starts from, init.safetensors).
--stop-after K: every rank exits hard (os._exit) after step K of the last run, right after its checkpoint: a killed
launch.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import torch

from support import finetune as ft
from support import heads as H
from support import training as tr
from support.artifacts import write_tensors
from support.models import load_plain
from support.toydata import generate

HEADS = [(1, 0), (1, 1), (3, 3)]  # toy: 8 query heads in 4 kv-groups; (1, 0) and (1, 1) share a group
STEPS, N_EXAMPLES, LR = 4, 16, 1e-3


def run(out: Path, spec: dict, stop_after: int | None = None) -> None:
    """Prepare a fresh fp32 organism for `spec`'s regime (as `finetune.run_regime` does) and train it."""
    hf, tok = load_plain("toy-qwen2", device="cpu", dtype=ft.MASTER_DTYPE)
    torch.manual_seed(0)  # LoRA's A initialisation
    regime = spec["regime"]
    heads = {"random": H.random_heads(8, 8, M=3, seed=1)}.get(regime, HEADS)
    ft.prepare(regime, hf, heads if regime in ft.HEAD_REGIMES else None, gqa_policy=spec.get("policy", "ungrouped"))
    data = tr.build_dataset(generate("toy_mc4", N_EXAMPLES, "train"), tok, 256, "organism")
    cfg = tr.TrainConfig(lr=LR, max_steps=STEPS, batch_size=spec["batch_size"], grad_accum=spec["grad_accum"],
                         warmup_ratio=0.0, log_every=1, save_every=spec.get("save_every"),
                         eval_every=spec.get("eval_every"), sharding=spec.get("sharding", "none"),
                         max_grad_norm=spec.get("max_grad_norm", 1.0))
    val = tr.build_dataset(generate("toy_mc4", 4, "test"), tok, 256, "organism") if cfg.eval_every else None

    def stop(step: int, loss: float) -> None:
        if step == stop_after:
            os._exit(17)

    trainable = {n: p for n, p in hf.named_parameters() if p.requires_grad}
    rank = int(os.environ.get("RANK", 0))
    if "RANK" not in os.environ:  # one process: the reference, with the trainable tensors it starts from
        write_tensors(out / spec["name"] / "init.safetensors", trainable, {})
    tr.train(hf, data, cfg, out_dir=out / spec["name"], callback=stop, val_examples=val)
    if tr.launch_sharding(cfg) == "fsdp" and tr.world_size() > 1:
        check_unsharded(hf, data, rank)
    trainable = {n: p for n, p in hf.named_parameters() if p.requires_grad}  # FSDP: the whole ones it left
    if rank:
        write_tensors(out / spec["name"] / f"rank-{rank}.safetensors", trainable, {})


def check_unsharded(hf: torch.nn.Module, data: list, rank: int) -> None:
    """After FSDP training: plain whole parameters (tied ones still tied), no FSDP class (a deep copy works), and a
    forward that this rank runs alone."""
    from torch.distributed.tensor import DTensor

    assert not any(isinstance(p, DTensor) for p in hf.parameters()) and "FSDP" not in type(hf).__name__
    tied = hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    assert tied is bool(hf.config.tie_word_embeddings)
    copy.deepcopy(hf)
    if rank:  # with FSDP's hooks left, this forward would wait for rank 0 forever
        assert tr.validation_loss(hf, data[:2], 0, torch.device("cpu")) > 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("specs")
    ap.add_argument("--stop-after", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    specs = json.loads(args.specs)
    for i, spec in enumerate(specs):
        run(args.out, spec, args.stop_after if i + 1 == len(specs) else None)


if __name__ == "__main__":
    main()
