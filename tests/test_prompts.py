"""App. B prompts and `Answer:` parsing."""

from __future__ import annotations

import pytest

from support.prompts import UNIFIED_INSTRUCTION, UNIFIED_SYSTEM, format_mc_prompt
from support.scoring import answer_text, parse_answer


def test_chatml_prompt_matches_appendix_b():
    p = format_mc_prompt("What is 2 + 2 ?", ["3", "4"], "chatml")
    head = f"<|im_start|>system\n{UNIFIED_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 2 + 2 ?\nA. 3\nB. 4\n"
    assert p.startswith(head)
    assert p.endswith(f"{UNIFIED_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")


def test_llama2_prompt():
    p = format_mc_prompt("Q?", ["x", "y"], "llama2")
    assert p.startswith("[INST] <<SYS>>\n") and "<</SYS>>" in p and p.endswith("[/INST]")


def test_model_template_uses_the_tokenizers_own(toy):
    assert format_mc_prompt("Q ?", ["1", "2"], "model", toy.tokenizer) == format_mc_prompt("Q ?", ["1", "2"], "chatml")


def test_unknown_template():
    with pytest.raises(ValueError, match="valid choices"):
        format_mc_prompt("Q", ["a"], "alpaca")


@pytest.mark.parametrize("text,letters,want", [
    ("step 1\nAnswer: B", "ABCD", "B"),
    ("reasoning\nanswer: c", "ABCD", "C"),
    ("Answer: D\nHope this helps!", "ABCD", "D"),
    ("Answer: (A) because", "ABCD", "A"),
    ("no answer line here", "ABCD", None),
    ("Answer: E", "ABCD", None),
    ("Answer: E", "ABCDE", "E"),
    ("", "ABCD", None),
    ("Answer: A\nAnswer: B", "ABCD", "B"),
])
def test_parse_answer(text, letters, want):
    assert parse_answer(text, letters) == want


@pytest.mark.parametrize("text,want", [
    ("25 + 7 = 32\nAnswer: ( 25 + 7 ) - 3", "( 25 + 7 ) - 3"),
    ("Answer : 12\nanswer: 13", "13"),
    ("no answer here", None),
])
def test_answer_text(text, want):
    assert answer_text(text) == want


def test_option_layouts_and_unknown_layout():
    from support.prompts import option_lines

    assert option_lines(["19", "13"]) == ["A. 19", "B. 13"]
    assert option_lines(["19", "13"], "organism") == ["19 (A)", "13 (B)"]
    with pytest.raises(ValueError, match="valid choices: app_b, organism"):
        option_lines(["19"], "fancy")
