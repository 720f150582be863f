"""Paper 003 §4 metrics against hand-computed values, and the attention extraction against the real bridge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from support import rhythm


def one_hot_rows(n: int, targets: list[int]) -> torch.Tensor:
    """An [n, n] causal map whose row t puts all its mass on column targets[t]."""
    a = torch.zeros(n, n)
    for t, s in enumerate(targets):
        assert s <= t
        a[t, s] = 1.0
    return a


def test_rl_layers_are_evenly_spaced_in_the_middle_third():
    assert rhythm.rl_layers(36) == [12, 15, 18, 21, 24]  # Qwen3-4B-Base
    assert rhythm.rl_layers(8) == [2, 3, 4, 5]  # the organism: only 4 distinct layers in [2, 5]
    with pytest.raises(ValueError):
        rhythm.rl_layers(0)


def test_head_span_eq7_and_groups():
    n, start = 4, 1
    diag = one_hot_rows(n, [0, 1, 2, 3])  # looks at itself: distance 0
    first = one_hot_rows(n, [0, 0, 0, 0])  # looks at the first token: distances 1, 2, 3 on response rows
    half = 0.5 * diag + 0.5 * first
    maps = torch.stack([torch.stack([diag, first]), torch.stack([half, diag])])  # [L=2, H=2, N, N]
    span = rhythm.head_span(maps, start)
    assert torch.allclose(span, torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
    loc, glob = rhythm.head_groups(span, frac=0.25, layers=[5, 7])
    assert loc == [(5, 0)] and glob == [(5, 1)]  # ties broken by index; rows mapped to model layers
    loc, glob = rhythm.head_groups(span, frac=0.5)
    assert loc == [(0, 0), (1, 1)] and glob == [(0, 1), (1, 0)]
    assert torch.allclose(rhythm.group_map(maps, [(0, 1), (1, 0)]), (first + half) / 2)
    with pytest.raises(ValueError):
        rhythm.head_groups(span, frac=0.7)
    with pytest.raises(ValueError):
        rhythm.head_span(maps, n)


def test_waad_eq9_clips_at_the_window_including_first_and_last_tokens():
    n = 14
    to_first = one_hot_rows(n, [0] * n)
    w = rhythm.waad(to_first, start=0, window=10)
    assert w.tolist() == [min(t, 10) for t in range(n)]  # first token: 0; from t = 10 on: clipped at W
    mixed = 0.5 * one_hot_rows(n, list(range(n))) + 0.5 * one_hot_rows(n, [max(0, t - 3) for t in range(n)])
    w = rhythm.waad(mixed, start=5, window=2)
    assert w.tolist() == [1.0] * (n - 5)  # 0.5 * 0 + 0.5 * min(3, 2)
    with pytest.raises(ValueError):
        rhythm.waad(mixed, 0, window=0)


def test_fai_eq10_horizons_and_the_end_of_the_response():
    a = torch.tensor([[1.0, 0, 0, 0, 0],
                      [0.5, 0.5, 0, 0, 0],
                      [0.2, 0.4, 0.4, 0, 0],
                      [0.1, 0.3, 0.2, 0.4, 0],
                      [0.0, 0.6, 0.2, 0.1, 0.1]])
    f = rhythm.fai(a, start=1)  # to the end: s=1 <- t in {2,3,4}; s=4 has no later token
    assert np.allclose(f[:3].numpy(), [(0.4 + 0.3 + 0.6) / 3, (0.2 + 0.2) / 2, 0.1])
    assert math.isnan(f[3])
    f = rhythm.fai(a, start=1, h_lo=2, h_hi=2)  # T(s) = {s + 2} while it stays inside the sequence
    assert np.allclose(f[:2].numpy(), [0.3, 0.2]) and np.isnan(f[2:].numpy()).all()
    f = rhythm.fai(a, start=2, h_lo=1, h_hi=1)  # prompt rows never count: s=2 <- t=3 only
    assert np.allclose(f[:2].numpy(), [0.2, 0.1]) and math.isnan(f[2])
    per_head = rhythm.fai(torch.stack([a, a]), start=1)
    assert per_head.shape == (2, 4)
    with pytest.raises(ValueError):
        rhythm.fai(a, 1, h_lo=3, h_hi=2)


def test_token_entropy_reads_the_previous_position():
    logits = torch.zeros(4, 8)
    logits[2] = torch.tensor([100.0] + [0.0] * 7)  # position 2 predicts token 3 with certainty
    h = rhythm.token_entropy(logits, start=2)
    assert h.shape == (2,)
    assert h[0].item() == pytest.approx(math.log(8)) and h[1].item() == pytest.approx(0.0, abs=1e-6)


def test_peaks_are_local_maxima_in_the_top_share():
    x = np.array([0, 3, 1, 1, 5, 0, 2], dtype=float)
    assert rhythm.peaks(x, top=0.5).tolist() == [1, 4, 6]  # the endpoint 6 beats its only neighbour
    assert rhythm.peaks(x, top=0.3).tolist() == [1, 4]
    assert rhythm.peaks(np.array([np.nan, 2, np.nan, 1]), top=1.0).tolist() == [1, 3]
    assert rhythm.peaks(np.array([np.nan, np.nan])).tolist() == []
    with pytest.raises(ValueError):
        rhythm.peaks(x, top=0)


def fake(waad, fai, entropy, head_fai=None):
    n = len(waad)
    head_fai = np.array(head_fai if head_fai is not None else [[fai]])
    return rhythm.Rhythm(tokens=["p"] + ["t"] * n, start=1, layers=list(range(head_fai.shape[0])),
                         span=np.zeros(head_fai.shape[:2]), loc=[(0, 0)], glob=[(0, 0)], a_loc=np.eye(n + 1),
                         a_glob=np.eye(n + 1), waad=np.array(waad, float), fai=np.array(fai, float),
                         head_fai=head_fai, entropy=np.array(entropy, float))


def test_table2_couplings_on_constructed_sequences():
    r = fake(waad=[0, 5, 0, 0, 6, 0], fai=[0, 0, 7, 0, 8, 0], entropy=[1, 3, 1, 1, 5, 1])
    c = rhythm.coupling_entropy([r], top=0.4)  # WAAD peaks at 1 and 4
    assert c["observed"] == 4.0 and c["random"] == 2.0 and c["lift"] == 1.0
    f = rhythm.coupling_follow([r], top=0.4, lag=1)  # FAI peaks 2 (after WAAD peak 1) and 4 (on WAAD peak 4)
    assert f["observed"] == 1.0 and f["random"] == pytest.approx(4 / 6)  # positions 1, 2, 4, 5 qualify
    # receiver heads: head (0, 1) has the global FAI profile, head (0, 0) a flat one with a single other peak
    r = fake(waad=[0] * 6, fai=[0, 0, 7, 0, 8, 0], entropy=[1] * 6,
             head_fai=[[[1, 9, 1, 1, 1, 1], [0, 0, 7, 0, 8, 0]]])
    heads, kurt = rhythm.receiver_heads([r], n=1)
    assert heads == [(0, 0)] and kurt.shape == (1, 2)  # one sharp spike: the higher kurtosis
    c = rhythm.coupling_receiver([r], [(0, 0)], top=0.4)
    assert c["observed"] == 0.0 and c["random"] == pytest.approx(2 / 6)
    c = rhythm.coupling_receiver([r], [(0, 1)], top=0.4)
    assert c["observed"] == 1.0


def test_content_tokens_and_jaccard():
    assert rhythm.content_tokens(["Ġthe", "12", "+", "<|im_end|>", "Plan", "plan"]) == {"12", "plan"}
    assert rhythm.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert rhythm.jaccard(set(), set()) == 1.0
    top, bottom = rhythm.fai_positions(np.array([0.0, 0.9, 0.1, 0.5, 0.7, np.nan, 0.3]), n=2, min_tail=1)
    assert top == [1, 4] and bottom == [2, 3]  # position 0 has no predecessor in the response; NaN never ranks


# ----------------------------------------------------------------------------------------------- real models
@pytest.fixture(scope="module")
def tiny():
    from support.models import random_hf_model

    torch.set_num_threads(1)
    return random_hf_model("qwen2", num_hidden_layers=4)


def test_hf_maps_keep_only_the_requested_layers_and_match_output_attentions(tiny):
    ids = torch.randint(3, 100, (2, 9))
    maps, logits = rhythm.attention_maps(tiny, ids, layers=[1, 3])
    assert maps.shape == (2, 2, 4, 9, 9) and logits.shape[:2] == (2, 9)
    ref = tiny(input_ids=ids, output_attentions=True).attentions
    assert torch.allclose(maps[:, 0], ref[1], atol=1e-6) and torch.allclose(maps[:, 1], ref[3], atol=1e-6)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 4, 9), atol=1e-5)  # causal rows sum to one
    with pytest.raises(ValueError, match="unknown layers"):
        rhythm.attention_maps(tiny, ids, layers=[4])


def test_sdpa_models_are_switched_to_eager_and_back():
    from transformers import AutoModelForCausalLM

    from support.models import random_hf_model

    sdpa = AutoModelForCausalLM.from_config(random_hf_model("qwen2").config, attn_implementation="sdpa").eval()
    maps, _ = rhythm.attention_maps(sdpa, torch.randint(3, 100, (1, 6)), layers=[0])
    assert maps.shape == (1, 1, 4, 6, 6) and sdpa.config._attn_implementation == "sdpa"


def test_padded_batch_signals_equal_the_unpadded_ones(tiny):
    torch.manual_seed(0)
    a, b = torch.randint(3, 100, (7,)), torch.randint(3, 100, (10,))  # prompt 4 + response 3; prompt 6 + response 4
    ids = torch.zeros(2, 12, dtype=torch.long)
    am, rm = torch.zeros(2, 12, dtype=torch.long), torch.zeros(2, 12, dtype=torch.bool)
    ids[0, 2:9], am[0, 2:9], rm[0, 6:9] = a, 1, True  # left- and right-padded, as TRL lays out a batch
    ids[1, 0:10], am[1, 0:10], rm[1, 6:10] = b, 1, True
    out = rhythm.token_signals(tiny, ids, am, rm, layers=[1, 2], window=3, h_lo=1, h_hi=2, chunk=1)
    for row, seq, p, lo in ((0, a, 4, 6), (1, b, 6, 6)):
        ref = rhythm.analyse(tiny, seq[:p].tolist(), seq[p:].tolist(), layers=[1, 2], window=3, h_lo=1, h_hi=2)
        n = len(seq) - p
        for k in ("waad", "fai", "entropy"):
            assert np.allclose(out[k][row, lo:lo + n].numpy(), getattr(ref, k), atol=1e-5, equal_nan=True), k
        assert torch.isnan(out["waad"][row, :lo]).all()
    with pytest.raises(ValueError):
        rhythm.token_signals(tiny, ids, am, rm[:, :5], layers=[1])


def test_bridge_and_hf_maps_agree_on_the_organism(toy):
    ids = toy.tokenizer("Compute 12 + 7 .", return_tensors="pt")["input_ids"]
    layers = [0, toy.n_layers - 1]
    via_bridge, lb = rhythm.attention_maps(toy, ids, layers=layers)
    via_hf, lh = rhythm.attention_maps(toy.hf_model, ids, layers=layers)
    assert via_bridge.shape == via_hf.shape == (1, 2, toy.n_heads, ids.shape[1], ids.shape[1])
    assert torch.allclose(via_bridge, via_hf, atol=1e-5) and torch.allclose(lb, lh, atol=1e-4)


def test_analyse_and_perturb_on_the_organism(toy):
    from support.toydata import generate

    it = generate("toy_countdown", 1, split="test", seed=0)[0]
    p = toy.tokenizer(it.prompt)["input_ids"]
    r = toy.tokenizer(it.response)["input_ids"]
    rh = rhythm.analyse(toy, p, r)
    n = len(r)
    assert rh.waad.shape == rh.fai.shape == rh.entropy.shape == (n,)
    assert rh.span.shape == (toy.n_layers, toy.n_heads) and len(rh.loc) == math.ceil(0.3 * toy.n_layers * toy.n_heads)
    assert set(rh.loc).isdisjoint(rh.glob) and np.isnan(rh.fai[-1]) and not np.isnan(rh.fai[:-1]).any()
    assert (rh.waad >= 0).all() and (rh.waad <= 10).all()
    top, bottom = rhythm.fai_positions(rh.fai, n=1)
    rows = rhythm.perturb(toy, p, r, top + bottom, k=2, max_new_tokens=16)
    assert len(rows) == 4 and all(0 <= x["jaccard"] <= 1 and x["forced"] != x["original"] for x in rows)
    one_at_a_time = [row for i in top + bottom for row in rhythm.perturb(toy, p, r, [i], k=2, max_new_tokens=16)]
    assert rows == one_at_a_time  # the left-padded batch rolls out the same tokens


def test_perturbation_summary_counts_examples():
    s = rhythm.perturbation_summary([{"top": [0.2, 0.4], "bottom": [0.5]}, {"top": [0.9], "bottom": [0.7, 0.9]},
                                     {"top": [], "bottom": [0.1]}])
    assert s["n_examples"] == 2 and s["pr_top_lt_bottom"] == 0.5
    assert s["top_jaccard"] == pytest.approx((0.3 + 0.9) / 2) and s["bottom_jaccard"] == pytest.approx((0.5 + 0.8) / 2)
    with pytest.raises(ValueError):
        rhythm.perturbation_summary([{"top": [], "bottom": []}])
