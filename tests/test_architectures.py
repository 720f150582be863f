"""Every chapter's core on the architectures the real profiles use (issue 15), on tiny random-weight models.

One family per real profile, each built offline from a config, saved with a word-level tokenizer to a local model
directory and loaded through the real path `support.models.load_model(<dir>)` (the TransformerBridge):

- ``qwen2``: GQA (4 query heads on 2 K/V heads) with q/k/v biases (Qwen2.5, R1-distill);
- ``qwen3``: GQA with q/k norms, no q/k/v biases (Qwen3);
- ``llama3``: Llama with GQA;
- ``llama2``: Llama without GQA (as many K/V heads as query heads; Llama-2-7b-chat).

Per architecture: tracing and head selection (chapters 01-02), SHFT under every GQA policy and LoRA (chapter 04),
EAP-IG (chapter 03), rhythm metrics and one attention-credit GRPO step (chapter 05), and head ablation/scaling inside
generation (chapter 06), each checked for shapes, finiteness and one property that only holds when it works.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from support import circuits as C
from support import decoding as D
from support import finetune as ft
from support import interventions as iv
from support import readout as R
from support import rhythm, selection
from support import tracing as T
from support import training as tr
from support.models import LoadedModel, load_model, load_plain, random_hf_model, rebridge

WORDS = ["<pad>", "<unk>", "<eos>"] + [str(i) for i in range(100)] + list("ABCDE") + ["Answer:", "+", "="]
#: name -> (random_hf_model architecture, config overrides, has q/k/v bias, has q/k norm)
ARCHS = {
    "qwen2": ("qwen2", dict(num_key_value_heads=2), True, False),
    "qwen3": ("qwen3", dict(num_key_value_heads=2), False, True),
    "llama3": ("llama", dict(num_key_value_heads=2), False, False),
    "llama2": ("llama", dict(num_key_value_heads=4), False, False),
}
PROMPTS = ["1 2 3 + 4 = 5 A B", "7 + 8 = 15 C D Answer:", "9 9 = A E 12 +"]
SHORT = D.DecodeConfig(max_new_tokens=6)
HEADS = [(0, 1), (1, 2), (1, 3)]  # under GQA (group size 2): (1, 2) and (1, 3) share a K/V group, (0, 1) does not


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def save_arch(root: Path, name: str) -> Path:
    """A tiny random model of `name` plus the word-level tokenizer, saved as a local HF model directory.

    Weights are drawn with std 0.2 (not HF's 0.02) so head readouts spread over [0, log K] instead of all sitting
    at log K, and attributions and interventions are far from zero."""
    arch, overrides, _, _ = ARCHS[name]
    model = random_hf_model(arch, vocab_size=128, initializer_range=0.2, **overrides)
    d = root / f"tiny-{name}"
    model.save_pretrained(d)
    word_tokenizer().save_pretrained(d / "tokenizer")
    return d


@dataclass
class Arch:
    name: str
    dir: Path
    lm: LoadedModel
    bias: bool
    qk_norm: bool


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request, tmp_path_factory) -> Arch:
    torch.set_num_threads(1)
    name = request.param
    d = save_arch(tmp_path_factory.mktemp(name), name)
    lm = load_model(str(d), device="cpu")
    _, overrides, bias, qk_norm = ARCHS[name]
    assert lm.kind == "local" and (lm.n_heads, lm.n_kv_heads) == (4, overrides["num_key_value_heads"])
    return Arch(name, d, lm, bias, qk_norm)


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(prev)


def test_the_family_is_what_it_claims(arch):
    """The config really has the family's features, and the bridge computes the HF model's logits."""
    hf = arch.lm.hf_model
    attn = hf.model.layers[0].self_attn
    assert (attn.q_proj.bias is not None) is arch.bias and (attn.k_proj.bias is not None) is arch.bias
    assert hasattr(attn, "q_norm") is arch.qk_norm and hasattr(attn, "k_norm") is arch.qk_norm
    assert type(hf).__name__.lower().startswith(ARCHS[arch.name][0])
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(arch.lm.bridge(ids), hf(ids).logits, atol=1e-4)


# ----------------------------------------------------------------------------------------------- 1. tracing
def test_tracing_and_selection(arch):
    lm = arch.lm
    traces = [T.trace(lm, p, "A-D", decode=SHORT, id=str(i)) for i, p in enumerate(PROMPTS)]
    L, H = lm.n_layers, lm.n_heads
    for p, t in zip(PROMPTS, traces):
        assert t.entropy.shape == (t.T, L, H) and t.logits.shape == (t.T, L, H, 4) and 1 <= t.T <= 6
        assert torch.isfinite(t.logits).all() and torch.isfinite(t.final_logits).all()
        assert (t.entropy >= -1e-6).all() and (t.entropy <= math.log(4) + 1e-5).all()
        assert torch.allclose(t.entropy, R.entropy(t.logits), atol=1e-6)
        assert t.tokens == T.plain_decode(lm, p, SHORT).tokens  # tracing cannot change the generated tokens
    assert max(float(t.entropy.std()) for t in traces) > 0.05  # the readout is not flat on these weights

    M = 3
    ent = [t.entropy for t in traces]
    sets = selection.head_sets(ent, M=M, seed=0)
    assert {k: len(s.heads) for k, s in sets.items()} == {"wavering": M, "steadfast": M, "random": M}
    assert all((s.n_layers, s.n_heads) == (L, H) for s in sets.values())
    assert all(0 <= l < L and 0 <= h < H for s in sets.values() for l, h in s.heads)
    # 6 steps < c = 10: no head is ever a candidate, so both sets are ranked by mean raw entropy alone
    assert sets["wavering"].F == [0.0] * M == sets["steadfast"].F
    mbar = selection.mean_entropy(ent).mean(0)
    order = sorted(((l, h) for l in range(L) for h in range(H)), key=lambda x: (mbar[x], x))
    assert set(sets["steadfast"].heads) == set(order[:M]) and set(sets["wavering"].heads) == set(order[-M:])
    assert not set(sets["wavering"].heads) & set(sets["steadfast"].heads)


# ----------------------------------------------------------------------------------------------- 2. SHFT, LoRA
def examples(n: int = 4, length: int = 10, prompt: int = 4) -> list[tr.SFTExample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(3, len(WORDS), (length,), generator=g).tolist()
        out.append(tr.SFTExample(str(i), tuple(ids), tuple([-100] * prompt + ids[prompt:])))
    return out


ONE_STEP = tr.TrainConfig(lr=1e-2, max_steps=1, grad_accum=1, batch_size=2, warmup_ratio=0.0)


def changed_blocks(w0: torch.Tensor, w1: torch.Tensor, dim: int, d_head: int) -> set[int]:
    """Head blocks (of d_head rows, or columns when dim = 1) in which anything changed."""
    diff = (w0 != w1)
    if diff.ndim == 2:
        diff = diff.any(1 - dim)
    return {int(i) // d_head for i in diff.nonzero().flatten()}


@pytest.mark.parametrize("policy", ft.GQA_POLICIES)
def test_shft_step_moves_only_what_the_policy_reports(arch, policy):
    hf, _ = load_plain(str(arch.dir), device="cpu", dtype=ft.MASTER_DTYPE)
    geom = ft.geometry(hf)
    gs = geom.group_size
    prep = ft.prepare("wh", hf, HEADS, gqa_policy=policy)
    assert prep.n_trainable == ft.shft_param_count(HEADS, geom, gqa_policy=policy) == tr.count_trainable(hf)
    assert prep.siblings == ft.affected_siblings(HEADS, geom, policy)
    if policy == "shared" and gs > 1:
        assert prep.siblings == [(0, 0)]  # (0, 1)'s group partner; (1, 2) and (1, 3) fill their group
    else:
        assert prep.siblings == []
    before = {k: v.clone() for k, v in hf.state_dict().items() if not k.startswith("shft.")}
    res = tr.train(hf, examples(), ONE_STEP)
    assert res.steps == 1 and math.isfinite(res.final_loss)
    siblings = prep.siblings  # read before `finish`, which drops them (test_prepared_reports_policy_after_finish)
    prep.finish(merge=True)
    after = hf.state_dict()
    assert after.keys() == before.keys()
    dh = geom.d_head
    for layer in range(geom.n_layers):
        sel = {h for l, h in HEADS if l == layer}
        sib = {h for l, h in siblings if l == layer}
        attn = hf.model.layers[layer].self_attn
        kv_units = attn.k_proj.weight.shape[0] // dh  # H once ungrouped, else G
        kv = {"ungrouped": sel, "shared": {h // gs for h in sel}, "qo_only": set()}[policy]
        if policy == "shared":  # the query heads reading the trained K/V rows: the selected heads and their siblings
            assert {g * gs + i for g in kv for i in range(gs)} == sel | sib
        if policy == "ungrouped" and sel:
            assert kv_units == geom.n_heads  # the layer was ungrouped: every query head has its own K/V rows
        want = {"q_proj": sel, "k_proj": kv, "v_proj": kv, "o_proj": sel}
        for proj, blocks in want.items():
            key = f"model.layers.{layer}.self_attn.{proj}"
            dim = 1 if proj == "o_proj" else 0
            assert changed_blocks(before[f"{key}.weight"], after[f"{key}.weight"], dim, dh) == blocks, (key, policy)
            if f"{key}.bias" in before:  # the K bias gets no gradient (softmax is shift-invariant): a subset
                assert changed_blocks(before[f"{key}.bias"], after[f"{key}.bias"], 0, dh) <= blocks, (key, policy)
    for k in before:
        if ".self_attn." not in k or not any(p in k for p in ft.PROJ):
            assert torch.equal(before[k], after[k]), k  # norms, MLPs, embeddings, unembedding untouched


def test_prepared_reports_policy_after_finish():
    """`finish()` merges and drops the SHFT module (fp32 masters); `run_regime` builds its row after it, so the
    policy and siblings must outlive the module (they read None and [] once, in chapter 04's table)."""
    hf = random_hf_model("qwen2")
    prep = ft.prepare("wh", hf, HEADS, gqa_policy="shared")
    siblings = prep.siblings
    assert siblings == [(0, 0)]
    prep.finish()  # fp32 weights: merges, as in run_regime
    assert (prep.gqa_policy, prep.siblings) == ("shared", siblings)


def test_lora_step_changes_only_adapters_and_bridges(arch):
    hf, _ = load_plain(str(arch.dir), device="cpu", dtype=ft.MASTER_DTYPE)
    geom = ft.geometry(hf)
    base = copy.deepcopy(hf.state_dict())
    prep = ft.prepare("lora", hf)
    names = [n for n, p in hf.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert prep.n_trainable == ft.lora_param_count(geom, r=8)
    tr.train(hf, examples(), ONE_STEP)
    after = {n.replace(".base_layer", ""): v for n, v in hf.state_dict().items() if "lora_" not in n}
    assert after.keys() == base.keys() and all(torch.equal(base[k], after[k]) for k in base)
    assert all(v.abs().sum() > 0 for k, v in prep.trainable_state().items() if "lora_B" in k)
    model = prep.finish()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        ref = model(ids).logits
        lm = rebridge(arch.lm, model, "lora")  # the adapted model through the TransformerBridge
        assert torch.allclose(lm.bridge(ids), ref, atol=1e-4)
        assert not torch.allclose(ref, arch.lm.hf_model(ids).logits, atol=1e-4)  # the adapters act


# ----------------------------------------------------------------------------------------------- 3. EAP-IG
def test_eap_ig_scores_edges(arch):
    lm = arch.lm
    clean = [[5, 6, 7, 8, 9, 10], [20, 21, 22, 23, 24, 25]]
    corrupted = [[5, 16, 7, 18, 9, 10], [20, 31, 22, 33, 24, 25]]
    g = C.attribute(lm, clean, corrupted, [(11, 12), (11, 12)], metric="logit_diff", m=4)
    G = lm.n_kv_heads
    assert (g.n_layers, g.n_heads, g.n_kv_heads) == (lm.n_layers, lm.n_heads, G)
    assert g.scores.shape == (1 + 2 * 5, 2 * (4 + 2 * G + 1) + 1) and g.meta["method"] == "EAP-IG"
    assert torch.isfinite(g.scores).all()
    assert (g.scores[~g.edge_mask] == 0).all() and (g.scores[g.edge_mask] != 0).sum() > g.n_edges // 2
    # the input's edges carry the whole path integral: ∂L/∂z_emb is the sum over every receiver's input gradient,
    # which holds only when each receiver input is exactly the sum of its senders on this architecture's bridge
    total = g.scores[0].sum().item()
    assert total == pytest.approx(g.meta["input_attribution"], rel=1e-4, abs=1e-7)
    assert math.isfinite(g.meta["metric_clean"]) and g.meta["metric_clean"] != g.meta["metric_corrupted"]


# ----------------------------------------------------------------------------------------------- 4. rhythm, RL
def test_rhythm_metrics(arch):
    lm = arch.lm
    prompt, response = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]
    r = rhythm.analyse(lm, prompt, response, window=3)
    n = len(response)
    assert r.start == len(prompt) and len(r.response_tokens) == n
    assert r.waad.shape == r.fai.shape == r.entropy.shape == (n,) and r.head_fai.shape == (lm.n_layers, 4, n)
    assert r.span.shape == (lm.n_layers, 4) and (r.span >= 0).all()
    assert (r.waad >= 0).all() and (r.waad <= 3 + 1e-5).all() and (r.entropy >= 0).all()  # WAAD ≤ the window W
    assert (r.fai[:-1] >= 0).all() and math.isnan(r.fai[-1])  # FAI undefined only at the last token (H_lo = 1)
    # the batched RL path (plain HF model, eager maps) gives the same signals as the bridge
    ids = torch.tensor([prompt + response])
    resp = torch.tensor([[0] * len(prompt) + [1] * n])
    sig = rhythm.token_signals(lm.hf_model, ids, torch.ones_like(ids), resp, layers=list(range(lm.n_layers)),
                               window=3)
    for k in ("waad", "fai", "entropy"):
        got, want = sig[k][0, len(prompt):].numpy(), getattr(r, k)
        assert got.shape == want.shape and torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5,
                                                          equal_nan=True), k
        assert torch.isnan(sig[k][0, :len(prompt)]).all()


def varied_reward(prompts, completions, **kw):
    """Deterministic and different between completions, so advantages are non-zero."""
    return [float(len(c.split()) % 3) for c in completions]


def test_credit_grpo_step(arch, tmp_path):
    from datasets import Dataset

    from support.rl import CreditConfig, CreditGRPOTrainer, grpo_config, policy

    model, tok = policy(str(arch.dir), device="cpu")
    ds = Dataset.from_list([{"prompt": f"{a} + {b} = Answer:"} for a, b in [(3, 4), (5, 6), (7, 8), (9, 10)]])
    args = grpo_config(tmp_path, max_steps=1, prompts_per_step=2, num_generations=4, max_completion_length=10,
                       logging_steps=1, seed=0)
    t = CreditGRPOTrainer(model=model, reward_funcs=varied_reward, args=args, train_dataset=ds, processing_class=tok,
                          credit=CreditConfig(strategy="coupled", window=3, h_lo=1, h_hi=4, n_layers=2))
    seen = []
    compute = t._compute_loss
    t._compute_loss = lambda m, inputs: (seen.append(inputs["advantages"]), compute(m, inputs))[1]
    before = [p.detach().clone() for p in t.model.parameters()]
    t.train()
    assert len(seen) == 1 and seen[0].dim() == 2 and seen[0].shape[0] == 8  # (B, T) shaped advantages
    assert torch.isfinite(seen[0]).all()
    log = next(r for r in t.state.log_history if "credit/gamma_mean" in r)
    assert log["credit/gamma_mean"] > 1.0 and 0.0 < log["credit/frac_amplified"] < 1.0  # coupled credit amplified
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


# ----------------------------------------------------------------------------------------------- 5. interventions
def greedy_logits(lm, prompt: str, steps: int = 6) -> tuple[list[int], torch.Tensor]:
    rows = []
    dec = D.greedy_decode(lm, D.encode_prompt(lm, prompt), D.DecodeConfig(max_new_tokens=steps),
                          on_step=lambda t, logits: rows.append(logits.detach().clone()))
    return dec.tokens, torch.stack(rows)


def test_ablation_and_scaling_inside_generation(arch):
    lm = arch.lm
    prompt = PROMPTS[0]
    toks, logits = greedy_logits(lm, prompt)
    last = [(lm.n_layers - 1, h) for h in range(lm.n_heads)]
    with iv.intervene(lm, iv.Scale([(l, h) for l in range(lm.n_layers) for h in range(lm.n_heads)], 1.0)) as s:
        assert s.kind == "hook_z"
        same_toks, same = greedy_logits(lm, prompt)
    assert same_toks == toks and torch.equal(same, logits)  # scaling by 1 is the identity, bit for bit
    with iv.intervene(lm, iv.Ablate([(1, 2)])):
        abl_toks, abl = greedy_logits(lm, prompt)
    n = min(len(abl), len(logits))
    assert torch.isfinite(abl).all() and (abl_toks != toks or (abl[:n] - logits[:n]).abs().max() > 1e-4)
    assert (abl[0] - logits[0]).abs().max() > 1e-4  # the first step already reads the ablated head
    with iv.intervene(lm, iv.Ablate(last)):  # the whole last layer's attention off: a different continuation
        off_toks, off = greedy_logits(lm, prompt)
    assert not torch.allclose(off[0], logits[0], atol=1e-3)
    # batched HF generation (support.decoding.generate_ids) sees the same intervention
    with iv.intervene(lm, iv.Ablate(last)):
        gen = D.generate_ids(lm.hf_model, lm.tokenizer, [prompt], max_new_tokens=6)[0][1]
    assert off_toks != toks and gen == [t for t in off_toks if t != lm.tokenizer.eos_token_id][:len(gen)]
    assert len(gen) == len(off_toks) or lm.tokenizer.eos_token_id in off_toks
    assert greedy_logits(lm, prompt)[0] == toks  # every hook is gone after the context
