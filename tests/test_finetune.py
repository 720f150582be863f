"""support.finetune: SHFT slices, exact parameter counts, LoRA, prompt masking, metrics, resumable training."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from support import evaluation as ev
from support import finetune as ft
from support import heads, scoring
from support import training as tr
from support.models import random_hf_model
from support.scoring import parse_answer

ROOT = Path(__file__).resolve().parent.parent
HEADS = [(0, 1), (1, 2), (1, 3)]  # layer 1 heads 2 and 3 share kv-group 1 (group size 2)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev)


def examples(n: int = 8, length: int = 12, prompt: int = 5, vocab: int = 128, seed: int = 0) -> list[tr.SFTExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        out.append(tr.SFTExample(str(i), tuple(ids), tuple([-100] * prompt + ids[prompt:])))
    return out


def changed_rows(a: torch.Tensor, b: torch.Tensor, dim: int) -> list[int]:
    diff = a != b
    other = [d for d in range(diff.ndim) if d != dim]
    return sorted(diff.any(dim=other[0]).nonzero().flatten().tolist()) if other else diff.nonzero().flatten().tolist()


def rows(units, d_head):
    return [u * d_head + i for u in units for i in range(d_head)]


# ----------------------------------------------------------------------------------------------- SHFT
def test_shft_step_changes_only_selected_slices():
    hf = random_hf_model("qwen2")  # GQA (4 query heads, 2 kv heads), q/k/v biases
    base = copy.deepcopy(hf.state_dict())
    shft = ft.apply_shft(hf, HEADS, gqa_policy="shared")  # the shared K/V rows of the touched groups train
    tr.train(hf, examples(), tr.TrainConfig(lr=1e-2, max_steps=2, grad_accum=2))  # step 1: warmup, lr 0
    shft.merge()
    assert not hasattr(hf, "shft") and not any(p.requires_grad for p in hf.parameters())
    dh = 16
    expect = {  # (layer, proj): changed rows (q/k/v weight and bias) or columns (o)
        (0, "q"): rows([1], dh), (0, "k"): rows([0], dh), (0, "v"): rows([0], dh), (0, "o"): rows([1], dh),
        (1, "q"): rows([2, 3], dh), (1, "k"): rows([1], dh), (1, "v"): rows([1], dh), (1, "o"): rows([2, 3], dh),
    }
    after = hf.state_dict()
    for name, w0 in base.items():
        w1 = after[name]
        parts = name.split(".")
        key = (int(parts[2]), parts[4][0]) if "self_attn" in name else None
        if key not in expect:
            assert torch.equal(w0, w1), f"{name} changed but is not a selected slice"
            continue
        dim = 1 if key[1] == "o" else 0
        assert changed_rows(w0, w1, dim) == expect[key], name  # exactly the slice changed, all of it
        keep = torch.ones(w0.shape[dim], dtype=torch.bool)
        keep[expect[key]] = False
        idx = keep.nonzero().flatten()
        assert torch.equal(w0.index_select(dim, idx), w1.index_select(dim, idx))


@pytest.mark.parametrize("policy", ft.GQA_POLICIES)
def test_hooks_equal_merged_weights_and_identity_at_init(policy):
    hf = random_hf_model("qwen2")
    ids = torch.randint(0, 128, (2, 10))
    ref = hf(ids).logits
    shft = ft.apply_shft(hf, HEADS, gqa_policy=policy)
    assert torch.equal(hf(ids).logits, ref)  # zero deltas: same function, bit for bit
    for p in shft.parameters():
        torch.nn.init.normal_(p, std=0.05)
    hooked = hf(ids).logits
    shft.merge()
    torch.testing.assert_close(hf(ids).logits, hooked, rtol=1e-4, atol=1e-5)


def test_delta_gradients_equal_full_weight_gradient_slices():
    hf = random_hf_model("qwen2")
    ref = copy.deepcopy(hf)
    ex = tr.collate(examples(2), 0, torch.device("cpu"))
    shft = ft.apply_shft(hf, HEADS, gqa_policy="shared")
    hf(**ex).loss.backward()
    ref(**ex).loss.backward()
    attn = ref.model.layers[1].self_attn
    ld = shft.layers["1"]
    torch.testing.assert_close(ld.q.grad, attn.q_proj.weight.grad[rows([2, 3], 16)])
    torch.testing.assert_close(ld.k.grad, attn.k_proj.weight.grad[rows([1], 16)])
    torch.testing.assert_close(ld.v_bias.grad, attn.v_proj.bias.grad[rows([1], 16)])
    torch.testing.assert_close(ld.o.grad, attn.o_proj.weight.grad[:, rows([2, 3], 16)])


@pytest.mark.parametrize("policy", ft.GQA_POLICIES)
@pytest.mark.parametrize("arch,overrides,bias", [
    ("llama", dict(num_key_value_heads=4), False),   # no GQA, no bias: the paper's footnote 4·d·d_head·M
    ("llama", dict(num_key_value_heads=2), False),   # GQA
    ("qwen2", dict(num_key_value_heads=4), True),    # no GQA, q/k/v biases
    ("qwen2", dict(num_key_value_heads=2), True),    # GQA + biases
    ("qwen3", dict(num_key_value_heads=1), False),   # head_dim from the config, all heads share one group
])
def test_exact_parameter_count(arch, overrides, bias, policy):
    hf = random_hf_model(arch, **overrides)
    geom = ft.geometry(hf)
    assert geom.qkv_bias is bias
    shft = ft.apply_shft(hf, HEADS, gqa_policy=policy)
    n = tr.count_trainable(hf)
    assert n == ft.shft_param_count(HEADS, geom, gqa_policy=policy) == sum(p.numel() for p in shft.parameters())
    d, dh, m = geom.d_model, geom.d_head, len(HEADS)
    g = len({(l, h // geom.group_size) for l, h in HEADS})
    b = int(bias)
    expect = {"ungrouped": 4 * d * dh * m + 3 * b * dh * m, "shared": 2 * d * dh * (m + g) + b * dh * (m + 2 * g),
              "qo_only": 2 * d * dh * m + b * dh * m}
    assert n == expect[policy]
    if policy == "ungrouped" or (policy == "shared" and geom.n_kv_heads == geom.n_heads):
        assert n == 4 * d * dh * m + b * 3 * dh * m
        if not bias:
            assert n == 4 * d * dh * m  # the paper's footnote 2
    assert len(shft.siblings) == (len(ft.affected_siblings(HEADS, geom)) if policy == "shared" else 0)
    shft.merge()
    no_bias = {"ungrouped": 4 * d * dh * m, "shared": 2 * d * dh * (m + g), "qo_only": 2 * d * dh * m}[policy]
    assert ft.shft_param_count(HEADS, geom, include_bias=False, gqa_policy=policy) == no_bias


def test_optimizer_state_is_slice_sized():
    hf = random_hf_model("qwen2")
    shft = ft.apply_shft(hf, HEADS)
    params = list(shft.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    hf(**tr.collate(examples(1), 0, torch.device("cpu"))).loss.backward()
    opt.step()
    assert set(map(id, opt.state)) == set(map(id, params))  # the optimizer sees only the deltas
    full = hf.model.layers[1].self_attn.q_proj.weight.shape
    for p in params:  # moments have the delta's (slice) shape, never a full projection's
        assert opt.state[p]["exp_avg"].shape == p.shape == opt.state[p]["exp_avg_sq"].shape != full
    n = sum(p.numel() for p in params)
    assert tr.optimizer_state_bytes(opt) == 2 * 4 * n + 4 * len(params)  # two fp32 moments (+ step scalars)
    res = tr.train(hf, examples(), tr.TrainConfig(lr=1e-3, max_steps=1, grad_accum=1))
    assert res.n_trainable == n and res.optimizer_bytes == tr.optimizer_state_bytes(opt)


def test_hf_trainer_trains_only_slices(tmp_path):
    from transformers import Trainer, TrainingArguments

    hf = random_hf_model("qwen2")
    base = copy.deepcopy(hf.state_dict())
    shft = ft.apply_shft(hf, [(1, 0)])
    data = [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in examples(4)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=1, gradient_accumulation_steps=2,
                             max_steps=2, learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                             logging_strategy="no", disable_tqdm=True)
    Trainer(model=hf, args=args, train_dataset=data).train()
    shft.merge()
    after = hf.state_dict()
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed == {f"model.layers.1.self_attn.{p}.{w}" for p in ("q_proj", "k_proj", "v_proj")
                       for w in ("weight", "bias")} | {"model.layers.1.self_attn.o_proj.weight"}


# ----------------------------------------------------------------------------------------------- GQA policy
GQA_ARCHS = [("qwen2", dict(num_key_value_heads=2)),   # 4 query heads in 2 groups, q/k/v biases
             ("llama", dict(num_key_value_heads=2)),
             ("qwen3", dict(num_key_value_heads=1))]   # one group holds all 4 query heads
LAST = [(1, 1), (1, 2)]  # in the last layer (earlier layers are untouched), in two different kv-groups of qwen2


def head_outputs(hf, ids) -> torch.Tensor:
    """Per-head attention outputs (the input of o_proj) of every layer: [L, H, batch, pos, d_head]."""
    got = []
    hooks = [a.o_proj.register_forward_pre_hook(lambda m, args: got.append(args[0].detach().clone()))
             for a in ft.attention_modules(hf)]
    with torch.no_grad():
        hf(ids)
    for h in hooks:
        h.remove()
    n = hf.config.num_attention_heads
    return torch.stack([z.reshape(*z.shape[:-1], n, -1).movedim(-2, 0) for z in got])


@pytest.mark.parametrize("policy", ft.GQA_POLICIES)
@pytest.mark.parametrize("arch,overrides", GQA_ARCHS)
def test_gqa_policy_moves_only_the_heads_it_reports(arch, overrides, policy):
    hf = random_hf_model(arch, **overrides)
    geom = ft.geometry(hf)
    ids = torch.randint(0, 128, (2, 10))
    before = head_outputs(hf, ids)
    prep = ft.prepare("wh", hf, LAST, gqa_policy=policy)
    torch.testing.assert_close(head_outputs(hf, ids), before, rtol=1e-6, atol=1e-6)  # zero deltas: exact
    for p in prep.shft.parameters():
        torch.nn.init.normal_(p, std=0.2)
    after = head_outputs(hf, ids)
    siblings = ft.affected_siblings(LAST, geom, policy)
    assert prep.siblings == siblings
    if policy == "shared":
        assert siblings == [(1, 0), (1, 3)] and len(prep.siblings) == 2  # the siblings of the touched groups
    else:
        assert siblings == []
    for l in range(geom.n_layers):
        for h in range(geom.n_heads):
            moved = (after[l, h] - before[l, h]).abs().max().item()
            if (l, h) in LAST or (l, h) in siblings:
                assert moved > 1e-3, (l, h)  # selected heads and, under shared, their siblings change
            else:
                assert moved < 1e-5, (l, h)  # every other head's attention output is untouched


@pytest.mark.parametrize("policy", ft.GQA_POLICIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch,overrides", GQA_ARCHS + [("qwen2", dict(num_key_value_heads=4))])
def test_zero_deltas_compute_the_original_model(arch, overrides, attn, policy):
    hf = random_hf_model(arch, **overrides)
    hf.set_attn_implementation(attn)
    ids = torch.randint(0, 128, (2, 10))
    with torch.no_grad():
        ref, gen = hf(ids).logits, hf.generate(ids[:1], max_new_tokens=4, do_sample=False)
    prep = ft.prepare("wh", hf, HEADS, gqa_policy=policy)
    model = prep.finish(merge=True)  # ungrouped layers stay ungrouped (wider k/v_proj): the same function
    mha = overrides["num_key_value_heads"] == 4
    assert (model.model.layers[1].self_attn.num_key_value_groups == 1) is (policy == "ungrouped" or mha)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(model.generate(ids[:1], max_new_tokens=4, do_sample=False), gen)  # K/V cache too


def test_ungroup_layers_is_exact_and_updates_the_config_when_complete():
    hf = random_hf_model("qwen2")
    ids = torch.randint(0, 128, (2, 10))
    ref = hf(ids).logits
    assert ft.ungroup_layers(hf, [1]) == [1] and hf.config.num_key_value_heads == 2  # partial: config unchanged
    assert hf.model.layers[1].self_attn.k_proj.weight.shape == (64, 64)
    assert ft.ungroup_layers(hf, [1]) == []  # idempotent
    assert ft.ungroup_layers(hf) == [0] and hf.config.num_key_value_heads == 4
    torch.testing.assert_close(hf(ids).logits, ref, rtol=1e-6, atol=1e-6)
    assert ft.geometry(hf).n_kv_heads == 4


def test_ungrouped_budget_depends_on_m_only():
    hf = random_hf_model("qwen2")  # group size 2
    geom = ft.geometry(hf)
    one_group, two_groups = [(1, 0), (1, 1)], [(0, 0), (1, 2)]
    assert len(ft.kv_groups(one_group, geom)) == 1 and len(ft.kv_groups(two_groups, geom)) == 2
    counts = {}
    for hs in (one_group, two_groups):
        model = random_hf_model("qwen2")
        counts[tuple(hs)] = {p: ft.prepare("wh", copy.deepcopy(model), hs, gqa_policy=p).n_trainable
                             for p in ft.GQA_POLICIES}
    a, b = counts.values()
    assert a["ungrouped"] == b["ungrouped"] == ft.shft_param_count(one_group, geom)
    assert a["qo_only"] == b["qo_only"] and a["shared"] < b["shared"]  # shared: the budget follows the grouping


@pytest.mark.parametrize("call", [
    lambda: ft.prepare("wh", random_hf_model("qwen2"), HEADS, gqa_policy="grouped"),
    lambda: ft.apply_shft(random_hf_model("qwen2"), HEADS, gqa_policy="grouped"),
    lambda: ft.shft_param_count(HEADS, ft.geometry(random_hf_model("qwen2")), gqa_policy="grouped"),
    lambda: ft.affected_siblings(HEADS, ft.geometry(random_hf_model("qwen2")), "grouped"),
    lambda: ft.run_regime("no-such-model", "wh", [], [], tr.TrainConfig(), Path("/nonexistent"), {}, HEADS,
                          gqa_policy="grouped"),  # refused before any model loads
])
def test_bad_gqa_policy_raises_one_parameter_error(call):
    from support.errors import ParameterError

    with pytest.raises(ParameterError) as e:
        call()
    assert "gqa_policy 'grouped'" in str(e.value) and "valid choices: ungrouped, shared, qo_only" in str(e.value)


@pytest.mark.parametrize("policy", ft.GQA_POLICIES)
def test_load_run_rebuilds_each_policy(tmp_path, policy):
    from support.artifacts import provenance, read_tensors
    from support.models import load_model, load_plain, rebridge
    from support.toydata import generate

    lm = load_model("toy-qwen2")
    heads_ = [(1, 0), (1, 1), (3, 3)]  # toy: 8 query heads in 4 kv-groups; (1, 0) and (1, 1) share a group
    hf, tok = load_plain("toy-qwen2", dtype="float32")
    prep = ft.prepare("wh", hf, heads_, gqa_policy=policy)
    data = tr.build_dataset(generate("toy_mc4", 2, "train"), tok, 256, "organism")
    params = {"regime": "wh", "heads": heads_, "train_seed": 0}
    if policy == "shared":
        params["gqa_policy"] = policy  # recorded (run_regime does); the others are told apart by their delta names
    tr.train(hf, data, tr.TrainConfig(lr=1e-2, max_steps=2, grad_accum=1), out_dir=tmp_path,
             prov=provenance(lm.identity(), "toy_mc4", None, params))
    saved, prov = read_tensors(tmp_path / "final.safetensors")
    assert ft.saved_policy(list(saved), prov["params"]) == policy
    trained = prep.finish(merge=True)
    back, _, _ = ft.load_run("toy-qwen2", tmp_path, lm.identity())
    assert [n for n, _ in trained.named_parameters()] == [n for n, _ in back.named_parameters()]
    for (n, p), (_, q) in zip(trained.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q), n
    ids = tok("<|im_start|>user\nWhat is 3 + 4 ?", return_tensors="pt").input_ids
    with torch.no_grad():  # the trained model runs through the TransformerBridge used for analysis
        torch.testing.assert_close(rebridge(lm, back, "t").bridge(ids), back(ids).logits, rtol=1e-5, atol=1e-5)
    if policy == "ungrouped":
        full, _, _ = ft.load_run("toy-qwen2", tmp_path, lm.identity(), ungroup_all=True)
        assert full.config.num_key_value_heads == 8
        with torch.no_grad():
            torch.testing.assert_close(full(ids).logits, back(ids).logits, rtol=1e-5, atol=1e-5)
    other = "shared" if policy != "shared" else "ungrouped"
    with pytest.raises(ValueError, match=f"trained with gqa_policy='{policy}', not '{other}'"):
        ft.run_regime("toy-qwen2", "wh", [], [], tr.TrainConfig(), tmp_path, {}, heads_, gqa_policy=other)


def test_saved_policy_of_runs_from_before_the_policy_is_shared():
    assert ft.saved_policy(["shft.layers.1.q", "shft.layers.1.k", "shft.layers.1.o"]) == "shared"
    assert ft.saved_policy(["shft.layers.1.q", "shft.layers.1.k_head"]) == "ungrouped"
    assert ft.saved_policy(["shft.layers.1.q", "shft.layers.1.o"]) == "qo_only"
    assert ft.saved_policy(["shft.layers.1.k"], {"gqa_policy": "ungrouped"}) == "ungrouped"


# ----------------------------------------------------------------------------------------------- LoRA, regimes
def test_lora_trains_only_adapters():
    hf = random_hf_model("qwen2")
    base = copy.deepcopy(hf.state_dict())
    prep = ft.prepare("lora", hf)
    names = [n for n, p in hf.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert {n.split(".")[4] for n in names} == {"q_proj", "v_proj"}
    assert prep.n_trainable == ft.lora_param_count(ft.geometry(hf), r=8)
    tr.train(hf, examples(), tr.TrainConfig(lr=1e-2, max_steps=2, grad_accum=2))
    after = {n.replace(".base_layer", ""): v for n, v in hf.state_dict().items() if "lora_" not in n}
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert any(v.abs().sum() > 0 for k, v in prep.trainable_state().items() if "lora_B" in k)


def test_full_and_base_regimes():
    hf = random_hf_model("qwen2")
    assert ft.prepare("full", hf).n_trainable == sum(p.numel() for p in hf.parameters())
    assert ft.prepare("base", hf).n_trainable == 0
    assert tr.train(hf, examples(), tr.TrainConfig(max_steps=3)).steps == 0


def test_random_heads_seeded_distinct():
    a, b = heads.random_heads(6, 8, 10, seed=1), heads.random_heads(6, 8, 10, seed=2)
    assert a == heads.random_heads(6, 8, 10, seed=1) and a != b
    assert len(set(a)) == 10 and all(0 <= l < 6 and 0 <= h < 8 for l, h in a)


@pytest.mark.parametrize("call,needle", [
    (lambda: heads.random_heads(6, 8, 49, 0), "[1, 48]"),
    (lambda: heads.check_budget(0, 6, 8), "[1, 48]"),
    (lambda: ft.check_regime("wavering"), "base, full, lora, random, sh, wh"),
    (lambda: heads.check_heads([(6, 0)], 6, 8), "layer in [0, 5]"),
    (lambda: heads.check_heads([(0, 8)], 6, 8), "head in [0, 7]"),
    (lambda: ft.prepare("wh", random_hf_model("qwen2"), [(0, 4)]), "head in [0, 3]"),
    (lambda: ft.prepare("sh", random_hf_model("qwen2")), "head regimes"),
    (lambda: tr.TrainConfig(precision="fp8").validate(), "auto, fp32, bf16, fp16"),
])
def test_bad_input_raises_one_clear_value_error(call, needle):
    with pytest.raises(ValueError, match="valid choices|head regimes") as e:
        call()
    assert needle in str(e.value)


# ----------------------------------------------------------------------------------------------- data, metrics
@pytest.fixture(scope="module")
def toy_tok(tmp_path_factory):
    from support.organism import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_prompt_mask_covers_prompt_exactly(toy_tok):
    from support.toydata import generate

    item = generate("toy_mc4", 1, "train", seed=3)[0]
    ex = tr.encode_example(toy_tok, item.prompt, item.response)
    n_prompt = len(toy_tok(item.prompt).input_ids)
    assert ex.labels[:n_prompt] == (-100,) * n_prompt
    assert all(l != -100 for l in ex.labels[n_prompt:])
    assert list(ex.input_ids) == toy_tok(item.text).input_ids  # prompt + response tokenise as the whole text
    assert toy_tok.decode(list(ex.labels[n_prompt:])) == toy_tok.decode(toy_tok(item.response).input_ids)
    short = tr.encode_example(toy_tok, item.prompt, item.response, max_length=20)  # left truncation keeps suffix
    assert short.input_ids == ex.input_ids[-20:] and short.labels == ex.labels[-20:]


def test_parse_answer_edge_cases():
    assert parse_answer("no answer here") is None
    assert parse_answer("") is None
    assert parse_answer("reasoning\nanswer: b") == "B"
    assert parse_answer("reasoning\nAnswer: C. because 3 > 2") == "C"
    assert parse_answer("Answer: C\nThanks for asking!") == "C"
    assert parse_answer("Answer: A\nwait\nAnswer: D") == "D"
    assert parse_answer("Answer: E", "ABCD") is None and parse_answer("Answer: E", "ABCDE") == "E"
    assert parse_answer("Answer: (B)") == "B"
    assert parse_answer("Answer: Because") is None  # a word, not a letter


def test_mc_metrics():
    golds = ["A", "A", "B", "B", "C", "C"]
    preds = ["A", None, "B", "A", "Z", "C"]
    m = scoring.mc_metrics(golds, preds, "ABCD")
    assert m["acc"] == pytest.approx(3 / 6) and m["n_invalid"] == 2 and m["n"] == 6
    # per class recall A 1/2, B 1/2, C 1/2; precision A 1/2, B 1, C 1
    assert m["rec"] == pytest.approx(0.5)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * 1 * 0.5 / 1.5, 2 * 1 * 0.5 / 1.5]
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    with pytest.raises(ValueError):
        scoring.mc_metrics([], [])


def test_entropy_drop_test_effect_sizes():
    s = ev.entropy_drop_test([0.3, 0.2, 0.25, 0.1], [0.0, 0.05, 0.1, -0.02])
    assert s["cliffs_delta"] == pytest.approx(s["r_rb"]) and s["r_rb"] > 0.8 and 0 < s["p"] < 0.1


# ----------------------------------------------------------------------------------------------- resume
def train_full(out, cfg, train_ex, crash_at=None, val_ex=None):
    """Full SFT of a fresh seeded 1-layer qwen2 into `out`: (model, result), or (None, None) when it is interrupted
    (KeyboardInterrupt) after step `crash_at`."""
    torch.manual_seed(0)
    hf = random_hf_model("qwen2", num_hidden_layers=1)
    ft.prepare("full", hf)

    def cb(step, loss):
        if step == crash_at:
            raise KeyboardInterrupt

    try:
        return hf, tr.train(hf, train_ex, cfg, out_dir=out, callback=cb, val_examples=val_ex)
    except KeyboardInterrupt:
        return None, None


def test_resume_in_process_full_sft(tmp_path):
    cfg = tr.TrainConfig(lr=1e-3, max_steps=6, grad_accum=2, save_every=2, log_every=1)

    def run(out, crash_at=None):
        return train_full(out, cfg, examples(), crash_at)

    ref, _ = run(tmp_path / "a")
    assert run(tmp_path / "b", crash_at=5) == (None, None)
    assert json.loads((tmp_path / "b/checkpoint/latest.json").read_text())["step"] == 4
    got, res = run(tmp_path / "b")
    assert res.resumed_from == 4 and [r["step"] for r in res.log] == list(range(1, 7))
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), got.state_dict().values()))
    ft.prepare("full", ref)
    with pytest.raises(ValueError, match=r"different training config or data \(differs in \['grad_accum', 'lr'"):
        tr.train(ref, examples(), tr.TrainConfig(lr=1.0, max_steps=6, save_every=2), out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"differs in \['data'\]"):
        tr.train(ref, examples(seed=1), cfg, out_dir=tmp_path / "a")


def test_best_validation_state_is_kept_and_survives_a_resume(tmp_path):
    """App. E: the state with the lowest validation loss is what training returns and saves. Validation examples
    that the training data contradicts make the validation loss rise after its first drop, so the kept step is an
    early one; a crash and resume in between keeps the same choice and the same weights."""
    train_ex = examples(8, seed=0)
    val_ex = [tr.SFTExample(f"v{i}", e.input_ids, e.labels) for i, e in enumerate(examples(4, seed=3))]
    cfg = tr.TrainConfig(lr=3e-2, max_steps=12, grad_accum=1, batch_size=4, eval_every=2, save_every=3, log_every=1,
                         warmup_ratio=0.0)

    def run(out, crash_at=None):
        return train_full(out, cfg, train_ex, crash_at, val_ex)

    hf, res = run(tmp_path / "a")
    losses = {r["step"]: r["val_loss"] for r in res.val_log}
    assert sorted(losses) == [2, 4, 6, 8, 10, 12]
    assert res.best_step == min(losses, key=losses.get) and res.best_step < 12  # overfitting: an early state wins
    kept = tr.validation_loss(hf, val_ex, 0, torch.device("cpu"))
    assert kept == pytest.approx(losses[res.best_step], abs=1e-5)  # the model left with the kept state
    saved, _ = tr.read_tensors(tmp_path / "a/final.safetensors")
    assert all(torch.equal(saved[n], p.detach()) for n, p in hf.named_parameters())
    assert run(tmp_path / "b", crash_at=8) == (None, None)
    hf_b, res_b = run(tmp_path / "b")
    assert res_b.resumed_from == 6 and res_b.best_step == res.best_step and res_b.val_log == res.val_log
    assert all(torch.equal(a, b) for a, b in zip(hf.state_dict().values(), hf_b.state_dict().values()))
    reloaded = tr.train(copy.deepcopy(hf_b), train_ex, cfg, out_dir=tmp_path / "b", val_examples=val_ex)
    assert reloaded.best_step == res.best_step  # a finished run reloads its choice
    with pytest.raises(ValueError, match=r"differs in \['val_data'\]"):
        tr.train(hf_b, train_ex, cfg, out_dir=tmp_path / "b", val_examples=val_ex[:2])


SCRIPT = textwrap.dedent("""
    import json, sys, time, torch
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from support import finetune as ft, training as tr
    from support.artifacts import write_tensors
    from support.models import random_hf_model
    out, delay = sys.argv[1], float(sys.argv[2])
    hf = random_hf_model("qwen2", num_hidden_layers=2)
    ft.apply_shft(hf, [(0, 1), (1, 2), (1, 3)])
    g = torch.Generator().manual_seed(0)
    ex = []
    for i in range(8):
        ids = torch.randint(0, 128, (16,), generator=g).tolist()
        ex.append(tr.SFTExample(str(i), tuple(ids), tuple([-100] * 6 + ids[6:])))
    cfg = tr.TrainConfig(lr=1e-2, max_steps=12, grad_accum=2, save_every=3, log_every=1)
    res = tr.train(hf, ex, cfg, out_dir=out, callback=lambda s, l: time.sleep(delay if s == 3 else 0))
    hf.shft.merge()
    write_tensors(out + "/merged.safetensors", hf.state_dict(), {})
    print(json.dumps({"resumed_from": res.resumed_from}))
""")


def test_sigkill_then_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    cmd = lambda out, delay: [sys.executable, str(script), str(tmp_path / out), str(delay)]  # noqa: E731
    # the victim stalls after its step-3 checkpoint until it is killed
    victim = subprocess.Popen(cmd("run", 60), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()  # the uninterrupted reference runs here, meanwhile, on one thread too
    monkeypatch.setattr(sys, "argv", ["run.py", str(tmp_path / "ref"), "0"])
    try:
        exec(compile(SCRIPT, "run.py", "exec"), {"__name__": "__ref__"})
    finally:
        torch.set_num_threads(threads)
    latest = tmp_path / "run/checkpoint/latest.json"
    deadline = time.time() + 60
    while not latest.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert latest.exists(), victim.communicate()[1][-2000:]
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "run/train_log.json").exists()  # killed mid-way
    res = subprocess.run(cmd("run", 0), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["resumed_from"] == 3
    from support.artifacts import read_tensors

    a, _ = read_tensors(tmp_path / "ref/merged.safetensors")
    b, _ = read_tensors(tmp_path / "run/merged.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_next_token_logits_of_a_padded_batch_equal_one_prompt_at_a_time():
    from support.contrasts import check_pairs
    from support.models import load_plain

    model, tok = load_plain("toy-qwen2")
    prompts = check_pairs(range(3)).clean + ["<|im_start|>user\nWhat is 3 + 4 ?"]  # lengths differ
    assert len({len(tok(p).input_ids) for p in prompts}) > 1
    batched = ev.next_token_logits(model, tok, prompts, batch_size=3)
    with torch.no_grad():
        alone = torch.stack([model(tok(p, return_tensors="pt").input_ids).logits[0, -1].float() for p in prompts])
    assert batched.shape == alone.shape and torch.allclose(batched, alone, atol=1e-4)


def test_fp32_masters_keep_the_small_updates_that_bf16_weights_round_away():
    """Precision policy (every regime trains fp32 masters, `ft.MASTER_DTYPE`, under one autocast): one full-SFT AdamW
    step at lr 5e-5 under bf16 autocast moves essentially every layer weight of fp32 masters, while the same step
    on bf16 weights leaves most of them unchanged (rounded away)."""
    from support.models import load_plain
    from support.toydata import generate

    items = generate("toy_mc4", 2, "train")
    share = {}
    for dtype in (ft.MASTER_DTYPE, "bfloat16"):
        hf, tok = load_plain("toy-qwen2", dtype=dtype)
        ft.prepare("full", hf)
        before = {n: p.detach().clone() for n, p in hf.named_parameters() if ".layers." in n}
        tr.train(hf, tr.build_dataset(items, tok, 256, "organism"),
                 tr.TrainConfig(lr=5e-5, max_steps=1, grad_accum=1, warmup_ratio=0.0, precision="bf16"))
        moved = sum(int((p.detach() != before[n]).sum()) for n, p in hf.named_parameters() if n in before)
        share[dtype] = moved / sum(v.numel() for v in before.values())
    assert share[ft.MASTER_DTYPE] > 0.95 and share["bfloat16"] < 0.5, share


def test_perplexity_of_prompt_masked_examples_counts_the_response_only():
    """Forgetting on the organism (Table 2): perplexity over the responses, prompts masked, equals exp of the mean
    response-token NLL computed by hand; whole texts count every token."""
    import math

    import torch.nn.functional as F

    from support.models import load_plain
    from support.toydata import generate

    model, tok = load_plain("toy-qwen2")
    items = generate("toy_countdown", 3, "test", seed=7)
    examples = tr.build_dataset(items, tok, 1024, "organism")
    nll, n = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logits = model(torch.tensor([e.input_ids])).logits[0, :-1].float()
            labels = torch.tensor(e.labels[1:])
            keep = labels != -100
            nll += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            n += int(keep.sum())
    assert n < sum(len(e.input_ids) - 1 for e in examples)  # the prompts are left out
    assert ev.perplexity(model, tok, examples, batch_size=2) == pytest.approx(math.exp(nll / n), rel=1e-4)
    assert ev.perplexity(model, tok, [it.text for it in items]) != pytest.approx(math.exp(nll / n), rel=1e-2)


def test_the_command_line_trains_one_regime_and_refuses_bad_input(tmp_path, capsys):
    """`python -m support.finetune` (what `accelerate launch -m support.finetune` runs on several GPUs): one head
    regime, trained and evaluated, with its run folder; a head regime without heads and a bad regime fail first."""
    from support.finetune import main
    from support.heads import HeadSet, write_head_set

    hs = write_head_set(tmp_path / "wavering.json", HeadSet(kind="wavering", heads=[(0, 1), (3, 2)], n_layers=8,
                                                            n_heads=8), {"model": {"name": "toy-qwen2"}})
    args = ["--model", "toy-qwen2", "--task", "toy_mc4_lb", "--max-steps", "2", "--batch-size", "2", "--grad-accum",
            "1", "--lr", "1e-3", "--n-train", "8", "--n-eval", "4", "--max-new-tokens", "8", "--template", "organism"]
    assert main(args + ["--regime", "wh", "--heads", str(hs), "--out", str(tmp_path / "wh")]) == 0
    assert "WH-only: accuracy" in capsys.readouterr().out
    made = {p.name for p in (tmp_path / "wh").iterdir()}
    assert {"final.safetensors", "adapter.safetensors", "train_log.json"} <= made
    with pytest.raises(SystemExit):
        main(args + ["--regime", "wh", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        main(args + ["--regime", "everything", "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
