"""support.interventions: head ablation/scaling on the bridge and the plain HF model, in teacher forcing and in
KV-cached generation; pass@k / success@k; head-set overlap against its permutation null."""

from __future__ import annotations

import copy
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from support import interventions as iv
from support.decoding import DecodeConfig, encode_prompt, generate_ids, greedy_decode
from support.errors import ParameterError
from support.heads import HeadSet

LAYER2 = [(2, h) for h in range(8)]  # every head of the organism's layer 2 (8 layers x 8 query heads, 4 K/V heads)


@pytest.fixture(scope="module")
def pair():
    """(bridged LoadedModel, an unbridged copy of the same weights): a tiny random Qwen2 (GQA: 4 heads on 2 K/V)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from support.models import LoadedModel, bridge, random_hf_model

    words = ["<pad>", "<unk>", "<eos>"] + [str(i) for i in range(125)]
    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    hf = random_hf_model("qwen2")
    plain = copy.deepcopy(hf)
    return LoadedModel("tiny", bridge(hf, tok, "tiny-qwen2"), hf, tok, "local"), plain


@pytest.fixture(scope="module")
def prompt_ids(toy):
    from support.toydata import generate

    return encode_prompt(toy, generate("toy_mc4", 1, "test", 0)[0].prompt)


def n_hooks(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.hf_model.modules())


IDS = torch.tensor([[5, 17, 3, 99, 42, 8, 64, 1, 23, 77]])


# ----------------------------------------------------------------------------------------------- where hooks sit
def test_hook_z_is_the_pre_wo_head_output_and_sites_follow_the_model(toy, pair):
    lm, plain = pair
    assert "blocks.2.attn.hook_z" in toy.bridge.hook_dict
    _, cache = toy.bridge.run_with_cache(IDS, names_filter=lambda n: n.endswith("attn.hook_z"))
    assert tuple(cache["blocks.2.attn.hook_z"].shape) == (1, IDS.shape[1], 8, 16)  # [B, T, H, d_head]
    s = iv.hook_sites(toy)
    assert (s.kind, s.n_layers, s.n_heads, s.d_head) == ("hook_z", toy.n_layers, 8, 16)
    assert s.modules[2] is toy.bridge.hook_dict["blocks.2.attn.hook_z"]
    assert iv.hook_sites(toy.bridge).modules == s.modules == iv.hook_sites(toy.hf_model).modules
    p = iv.hook_sites(plain)
    assert p.kind == "o_proj" and p.modules[1] is plain.model.layers[1].self_attn.o_proj and p.n_heads == 4


# ----------------------------------------------------------------------------------------------- equivalences
def test_ablating_every_head_of_a_layer_zeroes_that_layers_attention_output(toy, pair):
    def zero(x, hook):
        return torch.zeros_like(x)

    ref = toy.bridge.run_with_hooks(IDS, fwd_hooks=[("blocks.2.attn.hook_out", zero)])
    with iv.intervene(toy, iv.Ablate(LAYER2)):
        got = toy.bridge(IDS)
    assert torch.equal(got, ref) and not torch.equal(got, toy.bridge(IDS))
    # plain HF: zeroing o_proj's input per head == zeroing o_proj's output (Qwen2's o_proj has no bias)
    _, plain = pair
    h = plain.model.layers[1].self_attn.o_proj.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        ref = plain(IDS).logits
    finally:
        h.remove()
    with iv.intervene(plain, iv.Ablate([(1, h) for h in range(4)])):
        assert torch.equal(plain(IDS).logits, ref)


def test_scaling_by_one_is_the_identity(toy, pair):
    heads = [(l, h) for l in range(6) for h in range(8)]
    clean, clean_hf = toy.bridge(IDS), toy.hf_model(IDS).logits
    with iv.intervene(toy, iv.Scale(heads, 1.0)):
        assert torch.equal(toy.bridge(IDS), clean) and torch.equal(toy.hf_model(IDS).logits, clean_hf)
    _, plain = pair
    clean = plain(IDS).logits
    with iv.intervene(plain, iv.Scale([(0, 0), (1, 3)], 1)):
        assert torch.equal(plain(IDS).logits, clean)


def test_the_same_intervention_is_identical_on_the_bridge_and_the_plain_hf_model(pair):
    lm, plain = pair
    ids = IDS % 128
    means = iv.head_means(plain, [[3, 4, 5, 6], [7, 8, 9]], [(1, 2)])
    assert all(torch.allclose(means[h], m) for h, m in iv.head_means(lm, [[3, 4, 5, 6], [7, 8, 9]], [(1, 2)]).items())
    ops = [iv.Ablate(["L0H1"]), iv.Scale([(1, 0), (0, 3)], 1.3), iv.MeanAblate([(1, 2)], means=means)]
    with iv.intervene(lm, ops) as a, iv.intervene(plain, ops) as b:
        assert (a.kind, b.kind) == ("hook_z", "o_proj")
        bridged, hf_path, ref = lm.bridge(ids), lm.hf_model(ids).logits, plain(ids).logits
    assert torch.allclose(bridged, ref, atol=1e-5) and torch.allclose(hf_path, ref, atol=1e-5)
    assert (ref - plain(ids).logits).abs().max() > 1e-3  # it did something


def test_run_with_cache_keeps_the_intervention_and_caches_the_intervened_z(toy):
    name = "blocks.3.attn.hook_z"
    _, clean = toy.bridge.run_with_cache(IDS, names_filter=name)
    with iv.intervene(toy, [iv.Ablate(["L3H1"]), iv.Scale(["L3H5"], 1.3)]):
        for _ in range(2):  # TransformerLens resets its own hooks after each call; ours stay
            _, cache = toy.bridge.run_with_cache(IDS, names_filter=name)
            z, z0 = cache[name][0], clean[name][0]
            assert torch.equal(z[:, 1], torch.zeros_like(z[:, 1]))
            assert torch.allclose(z[:, 5], 1.3 * z0[:, 5]) and torch.equal(z[:, 0], z0[:, 0])


# ----------------------------------------------------------------------------------------------- generation
def test_generation_under_an_intervention_matches_teacher_forcing(toy, prompt_ids):
    ops = [iv.Ablate(LAYER2)]
    cfg = DecodeConfig(max_new_tokens=200)  # think-on chains of thought run to ~110 tokens
    plain = greedy_decode(toy, prompt_ids, cfg).tokens
    with iv.intervene(toy, ops):
        gen = greedy_decode(toy, prompt_ids, cfg)  # KV cache, HF modules, per-head results off
        full = torch.cat([prompt_ids, torch.tensor([gen.tokens])], 1)
        logits = toy.bridge(full)[0]  # teacher forcing on the bridge, per-head results on
        hf_gen = generate_ids(toy.hf_model, toy.tokenizer, [toy.tokenizer.decode(prompt_ids[0])], 200)[0][1]
    p = prompt_ids.shape[1]
    assert gen.stop_reason == "eos"
    assert logits[p - 1:-1].argmax(-1).tolist() == gen.tokens  # every step reproduces the generated token
    assert hf_gen == gen.tokens[:-1]  # HF generate (batched path, EOS cut) under the same hooks agrees
    assert gen.tokens != plain and sum(a != b for a, b in zip(gen.tokens, plain)) >= 1
    assert greedy_decode(toy, prompt_ids, cfg).tokens == plain  # hooks gone after the context


def test_sample_responses_and_correctness_give_coverage_curves(toy):
    from support.toydata import generate

    items = generate("toy_mc4", 2, "test", 1)
    kw = dict(n=3, max_new_tokens=6, seed=3)
    a = iv.sample_responses(toy, [it.prompt for it in items], **kw)
    assert len(a) == 2 and all(len(r) == 3 for r in a)
    assert a == iv.sample_responses(toy, [it.prompt for it in items], **kw)  # seeded
    ok = iv.correctness(items, a)
    assert ok.shape == (2, 3) and ok.dtype == bool and not ok.any()  # 6 tokens never reach "Answer:"
    assert iv.correctness(items, a, scorer=lambda it, r: len(r) > 0).all()
    df = iv.coverage({"plain": ok, "all": np.ones((2, 3), bool)})
    assert list(df.columns) == ["condition", "k", "pass_at_k", "success_at_k"]
    assert df.k.tolist() == [1, 2, 3, 1, 2, 3] and df.pass_at_k.tolist() == [0, 0, 0, 1, 1, 1]


# ----------------------------------------------------------------------------------------------- mean ablation
def test_mean_ablation_uses_the_reference_mean_over_non_padding_tokens(toy):
    ref = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    means = iv.head_means(toy, ref, ["L4H6", (0, 1)], batch_size=2)  # padded batches
    _, cache = toy.bridge.run_with_cache(torch.tensor([ref[0]]), names_filter="blocks.4.attn.hook_z")
    zs = [toy.bridge.run_with_cache(torch.tensor([r]), names_filter="blocks.4.attn.hook_z")[1]
          ["blocks.4.attn.hook_z"][0, :, 6] for r in ref]
    assert torch.allclose(means[(4, 6)], torch.cat(zs).mean(0), atol=1e-6)  # every token weighs the same
    assert set(iv.head_means(toy, ref)) == {(l, h) for l in range(toy.n_layers) for h in range(8)}
    with iv.intervene(toy, iv.MeanAblate.fit(toy, ["L4H6"], ref)):
        _, cache = toy.bridge.run_with_cache(IDS, names_filter="blocks.4.attn.hook_z")
    z = cache["blocks.4.attn.hook_z"][0, :, 6]
    assert torch.allclose(z, means[(4, 6)].expand_as(z), atol=1e-6)


# ----------------------------------------------------------------------------------------------- composition, cleanup
def test_interventions_compose_in_order(toy):
    name = "blocks.1.attn.hook_z"
    mu = {(1, 2): torch.full((16,), 0.25)}

    def z_under(ops):
        with iv.intervene(toy, ops):
            return toy.bridge.run_with_cache(IDS, names_filter=name)[1][name][0, :, 2]

    z0 = z_under([])
    assert torch.allclose(z_under([iv.Scale([(1, 2)], 2.0), iv.MeanAblate([(1, 2)], means=mu)]),
                          torch.full_like(z0, 0.25))
    assert torch.allclose(z_under([iv.MeanAblate([(1, 2)], means=mu), iv.Scale([(1, 2)], 2.0)]),
                          torch.full_like(z0, 0.5))
    assert torch.equal(z_under([iv.Ablate([(1, 2)]), iv.Scale([(1, 2)], 1.3)]), torch.zeros_like(z0))
    assert torch.allclose(z_under([iv.Scale([(1, 2)], 0.5), iv.Scale([(1, 2)], 3.0)]), 1.5 * z0)
    with iv.intervene(toy, iv.Scale([(1, 2)], 0.5)), iv.intervene(toy, iv.Scale([(1, 2)], 3.0)):  # nested contexts
        assert torch.allclose(toy.bridge.run_with_cache(IDS, names_filter=name)[1][name][0, :, 2], 1.5 * z0)


def test_leaving_the_context_removes_every_hook_even_on_an_exception(toy):
    before, clean = n_hooks(toy), toy.bridge(IDS)
    ops = [iv.Ablate(LAYER2), iv.Scale(["L0H0", "L5H7"], 0.5)]
    with iv.intervene(toy, ops):
        assert n_hooks(toy) == before + 3  # one hook per touched layer
    assert n_hooks(toy) == before
    with pytest.raises(RuntimeError, match="boom"):
        with iv.intervene(toy, ops):
            raise RuntimeError("boom")
    assert n_hooks(toy) == before and torch.equal(toy.bridge(IDS), clean)


# ----------------------------------------------------------------------------------------------- pass@k, success@k
def test_pass_at_k_equals_enumeration_over_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            correct = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(correct, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert iv.pass_at_k(n, [c], k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert iv.pass_at_k([4, 6], [1, 0], 2) == pytest.approx((0.5 + 0.0) / 2)  # averaged over problems


def test_pass_at_k_is_stable_for_n_1000():
    n, cs = 1000, [0, 1, 3, 50, 500, 990, 1000]
    for k in (1, 10, 100, 500, 1000):
        got = iv.pass_at_k_per_problem(n, cs, k)
        exact = [float(1 - Fraction(math.comb(n - c, k), math.comb(n, k))) for c in cs]
        assert np.isfinite(got).all() and np.allclose(got, exact, rtol=1e-10, atol=1e-12), k
    assert iv.pass_at_k(n, [1], 1) == pytest.approx(0.001)


def test_success_at_k_counts_the_first_k_samples_in_order():
    correct = [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert [iv.success_at_k(correct, k) for k in (1, 2, 3, 4)] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    n, c = iv.counts(correct)
    assert n.tolist() == [4, 4, 4] and c.tolist() == [1, 1, 0]
    assert iv.pass_at_k(n, c, 1) == pytest.approx(1 / 6)  # order-free, unlike success@1


# ----------------------------------------------------------------------------------------------- overlap
def test_expected_jaccard_matches_enumeration_and_the_permutation_null_mean():
    N, a, b = 6, 2, 3
    pairs = [(set(x), set(y)) for x in itertools.combinations(range(N), a) for y in itertools.combinations(range(N), b)]
    assert iv.expected_jaccard(a, b, N) == pytest.approx(np.mean([len(x & y) / len(x | y) for x, y in pairs]))
    N, a, b, draws = 48, 5, 7, 20_000
    null = iv.overlap_null(a, b, N, draws, seed=1)
    assert abs(null.mean() - iv.expected_jaccard(a, b, N)) < 4 * null.std() / math.sqrt(draws)
    assert np.array_equal(null, iv.overlap_null(a, b, N, draws, seed=1))


def test_overlap_test_and_table():
    A, B = [(0, 0), (0, 1), (1, 2), (2, 3)], [(0, 0), (0, 1), (1, 2), (3, 3)]
    r = iv.overlap_test(A, B, 6, 8, n_draws=2000, seed=0)
    assert (r["shared"], r["jaccard"], r["shared_frac"]) == (3, 3 / 5, 3 / 4)
    assert 1 / 2001 <= r["p_value"] < 0.01 and r["p_hypergeom"] < 0.01
    assert iv.overlap_test(A, A, 6, 8, n_draws=999)["p_value"] == pytest.approx(1 / 1000)  # +1 correction
    far = iv.overlap_test(A, [(5, 7)], 6, 8, n_draws=2000)
    assert far["jaccard"] == 0 and far["p_value"] == 1.0
    sets = {k: HeadSet(k, h, 6, 8) for k, h in {"w": A, "s": B, "r": [(4, 4), (5, 5)]}.items()}
    df = iv.overlap_table(sets, n_draws=500)
    assert len(df) == 3 and {"a", "b", "jaccard", "null_mean", "p_value", "q_bh"} <= set(df.columns)
    assert df.set_index(["a", "b"]).loc[("w", "s"), "shared"] == 3
    assert iv.jaccard(sets["w"], "L0H0") == 1 / 4


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: iv.Ablate([(8, 0)]), r"unknown head index \['L8H0'\]; valid choices: layer in \[0, 7\], head in \[0, 7\]"),
    (lambda: iv.Scale([(0, 8)], 1.3), r"head in \[0, 7\]"),
    (lambda: iv.Ablate(HeadSet("w", [(0, 0)], 28, 12)), "selected on a model with 28 layers × 12 heads"),
    (lambda: iv.MeanAblate([(0, 0)], means={(0, 0): torch.zeros(3)}), "one vector of d_head = 16"),
])
def test_heads_that_do_not_fit_the_model_fail_before_any_hook(toy, make, match):
    before = n_hooks(toy)
    with pytest.raises(ParameterError, match=match):
        with iv.intervene(toy, [iv.Scale(["L1H1"], 2.0), make()]):
            pass
    assert n_hooks(toy) == before


@pytest.mark.parametrize("make, match", [
    (lambda: iv.Scale(["L0H0"], float("nan")), "not a finite real number; valid choices"),
    (lambda: iv.Scale(["L0H0"], float("inf")), "not a finite real number"),
    (lambda: iv.Scale(["L0H0"], "1.3"), "not a finite real number"),
    (lambda: iv.Scale(["L0H0"], True), "not a finite real number"),
    (lambda: iv.Ablate([]), "empty head set"),
    (lambda: iv.Ablate(["L0"]), "not a head set.*valid choices"),
    (lambda: iv.MeanAblate(["L0H0", "L1H1"], means={(0, 0): torch.zeros(16)}),
     r"no reference mean for heads \['L1H1'\]"),
    (lambda: iv.pass_at_k(5, [1], 6), r"k=6 is out of range; valid choices: an integer in \[1, 5\]"),
    (lambda: iv.pass_at_k([5, 3], [1, 0], 4), r"\[1, 3\]"),
    (lambda: iv.pass_at_k(5, [1], 0), "k=0 is out of range"),
    (lambda: iv.pass_at_k(5, [6], 1), r"outside \[0, n\]"),
    (lambda: iv.pass_at_k(5, [-1], 1), r"outside \[0, n\]"),
    (lambda: iv.pass_at_k(5, [1.5], 1), "malformed correct counts"),
    (lambda: iv.pass_at_k(5, [], 1), "malformed correct counts"),
    (lambda: iv.pass_at_k([5, 5], [1], 1), "malformed sample counts"),
    (lambda: iv.pass_at_k(0, [0], 1), "malformed sample counts"),
    (lambda: iv.success_at_k([[0, 1], [1]], 2), r"\[1, 1\]"),
    (lambda: iv.success_at_k([[0, 2]], 1), "malformed correctness"),
    (lambda: iv.overlap_null(3, 3, 48, 0), "n_draws=0"),
    (lambda: iv.overlap_test([(0, 0)], [(9, 0)], 6, 8), "unknown head index"),
    (lambda: iv.overlap_table({"a": [(0, 0)], "b": [(0, 1)]}), "pass n_layers and n_heads"),
    (lambda: iv.overlap_table({"a": [(0, 0)]}, 6, 8), "at least two named head sets"),
])
def test_bad_input_is_one_clear_parameter_error(make, match):
    with pytest.raises(ParameterError, match=match):
        make()


def test_bad_model_side_input(toy):
    with pytest.raises(ParameterError, match="empty reference set"):
        iv.head_means(toy, [])
    with pytest.raises(ParameterError, match="empty reference set"):
        iv.MeanAblate.fit(toy, ["L0H0"], [])
    with pytest.raises(ParameterError, match="valid choices: Ablate, MeanAblate, Scale"):
        with iv.intervene(toy, [iv.Ablate(["L0H0"]), "scale"]):
            pass
    with pytest.raises(ParameterError, match=r"temperature=0; valid choices"):
        iv.sample_responses(toy, ["x"], 2, temperature=0)
    with pytest.raises(ParameterError, match="cannot intervene on a str"):
        iv.hook_sites("toy-qwen2")


def test_hooks_follow_the_activations_dtype():
    from support.models import random_hf_model

    hf = random_hf_model("qwen2", num_hidden_layers=1).to(torch.bfloat16)
    means = iv.head_means(hf, [[1, 2, 3]], ["L0H1"])
    assert means[(0, 1)].dtype == torch.float32
    h = hf.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        ref = hf(IDS).logits
    finally:
        h.remove()
    with iv.intervene(hf, [iv.Scale([(0, h) for h in range(4)], 0.5), iv.MeanAblate(["L0H1"], means=means),
                           iv.Ablate([(0, h) for h in range(4)])]):
        out = hf(IDS).logits
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
