"""Attention-credit GRPO (paper 003, Sec. 5): γ rules on hand-built responses, shaping, rewards, and the trainer.

The γ expectations below are computed by hand from Eq. 13-18; the trainer tests use a tiny random Qwen2 on CPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from support.errors import ParameterError
from support.rl import (
    STRATEGIES,
    CreditConfig,
    UnknownStrategyError,
    batch_gamma,
    check_strategy,
    coupled_sets,
    gamma_coupled,
    gamma_entropy,
    gamma_global,
    gamma_local,
    gamma_none,
    gamma_random,
    reward_function,
    shape_advantages,
    top_q,
    waad_jumps,
)

torch.set_num_threads(1)
NAN = math.nan


def close(a, b):
    assert torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)), (a, b)


# ----------------------------------------------------------------------------------------------- TopQ
def test_top_q_counts_ties_nan_and_valid():
    s = [3.0, 1.0, 3.0, NAN, 2.0]
    assert top_q(s, 0.5).tolist() == [True, False, True, False, False]  # ceil(0.5·4) = 2 of the 4 defined
    assert top_q(s, 0.25).tolist() == [True, False, False, False, False]  # tie -> earlier position
    assert top_q(s, 0.25, bottom=True).tolist() == [False, True, False, False, False]
    assert top_q(s, 1.0).tolist() == [True, True, True, False, True]  # NaN is never selected
    assert top_q(s, 0.0).sum() == 0
    assert top_q(np.array(s), 0.5, valid=[False, True, True, True, True]).tolist() == [False, False, True, False, True]
    assert top_q(torch.tensor([0.6] * 5), 0.6).sum() == 3  # ceil(0.6·5) = 3 despite 0.6·5 = 3.0000000000000004
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        top_q(s, 1.5)


# ----------------------------------------------------------------------------------------------- Eq. 13-14
def test_gamma_local_eq14():
    waad = [1.0, 5.0, 4.0, 4.0, 0.0]  # Δ = [4, 1, 0, 4, undefined]
    assert np.allclose(waad_jumps(waad)[:4], [4, 1, 0, 4]) and np.isnan(waad_jumps(waad)[4])
    close(gamma_local(waad, q=0.5), [1.5, 1, 1, 1.5, 1])  # ceil(0.5·4) = 2
    close(gamma_local(waad, q=0.25), [1.5, 1, 1, 1, 1])  # tie at 4 -> position 0
    close(gamma_local(waad, q=0.25, bottom=True), [1, 1, 1.5, 1, 1])
    close(gamma_local(waad, q=1.0, amp=2.0), [2, 2, 2, 2, 1])  # the last token has no successor: never selected
    close(gamma_local(torch.tensor(waad)), gamma_local(np.array(waad)))  # torch and numpy agree


# ----------------------------------------------------------------------------------------------- Eq. 15-16
def test_gamma_global_eq16():
    fai = [0.1, 0.5, 0.3, 0.5, NAN, NAN]  # FAI undefined at the end (empty horizon)
    close(gamma_global(fai, q=0.5), [1, 1.5, 1, 1.5, 1, 1])
    close(gamma_global(fai, q=0.5, bottom=True), [1.5, 1, 1.5, 1, 1, 1])
    close(gamma_global(fai, q=1.0), [1.5, 1.5, 1.5, 1.5, 1, 1])
    close(gamma_global(fai, q=0.4), [1, 1.5, 1, 1.5, 1, 1])  # ceil(0.4·4) = 2


# ----------------------------------------------------------------------------------------------- Eq. 17-18
WAAD = [5.0, 1.0, 1.0, 6.0, 1.0, 1.0, 2.0, 2.0]  # Δ = [4, 0, 5, 5, 0, 1, 0, -]; median WAAD = 1.5
FAI = [0.0, 0.7, 0.1, 0.0, 0.9, 0.1, 0.8, NAN]


def test_gamma_coupled_back_allocation_eq18():
    # T_glob = top ceil(0.4·7) = 3 FAI = {4, 6, 1}; τ_Δ = 3rd largest Δ = 4; τ_waad = 1.5; k = 2.
    # t=1: window clipped to {0}, Δ_0 = 4 ≥ 4 and WAAD_1 = 1 ≤ 1.5 -> dominated, intro 0.
    # t=4: window {2, 3}, Δ = 5, 5 -> dominated, intro = 2 (earliest argmax).
    # t=6: window {4, 5}, max Δ = 1 < 4 (and WAAD_6 = 2 > 1.5) -> an undominated anchor.
    s = coupled_sets(WAAD, FAI)
    assert torch.nonzero(s.anchors).flatten().tolist() == [1, 4, 6]
    assert torch.nonzero(s.dominated).flatten().tolist() == [1, 4]
    assert torch.nonzero(s.intro).flatten().tolist() == [0, 2]
    close(gamma_coupled(WAAD, FAI), [1.25, 1.25, 1.25, 1, 1.25, 1, 1.5, 1])  # α = 0.5 of b = 0.5 moves back
    close(gamma_coupled(WAAD, FAI, alpha=1.0), [1.5, 1, 1.5, 1, 1, 1, 1.5, 1])  # the whole bonus moves back
    close(gamma_coupled(WAAD, FAI, alpha=0.0), [1, 1.5, 1, 1, 1.5, 1, 1.5, 1])  # = global-anchor credit
    close(gamma_coupled(WAAD, FAI, alpha=0.0), gamma_global(FAI))
    # k = 1: t=4's window is {3} (Δ_3 = 5 -> intro 3); t=1's is {0}
    close(gamma_coupled(WAAD, FAI, k=1), [1.25, 1.25, 1, 1.25, 1.25, 1, 1.5, 1])
    # a stricter τ_waad (the 0.25 quantile of WAAD = 1) still admits WAAD = 1; τ_Δ at the 0.9 quantile of Δ (5)
    # leaves only t=4 dominated
    close(gamma_coupled(WAAD, FAI, tau_waad=0.25, tau_delta=0.9), [1, 1.5, 1.25, 1, 1.25, 1, 1.5, 1])


def test_gamma_coupled_shared_intro_start_and_overlap():
    waad = [6.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # Δ = [5, 0, 0, 0, 0, -]; median 1
    # anchors {1, 2}: both dominated through Δ_0 (t=1's window is clipped to {0}); the shared intro 0 gets α·b once
    close(gamma_coupled(waad, [0.0, 0.9, 0.8, 0.1, 0.2, NAN]), [1.25, 1.25, 1.25, 1, 1, 1])
    # anchors {0, 1}: t=0 has no predecessor (never dominated, full bonus) and is also t=1's intro: b + α·b
    close(gamma_coupled(waad, [0.9, 0.8, 0.1, 0.0, 0.2, NAN]), [1.75, 1.25, 1, 1, 1, 1])
    # an anchor with undefined WAAD is never dominated
    close(gamma_coupled([6.0, NAN, 1.0, 1.0], [0.1, 0.9, 0.0, NAN], q=0.3), [1, 1.5, 1, 1])


def test_gamma_coupled_bottom_and_q1():
    # bottom: anchors = the 3 lowest FAI = {0, 3, 2} (ties -> earlier); t=2: window {0, 1}, Δ_0 = 4 ≥ 4,
    # WAAD_2 = 1 -> dominated, intro 0; t=3: WAAD 6 > 1.5; t=0: no predecessor
    s = coupled_sets(WAAD, FAI, bottom=True)
    assert torch.nonzero(s.anchors).flatten().tolist() == [0, 2, 3]
    assert torch.nonzero(s.dominated).flatten().tolist() == [2]
    close(gamma_coupled(WAAD, FAI, bottom=True), [1.75, 1, 1.25, 1.5, 1, 1, 1, 1])
    # q = 1: every defined-FAI token is an anchor; τ_Δ = min Δ = 0, so every anchor with WAAD ≤ 1.5 and a
    # predecessor is dominated (1, 2, 4, 5); intros: 1 -> 0, 2 -> 0, 4 -> 2, 5 -> 3
    s = coupled_sets(WAAD, FAI, q=1.0)
    assert torch.nonzero(s.dominated).flatten().tolist() == [1, 2, 4, 5]
    assert torch.nonzero(s.intro).flatten().tolist() == [0, 2, 3]
    close(gamma_coupled(WAAD, FAI, q=1.0), [1.75, 1.25, 1.5, 1.75, 1.25, 1.25, 1.5, 1])


def test_random_entropy_none():
    g = torch.Generator().manual_seed(0)
    a = gamma_random(10, 0.4, 1.5, g)
    assert sorted(a.unique().tolist()) == [1.0, 1.5] and int((a > 1).sum()) == 4
    assert torch.equal(a, gamma_random(10, 0.4, 1.5, torch.Generator().manual_seed(0)))
    close(gamma_entropy([0.1, 2.0, 0.5, 1.0, 0.0], q=0.4), [1, 1.5, 1, 1.5, 1])
    close(gamma_entropy([0.1, 2.0, 0.5, 1.0, 0.0], q=0.4, bottom=True), [1.5, 1, 1, 1, 1.5])
    close(gamma_none(3), [1, 1, 1])


def test_batch_gamma_rows_see_only_their_tokens():
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0] * 7])
    waad = torch.tensor([[1.0, 5.0, 4.0, 4.0, 0.0, 9.0, 9.0], [1.0, 2.0, 9.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 7])
    g = batch_gamma({"waad": waad}, mask, CreditConfig(strategy="local", q=0.5))
    close(g, [[1.5, 1, 1, 1.5, 1, 1, 1], [1, 1.5, 1, 1, 1, 1, 1], [1] * 7])


# ----------------------------------------------------------------------------------------------- shaping
def test_shape_advantages_never_scales_negatives():
    adv = torch.tensor([1.0, -1.0, 0.0, 2.0])
    gamma = torch.tensor([[1.5, 1.0, 2.0], [1.5, 1.5, 1.5], [2.0, 2.0, 2.0], [1.0, 1.25, 1.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    out = shape_advantages(adv, gamma, mask)
    close(out, [[1.5, 1, 0], [-1, -1, -1], [0, 0, 0], [2, 2.5, 3]])
    assert not out.requires_grad  # γ is detached
    close(shape_advantages(adv, torch.ones(4, 3), mask), adv[:, None] * mask)
    with pytest.raises(ValueError):
        shape_advantages(adv[:, None], gamma, mask)


# ----------------------------------------------------------------------------------------------- config, registry
def test_strategies_and_config_errors():
    assert set(STRATEGIES) == {"none", "random", "entropy", "local", "global", "coupled", "local-bottom",
                               "global-bottom", "coupled-bottom"}
    with pytest.raises(UnknownStrategyError, match="valid choices: none, random, entropy, local"):
        check_strategy("anchor")
    with pytest.raises(ParameterError, match="unknown credit strategy 'bogus'"):
        CreditConfig(strategy="bogus")
    for bad in (dict(q=1.5), dict(alpha=-0.1), dict(k=0), dict(amp=0), dict(h_lo=20, h_hi=10), dict(tau_delta=2.0),
                dict(window=2.5), dict(group_frac=0)):
        with pytest.raises(ParameterError):
            CreditConfig(**bad)
    assert CreditConfig().strategy == "coupled"


# ----------------------------------------------------------------------------------------------- rewards
def test_rewards_by_family():
    cd = reward_function("countdown")
    assert cd.__name__ == "countdown_reward"
    got = cd(["p"] * 4, ["3 + 4 = 7\nAnswer: 3 + 4", "Answer: 3 * 4", "no answer here", "Answer: (3 +"],
             numbers=[[3, 4]] * 4, target=[7] * 4, trainer_state=None)
    assert got == [1.0, 0.0, 0.0, 0.0]
    conv = [[{"role": "assistant", "content": "Answer: 4 + 3<|im_end|>"}]]
    assert cd(["p"], conv, numbers=[[3, 4]], target=[7]) == [1.0]
    letter = reward_function("letter")
    assert letter(["p"] * 3, ["Answer: B", "Answer: C", "B"], answer=["B"] * 3) == [1.0, 0.0, 0.0]
    assert letter(["p"], ["Answer: E"], answer=["E"], options=[["1", "2", "3", "4"]]) == [0.0]  # E is not an option
    num = reward_function("numeric")
    assert num(["p"] * 3, ["so \\boxed{25}", "Answer: 1,600", "\\boxed{24}"], answer=["025", "1600", "25"]) == [
        1.0, 1.0, 0.0]
    with pytest.raises(ParameterError, match="valid choices: letter, countdown, numeric"):
        reward_function("code")
    with pytest.raises(ValueError, match="needs dataset columns numbers, target; missing: target"):
        cd(["p"], ["Answer: 3 + 4"], numbers=[[3, 4]])


# ----------------------------------------------------------------------------------------------- trainer
WORDS = ["<pad>", "<unk>", "<eos>", "Answer:", "+", "*", "="] + [str(i) for i in range(121)]  # 128 = model vocab


@pytest.fixture(scope="module")
def tiny():
    """A word-level tokenizer, a toy Countdown dataset and a builder of identical tiny random Qwen2 policies."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from support.models import random_hf_model

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    ds = Dataset.from_list([{"prompt": f"{a} {b} = {a + b} Answer:", "numbers": [a, b], "target": a + b}
                            for a, b in [(3, 4), (5, 6), (7, 8), (9, 10)]])

    def model():
        m = random_hf_model("qwen2", vocab_size=len(WORDS), num_hidden_layers=3)
        m.generation_config.pad_token_id, m.generation_config.eos_token_id = tok.pad_token_id, tok.eos_token_id
        return m

    return tok, ds, model


def varied_reward(prompts, completions, **kw):
    """A deterministic reward that differs between completions, so advantages are non-zero."""
    return [float(len(c.split()) % 3) for c in completions]


def trainer(cls, tiny, tmp_path, max_steps=1, steps_per_generation=None, **kw):
    from support.rl import grpo_config

    tok, ds, model = tiny
    args = grpo_config(tmp_path, max_steps=max_steps, prompts_per_step=2, num_generations=4, max_completion_length=12,
                       steps_per_generation=steps_per_generation, logging_steps=1, seed=0)
    return cls(model=model(), reward_funcs=varied_reward, args=args, train_dataset=ds, processing_class=tok, **kw)


def test_all_ones_gamma_loss_equals_grpo(tiny, tmp_path):
    from trl import GRPOTrainer

    from support.rl import CreditGRPOTrainer

    torch.manual_seed(0)
    plain = trainer(GRPOTrainer, tiny, tmp_path / "plain")
    # amp = 1: γ ≡ 1 through the whole pipeline (signals from support.rhythm, TopQ, Eq. 14)
    credit = trainer(CreditGRPOTrainer, tiny, tmp_path / "credit",
                     credit=CreditConfig(strategy="local", amp=1.0, window=3, h_lo=1, h_hi=4))
    rows = [tiny[1][i] for i in range(2) for _ in range(4)]
    batch = plain._generate_and_score_completions(rows)
    adv, mask = batch["advantages"], batch["completion_mask"]
    assert adv.dim() == 1 and adv.abs().sum() > 0
    shaped = credit.shape_batch(dict(batch))
    assert shaped["advantages"].shape == mask.shape
    close(shaped["advantages"], adv[:, None] * mask)
    assert credit._metrics["eval"]["credit/gamma_mean"] == [1.0]
    loss_plain = plain._compute_loss(plain.model, batch)
    loss_credit = credit._compute_loss(credit.model, shaped)
    assert torch.allclose(loss_plain, loss_credit, atol=1e-6), (loss_plain, loss_credit)
    # a non-trivial γ enters Eq. 12 per token: at ratio 1 the GRPO loss is −mean_i (Σ_t Ã_it / |o_i|)
    gamma = 1 + torch.rand(mask.shape)
    shaped["advantages"] = shape_advantages(adv, gamma, mask)
    want = -((shaped["advantages"] * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    assert torch.allclose(credit._compute_loss(credit.model, shaped), want, atol=1e-6)


@pytest.mark.parametrize("steps_per_generation", [1, 2])  # 2: one rollout batch split over two optimizer steps
def test_credit_trainer_trains(tiny, tmp_path, steps_per_generation):
    from support.rl import CreditGRPOTrainer

    torch.manual_seed(0)
    t = trainer(CreditGRPOTrainer, tiny, tmp_path, max_steps=steps_per_generation,
                steps_per_generation=steps_per_generation,
                credit=CreditConfig(strategy="coupled", window=3, h_lo=1, h_hi=4, n_layers=2))
    seen = []
    compute = t._compute_loss
    t._compute_loss = lambda model, inputs: (seen.append(inputs["advantages"].shape), compute(model, inputs))[1]
    before = [p.detach().clone() for p in t.model.parameters()]
    t.train()
    assert len(seen) == steps_per_generation and all(len(s) == 2 and s[0] == 8 for s in seen)  # (B, T) advantages
    log = next(r for r in t.state.log_history if "credit/gamma_mean" in r)
    assert log["credit/gamma_mean"] >= 1.0 and 0.0 < log["credit/frac_amplified"] < 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


# ----------------------------------------------------------------------------------------------- runs
RESUME_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from support import rl
from support.toydata import generate
items = generate("toy_countdown", 8, split="train", seed=0)
rl.train_grpo("toy-qwen2", items, items[:4], sys.argv[1], credit=rl.CreditConfig(strategy="coupled"),
              steps=int(sys.argv[2]), prompts_per_step=2, num_generations=2, max_completion_length=12,
              eval_every=100, save_steps=1, resume=sys.argv[3] == "resume", train_eval=2)
"""


def test_grpo_run_resumes_after_a_kill(tmp_path):
    """A run killed mid-training continues from its last checkpoint (model, optimizer, RNG) to the planned end."""
    import json
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(out), "1000", "fresh"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoint-2" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the run died or wrote no checkpoint"
        time.sleep(0.5)
    time.sleep(0.5)  # let checkpoint-2 finish its last files; the process is killed mid-run either way
    proc.kill()
    proc.wait()
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
                  if (p / "trainer_state.json").exists() and (p / "rng_state.pth").exists())
    assert done and not (out / "run.json").exists()
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(out), str(done[-1] + 2), "resume"], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from"].endswith(f"checkpoint-{done[-1]}")
    assert run["started_at_step"] == done[-1]  # this process trained only the remaining steps
    steps = [h["step"] for h in run["history"] if "loss" in h]
    assert steps == list(range(1, done[-1] + 3))  # the log continues the killed run's, step by step
    assert run["provenance"]["model"]["name"] == "toy-qwen2"
    assert {"greedy", "sampled", "train_greedy", "train_sampled"} <= set(run["evals"][-1])  # held out and trained on


def test_eval_sets_sample_the_training_prompts_as_often_as_the_held_out_ones():
    from support.rl import eval_sets, train_grpo

    sets = eval_sets(list("abcdefgh"), list("ABCDEFGH"), 2, list("xyz"), list("XYZ"), train_eval=2)
    assert sets[""] == (list("abcdefgh"), list("ABCDEFGH"), 2)
    assert sets["train_"] == (list("xy"), list("XY"), 8)  # 2 prompts × 8 samples = 8 held-out items × 2
    assert set(eval_sets(list("ab"), list("AB"), 1, list("x"), list("X"), train_eval=5)["train_"][0]) == {"x"}
    assert list(eval_sets(list("ab"), list("AB"))) == [""]
    with pytest.raises(ParameterError, match="train_eval must be ≥ 0"):
        train_grpo("toy-qwen2", ["x"], ["y"], "unused", credit=CreditConfig(), steps=1, train_eval=-1)


def test_prompt_rows_for_real_items_and_bad_input():
    from support.records import CountdownItem, MathItem
    from support.rl import prompt_rows

    cd = prompt_rows([CountdownItem("c1", (3, 5, 7, 11), 24, "countdown")], None, "chatml")[0]
    assert "Using the numbers 3, 5, 7, 11, create an equation that equals 24." in cd["prompt"]
    assert cd["numbers"] == [3, 5, 7, 11] and cd["target"] == 24
    math_item = MathItem("m1", "What is 2 + 3?", "5", None, "gsm8k")
    m = prompt_rows([math_item], None, "chatml")[0]
    assert "\\boxed{}" in m["prompt"] and m["answer"] == "5"
    with pytest.raises(ParameterError, match="mix"):
        prompt_rows([CountdownItem("c1", (3, 5, 7, 11), 24, "countdown"), math_item], None, "chatml")


def test_command_line_refuses_bad_input_before_loading(tmp_path, capsys):
    from support.rl import main

    base = ["--model", "toy-qwen2", "--task", "toy_countdown", "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as e:
        main(base + ["--strategy", "bogus"])
    assert e.value.code == 2 and "coupled" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "toy-qwen2", "--task", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(base + ["--loss-type", "ppo"])
    assert "dr_grpo" in capsys.readouterr().err
    with pytest.raises(ParameterError, match=r"q=2"):
        main(base + ["--q", "2"])
    with pytest.raises(ParameterError, match=r"micro_batch=5 must divide the 128 completions"):
        main(base + ["--micro-batch", "5"])
    assert not (tmp_path / "r").exists()


def test_countdown_reward_refuses_reuse_unknown_numbers_and_malicious_answers():
    """The GRPO reward is the chapters' verifier: a policy cannot be paid for reused or invented numbers, and hostile
    strings are never evaluated (a 10^6-digit literal, a tower of powers, an import)."""
    reward = reward_function("countdown")
    cols = {"numbers": [[3, 5, 7, 11]] * 6, "target": [24] * 6}
    answers = ["Answer: ( 11 + 7 ) + 5 + 3 - 2", "Answer: 3 * 5 + 7 + 11 - 11 - 3 + 3",  # unknown 2; reused 11 and 3
               "Answer: __import__('os').system('echo pwned')", "Answer: 9 ** 9 ** 9 ** 9",
               "Answer: " + "9" * 10**6, "Answer: ( 11 - 7 ) * 3 + 5 + 7"]
    assert reward([""] * 6, answers, **cols) == [0.0] * 6  # evaluating the power tower would never return
    assert reward([""], ["Answer: ( 11 - 7 ) * 5 + 7 - 3"], numbers=[[3, 5, 7, 11]], target=[24]) == [0.0]  # 7 twice
    assert reward([""], ["Answer: ( 7 - 5 ) * 11 + 3"], numbers=[[3, 5, 7, 11]], target=[25]) == [1.0]


def test_sampled_evaluation_leaves_the_training_random_stream_alone():
    from support.models import load_plain
    from support.rl import policy_accuracy
    from support.toydata import generate as toy_items

    model, tok = load_plain("toy-qwen2", device="cpu")
    items = toy_items("toy_countdown", 2, "test")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    policy_accuracy(model, tok, items, [it.prompt for it in items], 8, sampled=True, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_stored_runs_are_filtered_by_model_and_summarised(tmp_path):
    from support.artifacts import provenance, write_json
    from support.rl import run_summary, stored_runs

    log = [{"step": i + 1, "reward": r, "completions/clipped_ratio": 0.5 - r / 2} for i, r in
           enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])]
    evals = [{"step": 0, "greedy": 0.5, "sampled": 0.25}, {"step": 10, "greedy": 0.625, "sampled": 0.5}]
    for name, model in (("a", "toy-qwen2"), ("b", "other")):
        write_json(tmp_path / name / "run.json", {"seed": 1, "history": log + [{"train_runtime": 3.0}], "evals": evals},
                   provenance({"name": model}, "toy_countdown", ["x"], {"temperature": 0.7, "loss_type": "grpo",
                                                                           "n_eval": 8}))
    runs = stored_runs("toy-qwen2", tmp_path)
    assert list(runs) == ["a"] and stored_runs("toy-qwen2", tmp_path / "none") == {}
    row = run_summary(runs).iloc[0]
    assert row["steps"] == 10 and row["temperature"] == 0.7 and row["seed"] == 1
    assert row["reward, first fifth"] == 0.15 and row["reward, last fifth"] == 0.95
    assert row["clipped, last fifth"] == 0.025 and (row["sampled before"], row["sampled after"]) == (0.25, 0.5)
    assert row["√2·SE"] == pytest.approx((2 * 0.25 * 0.75 / 8) ** 0.5)


def test_gradient_checkpointing_is_on_by_default_and_its_memory_is_counted(tmp_path):
    """TRL's gradient checkpointing stays on unless switched off; the memory guard counts the activations it saves."""
    from support import rl
    from support.models import load_plain

    assert rl.grpo_config(tmp_path).gradient_checkpointing is True
    assert rl.grpo_config(tmp_path, gradient_checkpointing=False).gradient_checkpointing is False
    model, _ = load_plain("toy-qwen2")
    on, off = (rl.check_memory(model.config, 8, 8, 256, "cpu", gradient_checkpointing=g) for g in (True, False))
    assert off.parts["activations"] > on.parts["activations"]
    assert off.parts["weights"] == on.parts["weights"]


def test_micro_batches_give_the_one_pass_gradient(tiny, tmp_path):
    """`micro_batch` splits a step's forward/backward (TRL's gradient accumulation) without changing the step: the
    same generations, the same accumulated gradient as one pass over all P·G completions; a non-divisor is refused."""
    from transformers import TrainerCallback

    from support.rl import CreditGRPOTrainer, grpo_config

    class Grads(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.seen.append([p.grad.detach().clone() for p in model.parameters() if p.grad is not None])

    tok, ds, model = tiny
    grads = {}
    for micro in (None, 4, 2):
        args = grpo_config(tmp_path / str(micro), max_steps=1, prompts_per_step=2, num_generations=4,
                           max_completion_length=12, logging_steps=1, seed=0, micro_batch=micro,
                           max_grad_norm=0.0)  # unclipped: a wrongly scaled gradient must show
        assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8
        torch.manual_seed(0)
        cb = Grads()
        t = CreditGRPOTrainer(model=model(), reward_funcs=varied_reward, args=args, train_dataset=ds,
                              processing_class=tok, callbacks=[cb],
                              credit=CreditConfig(strategy="coupled", window=3, h_lo=1, h_hi=4, n_layers=2))
        t.train()
        grads[micro] = cb.seen[0]
    for micro in (4, 2):
        assert len(grads[micro]) == len(grads[None])
        for a, b in zip(grads[None], grads[micro]):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (micro, (a - b).abs().max())
    with pytest.raises(ParameterError, match="micro_batch=3 must divide the 8 completions.*1, 2, 4, 8"):
        grpo_config(tmp_path, prompts_per_step=2, num_generations=4, micro_batch=3)
