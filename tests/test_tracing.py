"""support.tracing: analytic readout, entropy bounds, fast path == naive reference, tokens unchanged, storage."""

from __future__ import annotations

import math

import pytest
import torch

from support import decoding as D
from support import readout as R
from support import scoring
from support import tracing as T
from support.artifacts import ProvenanceError
from support.models import LoadedModel, bridge, random_hf_model

WORDS = ["<pad>", "<unk>", "<eos>"] + [str(i) for i in range(100)] + list("ABCDE") + ["+", "-", "*", "=", "Answer:"]
PROMPT = "1 2 3 + 4 = 5 A B"
SHORT = D.DecodeConfig(max_new_tokens=8)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")


def tiny_lm(arch: str = "qwen2", name: str = "tiny", **cfg) -> LoadedModel:
    tok = tiny_tokenizer()
    hf = random_hf_model(arch, vocab_size=128, **cfg)
    with torch.no_grad():  # larger output weights so head readouts are not all near-uniform
        for layer in hf.model.layers:
            layer.self_attn.o_proj.weight.mul_(20)
    return LoadedModel(name=name, bridge=bridge(hf, tok, name), hf_model=hf, tokenizer=tok, kind="local",
                       meta={"weights": name, "tokenizer": "tiny-words"})


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


# ----------------------------------------------------------------------------------------------- pure math
def test_analytic_readout_and_entropy():
    """Plant a head whose option logits are known in closed form: z = (a, 0, 0, 0) -> p and H by hand."""
    a = 2.0
    W_O = torch.zeros(2, 2, 3)  # H=2 heads, d_head=2, d_model=3
    W_O[0, 0, 0] = 1.0  # head 0 writes z[0] to residual dim 0
    W_O[1, 1, 1] = 1.0  # head 1 writes z[1] to residual dim 1
    W_UK = torch.zeros(3, 4)
    W_UK[0, 0] = 1.0  # residual dim 0 -> option A
    W_UK[1, :] = 1.0  # residual dim 1 -> all options equally
    z = torch.tensor([[a, 0.0], [0.0, 5.0]])
    logits = R.option_readout(z, W_O, W_UK)
    assert torch.allclose(logits[0], torch.tensor([a, 0, 0, 0]))
    assert torch.allclose(logits[1], torch.full((4,), 5.0))
    p = torch.tensor([math.exp(a), 1, 1, 1]) / (math.exp(a) + 3)
    h_ref = float(-(p * p.log()).sum())
    h = R.entropy(logits)
    assert h[0].item() == pytest.approx(h_ref, abs=1e-6)
    assert h[1].item() == pytest.approx(math.log(4), abs=1e-6)  # equal logits: maximal entropy
    # beta is an inverse temperature: beta * z
    assert R.entropy(logits, beta=0.5)[0].item() == pytest.approx(float(R.entropy(logits[0] * 0.5)), abs=1e-6)
    # final_norm: o = (a, 0, 0) -> gamma * o / rms(o) = gamma * (sqrt(3), 0, 0) (rms = a / sqrt(3))
    g = torch.tensor([2.0, 1.0, 1.0])
    fn = R.option_readout(z, W_O, W_UK, norm="final_norm", gamma=g, eps=0.0)
    assert torch.allclose(fn[0], torch.tensor([2 * math.sqrt(3), 0, 0, 0]), atol=1e-5)
    assert torch.allclose(R.option_readout(3 * z, W_O, W_UK, "final_norm", g, 0.0), fn, atol=1e-5)  # scale-free


def test_entropy_bounds():
    g = torch.Generator().manual_seed(0)
    for k in (2, 4, 5, 15):
        x = torch.randn(500, k, generator=g) * torch.logspace(-3, 3, 500)[:, None]
        h = R.entropy(x)
        assert (h >= 0).all() and (h <= math.log(k) + 1e-7).all()
    assert R.entropy(torch.zeros(5)).item() == pytest.approx(math.log(5))
    assert R.entropy(torch.tensor([1e4, 0, 0, 0])).item() == pytest.approx(0.0, abs=1e-6)


def test_fast_readout_equals_reference(lm):
    g = torch.Generator().manual_seed(1)
    for norm in R.NORMS:
        ro = R.build_readout(lm, "A-D", norm=norm)
        Z = torch.randn(3, lm.n_layers, lm.n_heads, ro.d_head, generator=g)
        fast = R.readout_logits(ro, Z)
        W_UK = ro.W_U[:, [t[0] for t in ro.options.token_ids]]
        for layer in range(lm.n_layers):
            ref = R.option_readout(Z[:, layer], ro.W_O[layer], W_UK, norm, ro.gamma, ro.eps)
            assert torch.allclose(fast[:, layer], ref, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------- decoding
def test_tracing_leaves_tokens_identical(lm):
    cfg = D.DecodeConfig(max_new_tokens=16)
    plain = T.plain_decode(lm, PROMPT, cfg)
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    ref = lm.hf_model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert plain.tokens == ref[0, ids.shape[1]:].tolist()
    for opts, norm in (("A-D", "raw"), ("A-E", "final_norm"), ("topk:4", "raw")):
        tr = T.trace(lm, PROMPT, opts, norm=norm, decode=cfg)
        assert tr.tokens == plain.tokens and tr.stop_reason == plain.stop_reason
        assert tr.logits.shape == (len(tr.tokens), lm.n_layers, lm.n_heads, len(tr.labels))
        assert tr.entropy.shape == tr.logits.shape[:3]
    assert lm.bridge.cfg.use_attn_result  # restored after decoding
    assert not any(lm.bridge.blocks[0].attn.hook_z.fwd_hooks)  # hooks removed


@pytest.mark.parametrize("norm", R.NORMS)
def test_fast_trace_matches_naive_run_with_cache(lm, norm):
    ro = R.build_readout(lm, "A-D", norm=norm)
    tr = T.trace(lm, PROMPT, readout=ro, decode=D.DecodeConfig(max_new_tokens=4))
    ref, toks = T.naive_trace(lm, PROMPT, ro, D.DecodeConfig(max_new_tokens=4))
    assert toks == tr.tokens
    assert torch.allclose(tr.logits, ref, atol=1e-4, rtol=1e-3)
    assert tr.logits.abs().max() > 1e-2  # a non-trivial comparison


def test_gqa_readout_is_per_query_head():
    m = tiny_lm("llama", name="tiny-llama", num_attention_heads=4, num_key_value_heads=1)
    tr = T.trace(m, PROMPT, "A-D", decode=D.DecodeConfig(max_new_tokens=3))
    assert tr.logits.shape[2] == 4 and m.n_kv_heads == 1
    assert not torch.allclose(tr.logits[:, 0, 0], tr.logits[:, 0, 1])  # query heads sharing one K/V head differ
    ref, _ = T.naive_trace(m, PROMPT, R.build_readout(m, "A-D"), D.DecodeConfig(max_new_tokens=3))
    assert torch.allclose(tr.logits, ref, atol=1e-4, rtol=1e-3)


def test_dynamic_topk_uses_models_own_predictions(lm):
    tr = T.trace(lm, PROMPT, R.TopK(3), decode=SHORT)
    assert tr.option_ids.shape == (len(tr.tokens), 3)
    assert tr.option_ids[:, 0].tolist() == tr.tokens  # greedy: the top-1 prediction is the emitted token
    ro = R.build_readout(lm, R.TopK(3))
    t = 2
    z = torch.randn(1, lm.n_layers, lm.n_heads, ro.d_head)
    fast = R.readout_logits(ro, z, tr.option_ids[t:t + 1])
    for layer in range(lm.n_layers):
        ref = R.option_readout(z[:, layer], ro.W_O[layer], ro.W_U[:, tr.option_ids[t]])
        assert torch.allclose(fast[:, layer], ref, atol=1e-5)


def test_loop_detector_and_decode_config():
    det = D.LoopDetector(window=120, ratio=0.9)
    assert det(list(range(7)) * 20)  # period-7 copying loop
    assert not det(list(range(7)) * 10)  # shorter than the window
    assert not det(torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:150].tolist())
    assert D.DecodeConfig(max_new_tokens=256, extend_factor=2.0).cap == 512
    for bad in (dict(max_new_tokens=0), dict(loop_ratio=1.5), dict(extend_factor=3.0), dict(loop_window=1)):
        with pytest.raises(ValueError):
            D.DecodeConfig(**bad)


# ----------------------------------------------------------------------------------------------- option sets / errors
def test_option_sets_and_bad_parameters(lm):
    tok = lm.tokenizer
    assert R.option_set(tok, "A-E").labels == tuple("ABCDE")
    ops = R.option_set(tok, "digits+ops")
    assert len(ops) == 14 and all(len(t) == 1 for t in ops.token_ids)
    multi = R.option_set(tok, ["A", "B C"])  # "B C" is two words -> two tokens, aggregated
    assert multi.token_ids[1] == (WORDS.index("B"), WORDS.index("C"))
    col = multi.matrix(128)[:, 1]
    assert col.nonzero().flatten().tolist() == [WORDS.index("B"), WORDS.index("C")] and col.sum() == 1.0  # mean
    with pytest.raises(ValueError, match="split into 2 tokens"):
        R.option_set(tok, ["A", "B C"], require_single=True)
    with pytest.raises(ValueError, match="missing from the tokenizer"):
        R.option_set(tok, ["A", "Z"])
    with pytest.raises(ValueError, match="valid choices: raw, final_norm"):
        R.build_readout(lm, "A-D", norm="layer_norm")
    with pytest.raises(ValueError, match="valid choices: mean, first, sum"):
        R.option_set(tok, "A-D", aggregate="max")
    with pytest.raises(ValueError, match="at least 2"):
        R.option_set(tok, ["A"])
    with pytest.raises(ValueError, match="beta"):
        R.build_readout(lm, "A-D", beta=0)
    with pytest.raises(ValueError, match="k >= 2"):
        R.TopK(1)


def test_parse_answer():
    assert scoring.parse("x\nAnswer: C", tuple("ABCD")) == "C"
    assert scoring.parse("x\nAnswer: ( 1 + 2 ) * 3", ("0", "+")) == "( 1 + 2 ) * 3"


# ----------------------------------------------------------------------------------------------- storage
def test_trace_many_saves_resumes_and_refuses_mismatch(lm, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="empty probe set"):
        T.trace_many(lm, [], [], tmp_path)
    prompts, ids = [PROMPT, "7 8 9 A"], ["ex/1", "ex2"]
    paths = T.trace_many(lm, prompts, ids, tmp_path, decode=SHORT, dataset="unit")
    assert [p.name for p in paths] == ["ex_1.safetensors", "ex2.safetensors"]
    trs = T.load_traces(tmp_path, expect_model=lm.identity())
    assert [t.id for t in trs] == ids
    direct = T.trace(lm, PROMPT, decode=SHORT)
    assert torch.equal(trs[0].entropy, direct.entropy) and trs[0].tokens == direct.tokens
    assert trs[0].meta["provenance"]["dataset"] == "unit"

    def boom(*a, **k):
        raise AssertionError("resumed run must not re-trace")

    monkeypatch.setattr(T, "trace", boom)
    T.trace_many(lm, prompts, ids, tmp_path, decode=SHORT)  # everything exists: skipped
    with pytest.raises(ProvenanceError, match="other parameters"):
        T.trace_many(lm, prompts, ids, tmp_path, norm="final_norm", decode=SHORT)
    other = {**lm.identity(), "weights": "something-else"}
    with pytest.raises(ProvenanceError):
        T.load_traces(tmp_path, expect_model=other)


def test_probe_set_and_trace_dir(tmp_path):
    ps = T.probe_set("toy_mc5", 3, seed=0)
    assert len(ps.prompts) == len(ps.ids) == 3 and ps.options == "A-E" and ps.prompts[0].endswith("assistant\n")
    assert T.probe_set("toy_countdown", 1).options == "digits+ops"
    with pytest.raises(ValueError, match="empty probe set"):
        T.probe_set("toy_mc4", 0)
    assert T.trace_dir(tmp_path, "toy_mc4") == tmp_path / "traces" / "toy_mc4" / "raw"
    with pytest.raises(ValueError, match="valid choices"):
        T.trace_dir(tmp_path, "toy_mc4", "softmax")


def test_probe_set_reports_skipped_malformed_rows(tmp_path, monkeypatch):
    """Malformed rows are skipped and counted (never silently): the count reaches the chapter via ProbeSet."""
    import json as _json

    from support.tracing import probe_set

    d = tmp_path / "arc"
    d.mkdir()
    good = {"id": "q1", "question": {"stem": "Which is hot?", "choices": [
        {"text": t, "label": l} for t, l in zip(["ice", "fire", "snow", "rain"], "ABCD")]}, "answerKey": "B"}
    bad = {"id": "q2", "question": {"stem": "", "choices": good["question"]["choices"]}, "answerKey": "A"}
    (d / "ARC-Challenge-Dev.jsonl").write_text("\n".join(_json.dumps(r) for r in (good, bad, good | {"id": "q3"})))
    monkeypatch.setenv("RH_DATA_DIR", str(tmp_path))
    ps = probe_set("arc_challenge", 5, template="chatml")
    assert ps.skipped == 1 and sorted(ps.ids) == ["q1", "q3"]
