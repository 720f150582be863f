"""The one loader: toy organism, tiny random Qwen2/Qwen3/Llama, bad names; all through TransformerBridge."""

from __future__ import annotations

import pytest
import torch

from support.models import UnknownModelError, load_model, pick_dtype, resolve, toy_models
from support.toydata import generate

HOOKS = ("hook_z", "hook_pattern", "hook_result")


def _hooks_present(lm, ids):
    with torch.no_grad():
        _, cache = lm.bridge.run_with_cache(ids)
    for h in HOOKS:
        for layer in range(lm.n_layers):
            assert f"blocks.{layer}.attn.{h}" in cache, h
    z = cache["blocks.0.attn.hook_z"]
    assert z.shape[-2:] == (lm.n_heads, lm.hf_model.config.hidden_size // lm.n_heads) or z.shape[-2] == lm.n_heads
    assert cache["blocks.0.attn.hook_pattern"].shape[1] == lm.n_heads
    return cache


def test_toy_is_embedded():
    assert "toy-qwen2" in toy_models()


def test_toy_boots_with_hf_identical_logits(toy):
    item = generate("toy_mc4", 1, "test")[0]
    ids = toy.tokenizer(item.text, return_tensors="pt").input_ids
    assert toy.tokenizer.unk_token_id not in ids[0].tolist()
    with torch.no_grad():
        ref = toy.hf_model(ids).logits
        out = toy.bridge(ids)
    assert (out - ref).abs().max().item() <= 1e-4
    _hooks_present(toy, ids)
    assert type(toy.hf_model).__name__ == "Qwen2ForCausalLM"
    assert toy.n_kv_heads < toy.n_heads  # grouped-query attention


def test_toy_tokenizer_roundtrip_through_autotokenizer(toy):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy.path / "tokenizer"))
    text = "12 + 7 = 19\nAnswer: C"
    assert tok.convert_ids_to_tokens(tok(text).input_ids) == ["12", "+", "7", "=", "19", "\n", "Answer", ":", "C"]


@pytest.mark.parametrize("arch", ["qwen2", "qwen3", "llama"])
def test_tiny_random_models_load_through_the_same_loader(tiny_dir, arch):
    d = tiny_dir(arch)
    lm = load_model(str(d), device="cpu")
    assert lm.kind == "local"
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        ref = lm.hf_model(ids).logits
        out = lm.bridge(ids)
    assert (out - ref).abs().max().item() <= 1e-4
    _hooks_present(lm, ids)
    assert lm.identity()["weights"] and lm.identity()["tokenizer"]


@pytest.mark.parametrize("bad", ["toy-nope", "", "not a model", "/no/such/dir/x"])
def test_unknown_model_fails_naming_choices(bad):
    with pytest.raises(UnknownModelError, match="valid choices"):
        resolve(bad)


def test_hub_name_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match="valid choices"):
        load_model("nobody/definitely-not-a-model-xyz", device="cpu")


def test_dir_without_config_is_rejected(tmp_path):
    with pytest.raises(UnknownModelError, match="config.json"):
        resolve(str(tmp_path))


def test_dtype_choice():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="valid choices"):
        pick_dtype(torch.device("cpu"), "float8")


def test_trust_remote_code_is_off_by_default():
    import inspect

    assert inspect.signature(load_model).parameters["trust_remote_code"].default is False


def test_toy_vocabulary_covers_the_appendix_b_prompt(toy):
    from support.prompts import format_mc_prompt

    ids = toy.tokenizer(format_mc_prompt("What is 12 + 7 ?", ["19", "18", "29", "20"], "chatml")).input_ids
    assert toy.tokenizer.unk_token_id not in ids


def test_toy_options_put_the_letter_after_the_value(toy):
    item = generate("toy_mc4", 1, "test")[0]
    toks = toy.tokenizer.convert_ids_to_tokens(toy.tokenizer(item.prompt).input_ids)
    for i, value in enumerate(item.options):
        j = toks.index(f"({'ABCD'[i]})")
        assert toks[j - 1] == value


def test_toy_multiple_choice_accuracy_is_in_the_acceptance_band(toy):
    from support.organism import greedy_answers
    from support.scoring import accuracy

    items = generate("toy_mc4", 100, "test", seed=0)
    acc = accuracy(items, greedy_answers(toy.hf_model, toy.tokenizer, items))
    assert 0.5 <= acc <= 0.9, acc  # clearly above chance (0.25), not saturated


def test_retrieval_attention_is_a_per_head_share(toy):
    from support.organism import retrieval_attention

    mass, hits = retrieval_attention(toy, generate("toy_mc4", 6, "test", seed=5))
    assert mass.shape == hits.shape == (toy.n_layers, toy.n_heads)
    assert ((0 <= mass) & (mass <= 1)).all() and ((0 <= hits) & (hits <= 1)).all()
    assert mass.sum() > 0


def test_retrieval_attention_refuses_a_model_without_the_organism_tokens(tiny_dir):
    from support.organism import retrieval_attention

    lm = load_model(str(tiny_dir("qwen2")), device="cpu")
    with pytest.raises(ValueError, match="organism"):
        retrieval_attention(lm, generate("toy_mc4", 1, "test"))


def test_a_saved_checkpoint_loads_bridged_with_the_reference_tokenizer(toy, tmp_path):
    from support.models import load_checkpoint, load_plain

    load_plain(toy.name, device="cpu")[0].save_pretrained(tmp_path / "checkpoint-1")  # a bridged model cannot save
    lm = load_checkpoint(tmp_path / "checkpoint-1", toy)
    ids = toy.tokenizer("Numbers : 3 4 5 6 . Target : 7 .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(lm.bridge(ids), toy.bridge(ids), atol=1e-5)
    assert lm.tokenizer is toy.tokenizer and lm.identity()["tokenizer"] == toy.identity()["tokenizer"]
    assert lm.identity()["weights"] and lm.kind == "local"
    with pytest.raises(ValueError, match="not a model checkpoint"):
        load_checkpoint(tmp_path, toy)
