"""`support.training.train` under `accelerate launch` with two CPU processes (gloo; DDP, and FSDP2 through
`TrainConfig.sharding` or configs/accelerate/fsdp.yaml) against one process with the same effective batch, for every
regime of chapter 04 (tests/dist/finetune_worker.py trains the organism), and killed two-process runs that resume
from their checkpoints (under FSDP also in one process, and a one-process checkpoint under FSDP).

`accelerate launch --cpu --num_processes 2` starts a single process (accelerate 1.16 sends --cpu to its simple
launcher; several CPU processes need MPI there), so the launch is `--multi_gpu`, which starts the ranks with
torchrun; `train` builds its Accelerator with cpu=True for a model on the CPU, hence gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import training as tr
from support.artifacts import read_tensors

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "dist" / "finetune_worker.py"
#: Two processes against one, 4 steps at lr 1e-3. Whole micro-batches per rank (grad_accum 2 = world): bit-identical
#: (measured). Slices of one micro-batch (batch 4, grad_accum 1, token-weighted): other padding and summation order,
#: so gradients differ by rounding. Losses agree within ATOL (measured: to all 6 logged decimals); tensor elements
#: within ATOL (SHFT/random measured ≤ 3e-6), except that AdamW divides each gradient by its own RMS, so where a
#: gradient is rounding noise (k_proj.bias: zero analytically, softmax ignores a shift of all keys) the update is
#: too: full SFT measured 32 of 1.23M elements above 1e-6, the largest 1.4e-5 (1.4% of one step at lr 1e-3).
#: Hence: at most a share OUTLIERS of the elements beyond ATOL, none beyond OUTLIER_ATOL.
ATOL, OUTLIERS, OUTLIER_ATOL = 1e-5, 1e-4, 5e-5
WHOLE = dict(batch_size=2, grad_accum=2)  # each rank one whole micro-batch of 2
SLICED = dict(batch_size=4, grad_accum=1)  # chapter 04's ci shape: each rank half of the micro-batch
SPECS = [
    dict(name="full", regime="full", **WHOLE),
    dict(name="full-sliced", regime="full", **SLICED),
    dict(name="lora", regime="lora", **WHOLE),
    dict(name="wh-ungrouped", regime="wh", policy="ungrouped", **WHOLE),
    dict(name="wh-shared", regime="wh", policy="shared", eval_every=2, **SLICED),  # keeps the best validation state
    dict(name="wh-qo_only", regime="wh", policy="qo_only", **WHOLE),
    dict(name="random", regime="random", policy="ungrouped", **SLICED),
    dict(name="resume-ref", regime="wh", policy="ungrouped", save_every=2, **WHOLE),  # uninterrupted, 2 processes
]
RESUME = dict(SPECS[-1], name="resume")
#: FSDP2 (2 ranks) against one process, same specs, measured: logged losses equal to all 6 decimals everywhere;
#: whole micro-batches: LoRA and SHFT bit-identical, full SFT not (reduce-scatter sums in another order), max 8.9e-8;
#: sliced micro-batches as DDP: full SFT 32 of 1.23M elements above 1e-6, largest 1.4e-5, random 2.9e-6,
#: wh-shared 9.3e-7, the clipped run 8.4e-7 (its clip at 0.01 acts on every step: the norm must be the global one);
#: two micro-batches per rank (gradients accumulated unsynchronised, then reduce-scattered): full SFT 2 elements
#: above 1e-6, largest 3.5e-6. Hence the DDP tolerances, and FSDP_WHOLE_ATOL for one whole micro-batch per rank.
FSDP_WHOLE_ATOL = 1e-6
CLIPPED = dict(name="wh-clipped", regime="wh", policy="ungrouped", max_grad_norm=0.01, **SLICED)
ACCUM = dict(name="full-accum", regime="full", batch_size=1, grad_accum=4)
FSDP_SPECS = [dict(s, sharding="fsdp") for s in SPECS[:-1] + [CLIPPED, ACCUM]]
FSDP_REF = dict(SPECS[-1], sharding="fsdp")  # resume-ref under FSDP: wh-ungrouped's training, with checkpoints


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, specs: list[dict], procs: int = 2, stop_after: int | None = None, config: str | None = None
           ) -> subprocess.CompletedProcess:
    """Run the worker over `specs`: in one plain process, or as `procs` ranks of `accelerate launch` (with the
    accelerate `config` file under configs/accelerate, else DDP's command-line options)."""
    args = [str(WORKER), str(out), json.dumps(specs)] + (["--stop-after", str(stop_after)] if stop_after else [])
    if procs > 1:
        how = (["--config_file", str(ROOT / "configs" / "accelerate" / config)] if config else
               ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"])
        args = ["-m", "accelerate.commands.launch", *how, "--num_processes", str(procs), "--main_process_port",
                str(_port()), *args]
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    """One process: the output folders of every spec (the references)."""
    one = tmp_path_factory.mktemp("one")
    _ok(launch(one, SPECS[:-1] + [CLIPPED, ACCUM], procs=1))
    return one


def _killed(out: Path, specs: list[dict], procs: int = 2) -> None:
    """Launch `specs`, the last one killed right after its step-2 checkpoint."""
    killed = launch(out, specs, procs=procs, stop_after=2)
    assert killed.returncode != 0, "the last run should have been killed"
    name = specs[-1]["name"]
    assert (out / name / "checkpoint/step-2/rng-1.safetensors").exists() is (procs > 1)  # rank 1's RNG states
    assert json.loads((out / name / "checkpoint/latest.json").read_text())["step"] == 2
    assert not (out / name / "train_log.json").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one) -> tuple[Path, Path]:
    """(one process, two processes) output folders of every spec; the two-process launch ends with a run killed
    after its step-2 checkpoint and a second launch resumes it."""
    two = tmp_path_factory.mktemp("two")
    _killed(two, SPECS + [RESUME])
    _ok(launch(two, [RESUME]))
    return one, two


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, one) -> tuple[Path, Path]:
    """(one process, two FSDP processes) output folders of every spec. A killed FSDP run resumes under
    configs/accelerate/fsdp.yaml (`resume`) and, from a copy of its checkpoint, in one process (`resume-one`); a
    killed one-process run resumes under FSDP (`from-one`)."""
    two = tmp_path_factory.mktemp("fsdp")
    _killed(two, FSDP_SPECS + [FSDP_REF, dict(FSDP_REF, name="resume")])
    shutil.copytree(two / "resume", two / "resume-one")
    _ok(launch(two, [dict(SPECS[-1], name="resume")], config="fsdp.yaml"))  # sharding from ACCELERATE_USE_FSDP
    _ok(launch(two, [dict(SPECS[-1], name="resume-one")], procs=1))
    _killed(two, [dict(SPECS[-1], name="from-one")], procs=1)
    _ok(launch(two, [dict(FSDP_REF, name="from-one")]))
    return one, two


def _result(d: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    info = json.loads((d / "train_log.json").read_text())
    return [r["loss"] for r in info["log"]], read_tensors(d / "final.safetensors")[0]


def _diff(t1: dict[str, torch.Tensor], t2: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(t1[k] - t2[k]).abs().flatten() for k in t1])


def _compare(one: Path, two: Path, spec: dict) -> torch.Tensor:
    """Check `two`'s run of `spec` against `one`'s (losses, validation, tensors within the tolerances, ranks in
    step); returns the element-wise differences of the final tensors."""
    loss1, t1 = _result(one / spec["name"])
    loss2, t2 = _result(two / spec["name"])
    init, _ = read_tensors(one / spec["name"] / "init.safetensors")
    rank1, _ = read_tensors(two / spec["name"] / "rank-1.safetensors")
    assert len(loss1) == len(loss2) == 4
    assert loss2 == pytest.approx(loss1, abs=ATOL)
    info1, info2 = (json.loads((d / spec["name"] / "train_log.json").read_text()) for d in (one, two))
    assert info1["best_step"] == info2["best_step"] and (info1["best_step"] is None) is ("eval_every" not in spec)
    val1, val2 = ([r["val_loss"] for r in i["val_log"]] for i in (info1, info2))
    assert len(val1) == (2 if "eval_every" in spec else 0) and val2 == pytest.approx(val1, abs=ATOL)
    assert t1.keys() == t2.keys() == init.keys() == rank1.keys()
    assert all(torch.equal(t2[k], rank1[k]) for k in t2)  # the ranks in step (FSDP: whole again on rank 1)
    diff = _diff(t1, t2)
    moved = max((t1[k] - init[k]).abs().max().item() for k in t1)
    assert (diff > ATOL).float().mean() <= OUTLIERS and diff.max() <= OUTLIER_ATOL, diff.max()
    assert moved >= 100 * ATOL, moved  # trained well beyond the tolerance
    return diff


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS[:-1], ids=[s["name"] for s in SPECS[:-1]])
def test_two_processes_match_one(runs, spec):
    diff = _compare(*runs, spec)
    loss1, loss2 = (_result(d / spec["name"])[0] for d in runs)
    if spec["grad_accum"] % 2 == 0:
        assert diff.max() == 0 and loss1 == loss2  # whole micro-batches per rank: bit-identical


@pytest.mark.slow
def test_killed_two_process_run_resumes_from_its_checkpoint(runs):
    _, two = runs
    info = json.loads((two / "resume/train_log.json").read_text())
    assert info["resumed_from"] == 2 and [r["step"] for r in info["log"]] == [1, 2, 3, 4]
    loss, got = _result(two / "resume")
    ref_loss, ref = _result(two / "resume-ref")
    assert loss == ref_loss and got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in got)  # bit-identical to the uninterrupted two-process run


@pytest.mark.slow
@pytest.mark.parametrize("spec", FSDP_SPECS, ids=[s["name"] for s in FSDP_SPECS])
def test_two_fsdp_processes_match_one(fsdp, spec):
    diff = _compare(*fsdp, spec)
    if spec["grad_accum"] == 2:
        assert diff.max() <= FSDP_WHOLE_ATOL, diff.max()
    bytes1, bytes2 = (json.loads((d / spec["name"] / "train_log.json").read_text())["optimizer_bytes"] for d in fsdp)
    assert bytes2 <= 0.55 * bytes1  # rank 0 held half the AdamW moments: sharded, not DDP


@pytest.mark.slow
def test_killed_fsdp_runs_resume_under_fsdp_or_one_process(fsdp):
    _, two = fsdp
    ref_loss, ref = _result(two / FSDP_REF["name"])
    for name in ("resume", "resume-one", "from-one"):
        info = json.loads((two / name / "train_log.json").read_text())
        assert info["resumed_from"] == 2 and [r["step"] for r in info["log"]] == [1, 2, 3, 4], name
        loss, got = _result(two / name)
        assert got.keys() == ref.keys() and loss == pytest.approx(ref_loss, abs=ATOL), name
        assert _diff(got, ref).max() <= FSDP_WHOLE_ATOL, name
    loss, got = _result(two / "resume")
    assert loss == ref_loss and all(torch.equal(got[k], ref[k]) for k in got)  # FSDP → FSDP: bit-identical


def _examples(n: int) -> list[tr.SFTExample]:
    return [tr.SFTExample(str(i), tuple(range(3 + i)), (-100, -100) + tuple(range(2, 3 + i))) for i in range(n)]


@pytest.mark.parametrize("batch_size,grad_accum,world", [(1, 8, 1), (1, 8, 2), (2, 2, 2), (4, 1, 2), (5, 3, 4)])
def test_shards_cover_each_step_in_order_with_shares_of_one(batch_size, grad_accum, world):
    cfg = tr.TrainConfig(batch_size=batch_size, grad_accum=grad_accum)
    ex = _examples(batch_size * grad_accum)
    idx = list(range(len(ex)))[::-1]
    parts = [tr.shard_step(idx, ex, cfg, world, r) for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # every rank runs as many forward/backward passes (DDP)
    micro = [idx[i * batch_size:(i + 1) * batch_size] for i in range(grad_accum)]
    if grad_accum % world == 0:  # whole micro-batches, rank after rank
        assert [m for p in parts for m, _ in p] == micro and all(s == 1.0 for p in parts for _, s in p)
    else:  # every rank a slice of every micro-batch; token shares add up to 1
        for i, m in enumerate(micro):
            assert sum((p[i][0] for p in parts), []) == m
            assert sum(p[i][1] for p in parts) == pytest.approx(1.0)


def test_unshareable_steps_and_foreign_sharded_launches_are_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"valid choices: a grad_accum divisible by 2 or a batch_size ≥ 2"):
        tr.shard_step(list(range(3)), _examples(3), tr.TrainConfig(batch_size=1, grad_accum=3), 2, 0)
    from support.models import random_hf_model

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ValueError, match=r"DDP or FSDP, not DEEPSPEED; valid choices: one process, `accelerate launch"):
        tr.train(random_hf_model("qwen2"), _examples(4), tr.TrainConfig(max_steps=1, grad_accum=2))


def test_sharding_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown sharding 'zero3'; valid choices: none, fsdp"):
        tr.train(torch.nn.Linear(2, 2), _examples(2), tr.TrainConfig(sharding="zero3"))
    assert tr.launch_sharding(tr.TrainConfig()) == "none"
    assert tr.launch_sharding(tr.TrainConfig(sharding="fsdp")) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # an accelerate FSDP config: FSDP, no longer refused
    tr.check_launch()
    tr.check_launch("FSDP")
    assert tr.launch_sharding(tr.TrainConfig()) == "fsdp"
    assert tr.run_key(tr.TrainConfig(sharding="fsdp"), _examples(2)) == tr.run_key(tr.TrainConfig(), _examples(2))
