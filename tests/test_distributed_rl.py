"""Attention-credit GRPO under data parallelism: 2 CPU processes (gloo) against one process.

`tests/dist/grpo_worker.py` runs `support.rl.train_grpo` (coupled credit, 2 steps) under
``accelerate launch --multi_gpu --num_processes 2``; on a machine without GPUs, accelerate's multi-GPU launcher
(torchrun) starts 2 CPU processes that join with the gloo backend. (``--cpu --num_processes 2`` would not do: in
accelerate 1.x it starts several CPU processes only through mpirun, and otherwise runs one.) Each process records, per
step, its slice of the batch, the 1-D advantages TRL handed it, the (B, T) shaped advantages and the policy weights
of the credit pass. This test then recomputes the credit pass in this one process, on the same completions and
weights, and checks that TRL's slicing lines up with each process's completions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import rl
from support.rhythm import rl_layers, token_signals

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "dist" / "grpo_worker.py"
WORLD, STEPS, GENERATIONS = 2, 2, 4
#: The shaped advantages are the same float32 computation on the same CPU, one thread each: the per-slice recompute
#: is expected to be exact; re-padding both slices into one batch changes matmul shapes, so allow float noise there.
ATOL = 1e-6

pytestmark = pytest.mark.slow  # trains the organism (2 processes, ~20 s)


def _free_port() -> int:
    with socket.socket() as s:  # another launch (e.g. the fine-tuning tests) may hold torchrun's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Run the worker on 2 processes once; {rank: its records file}, plus the run folder and the wall time."""
    out = tmp_path_factory.mktemp("grpo_ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(WORLD),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), str(WORKER), str(out)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-8000:]
    ranks = {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)}
    print(f"2-process GRPO run: {seconds:.1f} s")
    return {"ranks": ranks, "out": out, "seconds": seconds}


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    model, tok = rl.policy("toy-qwen2", device="cpu")
    return model.eval(), tok


def _signals(model, prompt_ids, prompt_mask, completion_ids, completion_mask, credit):
    """`CreditGRPOTrainer.token_signals`, written out: one no-grad forward over prompt + completion."""
    ids = torch.cat([prompt_ids, completion_ids], 1)
    att = torch.cat([prompt_mask, completion_mask], 1)
    resp = torch.cat([torch.zeros_like(prompt_mask), completion_mask], 1).bool()
    layers = rl_layers(int(model.config.num_hidden_layers), credit.n_layers)
    sig = token_signals(model, ids, att, resp, layers=layers, window=credit.window, h_lo=credit.h_lo,
                        h_hi=credit.h_hi, group_frac=credit.group_frac, chunk=credit.chunk)
    return {k: v[:, prompt_ids.shape[1]:] for k, v in sig.items()}


def _group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's group normalisation (TRL, scale_rewards="group"): (r − mean_g) / (std_g + 1e-4), Bessel-corrected."""
    g = rewards.view(-1, GENERATIONS)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).flatten()


def _steps(launched):
    """[(step, [rank 0's record, rank 1's record])] in step order."""
    recs = [launched["ranks"][r]["records"] for r in range(WORLD)]
    return [(recs[0][i]["step"], [recs[r][i] for r in range(WORLD)]) for i in range(len(recs[0]))]


def test_two_processes_complete_two_steps(launched):
    import json

    for r in range(WORLD):
        recs = launched["ranks"][r]["records"]
        assert [x["step"] for x in recs] == list(range(STEPS))  # one credit pass per optimizer step
        assert all(x["rank"] == r and x["world"] == WORLD for x in recs)
        assert recs[0]["credit_seed"] == launched["ranks"][r]["credit"]["seed"] + r  # random credit: a stream per rank
        assert [h["step"] for h in launched["ranks"][r]["history"] if "loss" in h] == [1, 2]
    run = json.loads((launched["out"] / "run" / "run.json").read_text())  # written once, by the main process
    assert [h["step"] for h in run["history"] if "loss" in h] == [1, 2]
    assert "credit/gamma_mean" in run["history"][0]
    for step, (a, b) in _steps(launched):
        # DDP keeps the replicas equal: both credit passes of a step see the same weights
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), step
    first, second = (rec[0]["state_dict"] for _, rec in _steps(launched))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # step 1 trained the policy


def test_each_process_holds_its_own_slice_of_the_group_advantages(launched, policy):
    _, tok = policy
    for step, recs in _steps(launched):
        B = recs[0]["completion_ids"].shape[0]
        gathered = recs[0]["gathered_rewards"].flatten()
        assert B == 6 and len(gathered) == WORLD * B  # 3 prompts x 4: prompt 1's group straddles the processes
        assert all(torch.equal(r["gathered_rewards"], recs[0]["gathered_rewards"]) for r in recs)
        # different completions on each process (rank 1 holds prompts 1 and 2, rank 0 prompts 0 and 1)
        assert not torch.equal(recs[0]["completion_ids"], recs[1]["completion_ids"])
        assert not torch.equal(recs[0]["prompt_ids"], recs[1]["prompt_ids"])
        for r, rec in enumerate(recs):
            # rank r's part of the gathered rewards is what its own reward function scored on its own completions ...
            assert gathered[r * B:(r + 1) * B].tolist() == pytest.approx(rec["scored_rewards"])
            texts = [rl.completion_text(tok.decode(ids[m.bool()], skip_special_tokens=True))
                     for ids, m in zip(rec["completion_ids"], rec["completion_mask"])]
            assert texts == rec["scored_texts"], step
        # ... and the union of the 1-D advantages is the group normalisation of the gathered rewards
        adv = torch.cat([r["advantages"] for r in recs])
        assert adv.abs().sum() > 0 and (adv > 0).any() and (adv < 0).any()
        torch.testing.assert_close(adv, _group_advantages(gathered), atol=1e-5, rtol=0)


def test_shaped_advantages_match_one_process(launched, policy):
    model, tok = policy
    credit = rl.CreditConfig(**launched["ranks"][0]["credit"])
    assert credit.strategy == "coupled"
    worst_slice = worst_global = 0.0
    for step, recs in _steps(launched):
        model.load_state_dict(recs[0]["state_dict"])
        # (1) each process's slice, recomputed here from its own tensors and 1-D advantages
        for rec in recs:
            sig = _signals(model, rec["prompt_ids"], rec["prompt_mask"], rec["completion_ids"], rec["completion_mask"],
                           credit)
            gamma = rl.batch_gamma(sig, rec["completion_mask"], credit)
            want = rl.shape_advantages(rec["advantages"], gamma, rec["completion_mask"])
            assert rec["shaped"].shape == rec["completion_mask"].shape
            assert (gamma > 1).any() and not torch.equal(rec["shaped"], rec["advantages"][:, None] *
                                                         rec["completion_mask"])  # credit did something
            worst_slice = max(worst_slice, (rec["shaped"] - want).abs().max().item())
            torch.testing.assert_close(rec["shaped"], want, atol=ATOL, rtol=0)
        # (2) one process holding the whole global batch: both slices re-padded into one batch (prompts left,
        # completions right), the advantages normalised from the gathered rewards, γ computed once; rows split by rank
        pad = tok.pad_token_id
        P = max(r["prompt_ids"].shape[1] for r in recs)
        T = max(r["completion_ids"].shape[1] for r in recs)
        left = lambda x, v: torch.nn.functional.pad(x, (P - x.shape[1], 0), value=v)  # noqa: E731
        right = lambda x, v: torch.nn.functional.pad(x, (0, T - x.shape[1]), value=v)  # noqa: E731
        pi = torch.cat([left(r["prompt_ids"], pad) for r in recs])
        pm = torch.cat([left(r["prompt_mask"], 0) for r in recs])
        ci = torch.cat([right(r["completion_ids"], pad) for r in recs])
        cm = torch.cat([right(r["completion_mask"], 0) for r in recs])
        adv = _group_advantages(recs[0]["gathered_rewards"].flatten())
        shaped = rl.shape_advantages(adv, rl.batch_gamma(_signals(model, pi, pm, ci, cm, credit), cm, credit), cm)
        B = recs[0]["completion_ids"].shape[0]
        for r, rec in enumerate(recs):
            mine = shaped[r * B:(r + 1) * B]
            Tr = rec["completion_ids"].shape[1]
            assert not mine[:, Tr:].any()
            worst_global = max(worst_global, (rec["shaped"] - mine[:, :Tr]).abs().max().item())
            torch.testing.assert_close(rec["shaped"], mine[:, :Tr], atol=1e-5, rtol=0)
    print(f"max |shaped - one process|: per slice {worst_slice:.2e}, whole batch re-padded {worst_global:.2e}")
