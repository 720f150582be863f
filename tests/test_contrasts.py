"""Clean/corrupted pairs: the organism's option-check and lookup pairs, number-swapped math problems (real rows)."""

from __future__ import annotations

import random
import re

import pytest

from support import contrasts, tasks
from support.errors import ParameterError

# A Qwen3-style template: the think switch closes an empty think block when thinking is off.
QWEN3_LIKE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
              "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


@pytest.fixture(scope="module")
def tok():
    from support.models import load_tokenizer, resolve

    return load_tokenizer(*resolve("toy-qwen2"), "toy-qwen2")


def test_lookup_pairs_align_and_swap_the_letter(tok):
    ps = contrasts.lookup_pairs(range(1000, 1100), 12)
    assert len(ps) == 12 and len(set(ps.ids)) == 12
    for c, x, (good, bad) in zip(ps.clean, ps.corrupted, ps.answers):
        assert len(tok(c).input_ids) == len(tok(x).input_ids)  # same token length: no alignment needed
        value = c.split()[-1]
        assert f"{value} {good}" in c and f"{value} {bad}" in x and good != bad
        assert c.endswith("/no_think<|im_end|>\n<|im_start|>assistant\n" + value)
    on = contrasts.lookup_pairs(range(1000, 1100), 12, think=True)
    assert on.ids == ps.ids and all("/think<|im_end|>" in c for c in on.clean)


def test_pairs_from_ids_rebuild_the_saved_pairs():
    ps = contrasts.lookup_pairs(range(1000, 1100), 5, think=True)
    again = contrasts.pairs_from_ids(ps.ids, think=True)
    assert (again.clean, again.corrupted, again.answers, again.ids) == (ps.clean, ps.corrupted, ps.answers, ps.ids)
    with pytest.raises(ParameterError, match="toy_lookup/<seed>"):
        contrasts.pairs_from_ids(["toy_mc4/3"])


def test_check_pairs_differ_in_the_checked_value_only(tok):
    ps = contrasts.check_pairs(range(12))
    assert ps.ids == [f"toy_check/{i}" for i in range(12)]
    for c, x, (result, other) in zip(ps.clean, ps.corrupted, ps.answers):
        ci, xi = tok(c).input_ids, tok(x).input_ids
        assert len(ci) == len(xi) and [k for k in range(len(ci)) if ci[k] != xi[k]] == [len(ci) - 3]
        assert other == "not" and c.endswith(f"\n{result} ({c.split()[-2][1]}) is") and x.split()[-3] != result
        assert f"= {result}\n" in c and "/think<|im_end|>" in c  # the chain of thought computed the result
        assert tok.convert_tokens_to_ids(result) != tok.unk_token_id
    off = contrasts.check_pairs(range(12), think=False)
    assert all(a.replace("/think<|im_end|>", "/no_think<|im_end|>") == b for a, b in zip(ps.clean, off.clean))
    again = contrasts.pairs_from_ids(ps.ids)
    assert (again.clean, again.corrupted, again.answers) == (ps.clean, ps.corrupted, ps.answers)
    assert contrasts.pairs_from_ids(ps.ids, think=False).clean == off.clean


def test_the_organism_checks_options_and_its_base_mostly_does_not():
    """The option check is a behaviour of the SFT checkpoint (chapter 03's circuit target): the right token beats
    the other on clean (the value) and corrupted (`not`) prompts; the base model says the value either way."""
    import torch

    from support.models import load_plain

    ps = contrasts.check_pairs(range(12))

    def accuracy(name: str) -> tuple[float, float]:
        model, tk = load_plain(name)
        right = []
        with torch.no_grad():
            for c, x, pair in zip(ps.clean, ps.corrupted, ps.answers):
                a, b = tk.convert_tokens_to_ids(list(pair))
                lc, lx = (model(tk(s, return_tensors="pt").input_ids).logits[0, -1] for s in (c, x))
                right.append((bool(lc[a] > lc[b]), bool(lx[b] > lx[a])))
        return tuple(float(sum(r[k] for r in right)) / len(right) for k in (0, 1))

    assert accuracy("toy-qwen2") >= (0.9, 0.9)
    assert accuracy("toy-qwen2-base")[1] <= 0.5


def test_lookup_pairs_refuse_more_than_the_seeds_give():
    with pytest.raises(ParameterError, match="at most"):
        contrasts.lookup_pairs(range(3), 50)


def test_swap_numbers_changes_every_number_and_nothing_else():
    text = "Aya walks 9 km at 3.5 km/h, 0 stops, 120 minutes; 07 is kept two-digit."
    rng = random.Random(0)
    out = contrasts.swap_numbers(text, rng)
    nums, new = re.findall(r"\d+", text), re.findall(r"\d+", out)
    assert len(nums) == len(new) and all(a != b and len(a) == len(b) for a, b in zip(nums, new))
    assert re.sub(r"\d+", "#", out) == re.sub(r"\d+", "#", text)
    assert all(b[0] != "0" for a, b in zip(nums, new) if a[0] != "0" and len(a) > 1)
    assert contrasts.swap_numbers(text, random.Random(0)) == out  # seeded


def test_math_pairs_on_real_gsm8k_and_aime(tok):
    items = tasks.load_task("gsm8k", "test", 20).items + tasks.load_task("aime24", "test", 5).items
    ps = contrasts.math_pairs(items, 10, template="chatml", prefix="Okay, so I have this problem", seed=1)
    assert len(ps) == 10 and ps.answers is None
    for c, x in zip(ps.clean, ps.corrupted):
        assert c != x and c.endswith("assistant\nOkay, so I have this problem")
        assert re.sub(r"\d+", "#", c) == re.sub(r"\d+", "#", x)
    with pytest.raises(ParameterError, match="at most"):
        contrasts.math_pairs(items[:3], 10, template="chatml")


def test_think_switch_needs_a_template_that_has_one(tok):
    items = tasks.load_task("gsm8k", "test", 4).items
    with pytest.raises(ValueError, match="enable_thinking"):
        contrasts.math_pairs(items, 2, template="chatml", think=True)
    tok.chat_template = QWEN3_LIKE
    on = contrasts.math_pairs(items, 2, tok, template="model", think=True)
    off = contrasts.math_pairs(items, 2, tok, template="model", think=False)
    assert all(c.endswith("assistant\n") for c in on.clean)
    assert all(c.endswith("<think>\n\n</think>\n\n") for c in off.clean)
