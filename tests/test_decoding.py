"""support.decoding: batched greedy and sampled generation on the model's device; one stepwise greedy loop."""

from __future__ import annotations

import pytest
import torch

from support import decoding
from support.toydata import generate


@pytest.fixture(scope="module")
def items():
    return generate("toy_mc4", 6, "test", seed=3)


def test_batched_greedy_equals_one_at_a_time(toy, items):
    prompts = [it.prompt for it in items]
    batched = decoding.generate(toy.hf_model, toy.tokenizer, prompts, max_new_tokens=24, batch_size=6)
    single = [decoding.generate(toy.hf_model, toy.tokenizer, [p], max_new_tokens=24)[0] for p in prompts]
    assert batched == single and all(r.strip() for r in batched)


def test_batched_greedy_matches_the_stepwise_loop(toy, items):
    cfg = decoding.DecodeConfig(max_new_tokens=24)
    for it in items[:3]:
        dec = decoding.greedy_decode(toy, decoding.encode_prompt(toy, it.prompt), cfg)
        text = toy.tokenizer.decode(dec.tokens, skip_special_tokens=True)
        assert text == decoding.generate(toy.hf_model, toy.tokenizer, [it.prompt], max_new_tokens=24)[0]


def test_sampling_is_seeded_and_differs_from_greedy(toy, items):
    prompts = [it.prompt for it in items] * 4
    hot = decoding.Sampling(do_sample=True, temperature=1.5, top_p=1.0, seed=7)
    a = decoding.generate(toy.hf_model, toy.tokenizer, prompts, 24, batch_size=8, sampling=hot)
    b = decoding.generate(toy.hf_model, toy.tokenizer, prompts, 24, batch_size=8, sampling=hot)
    greedy = decoding.generate(toy.hf_model, toy.tokenizer, prompts, 24, batch_size=8)
    assert a == b and a != greedy


@pytest.mark.parametrize("kw,match", [(dict(temperature=0), "temperature must be > 0"),
                                      (dict(top_p=1.5), r"top_p must be in \(0, 1\]")])
def test_bad_sampling_settings_fail_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        decoding.Sampling(do_sample=True, **kw)


def test_bad_lengths_fail_before_generating(toy):
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.generate(toy.hf_model, toy.tokenizer, ["x"], max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        decoding.generate(toy.hf_model, toy.tokenizer, ["x"], batch_size=0)


def test_inputs_follow_the_model_device(toy, monkeypatch):
    seen = []
    orig = toy.hf_model.generate

    def spy(**kw):
        seen.append(kw["input_ids"].device)
        return orig(**kw)

    monkeypatch.setattr(toy.hf_model, "generate", spy)
    decoding.generate(toy.hf_model, toy.tokenizer, ["What is 1 + 2 ?"], max_new_tokens=2)
    assert seen == [decoding.model_device(toy.hf_model)] and seen[0] == torch.device("cpu")


def test_generate_ids_stops_before_the_end_of_turn_and_drops_padding(toy):
    from support.decoding import Sampling, generate, generate_ids

    prompts = ["<|im_start|>user\nFind 12 .<|im_end|>\n<|im_start|>assistant\n", "<|im_start|>user\n3<|im_end|>\n"
               "<|im_start|>assistant\n"]
    pairs = generate_ids(toy.hf_model, toy.tokenizer, prompts, 24, sampling=Sampling())
    texts = generate(toy.hf_model, toy.tokenizer, prompts, 24)
    end = toy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = toy.tokenizer.pad_token_id
    for (p, r), prompt, text in zip(pairs, prompts, texts):
        assert p == toy.tokenizer(prompt)["input_ids"] and end not in r and pad not in r
        assert toy.tokenizer.decode(r, skip_special_tokens=True).strip() == text.strip()


def test_generate_on_the_bridged_model_equals_the_plain_model(toy):
    """HF generate() through a TransformerBridge-wrapped model must match the plain model (transformers 5.24 broke
    this: every step repeated the first token, which is why pyproject caps transformers below 5.24)."""
    from support.decoding import generate
    from support.models import load_plain
    from support.toydata import generate as toy_items

    plain, tok = load_plain("toy-qwen2", device="cpu")
    prompts = [it.prompt for it in toy_items("toy_countdown", 3, "test")]
    assert generate(toy.hf_model, toy.tokenizer, prompts, 24) == generate(plain, tok, prompts, 24)
