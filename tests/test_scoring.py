"""support.scoring: one parser and verifier per answer family, rewards in [0, 1] with reasons, never an exception."""

from __future__ import annotations

from fractions import Fraction

import pytest

from support import scoring
from support.records import CountdownItem, MathItem, MCItem
from support.scoring import (
    Score,
    answers_equal,
    boxed,
    check_countdown,
    evaluate_countdown,
    normalize_answer,
    score,
    verify_countdown,
)
from support.toydata import generate


def test_answers_equal_cases():
    assert answers_equal("1,600", 1600) and answers_equal(" 2.50 ", "2.5") and answers_equal("-1", -1.0)
    assert answers_equal("\\frac{1}{2}", "0.5") and answers_equal("$\\boxed{7}$", 7)
    assert answers_equal("\\text{Evelyn}", "Evelyn") and answers_equal("p - q", "p-q")
    assert not answers_equal("3", "4") and not answers_equal("x", "y") and not answers_equal("25", "250")
    assert normalize_answer(".0000672") == "0.0000672" and normalize_answer("10,\\!080") == "10080"



@pytest.mark.parametrize("expr,numbers,target,exact,ok", [
    ("(100 - 93) + 30", [30, 100, 93], 37, True, True),
    ("100 - (93 - 30) / 3", [30, 100, 93, 3], 79, True, True),
    ("(6 / 4) * 16", [4, 6, 16], 24, True, True),  # exact fractions in between
    ("30 + 100 - 93 = 37", [30, 100, 93], 37, True, True),  # trailing '= value' ignored
    ("30 + 100 - 93", [30, 100, 93], 36, True, False),  # wrong value
    ("30 + 100", [30, 100, 93], 130, True, False),  # not all numbers used (exact)
    ("30 + 100", [30, 100, 93], 130, False, True),  # ... allowed with exact=False
    ("30 + 30 + 100", [30, 100, 93], 160, False, False),  # a number used twice
    ("30 + 7", [30, 100, 93], 37, False, False),  # a number not given
    ("93 / (100 - 100)", [93, 100, 100], 0, True, False),  # division by zero
    ("(30 + 100", [30, 100], 130, True, False),  # unbalanced
    ("30 + + 100", [30, 100], 130, True, False),  # malformed
    ("30 ** 2", [30, 2], 900, True, False),  # power is not allowed
    ("__import__('os')", [1], 1, True, False),  # not evaluated
    ("", [1], 1, True, False),
    ("2 × 3", [2, 3], 6, True, True),
])
def test_verify_countdown(expr, numbers, target, exact, ok):
    assert verify_countdown(expr, numbers, target, exact=exact) is ok


def test_evaluate_countdown():

    assert evaluate_countdown("1 - 2 - 3") == (Fraction(-4), [1, 2, 3])  # left-associative
    assert evaluate_countdown("2 * 3 + 4 * 5")[0] == 26
    for bad in ("(" * 600 + "1" + ")" * 600, "1 / 0", "1 2"):
        with pytest.raises(ValueError):
            evaluate_countdown(bad)



@pytest.mark.parametrize("expr,reason", [
    ("__import__('os').system('false')", "unexpected character"),
    ("2 ** 3", "only + - * / are allowed"),
    ("7 // 2", "only + - * / are allowed"),
    ("-3 + 5", "signs are not allowed"),
    ("1e3", "unexpected character"),
    ("(1 + 2", "malformed expression"),
    ("", "malformed expression"),
    ("3 / (2 - 2)", "division by zero"),
    ("(" * 300 + "1" + ")" * 300, "expression too long"),
])
def test_countdown_rejects_with_a_reason_and_never_raises(expr, reason):
    s = check_countdown(expr, [1, 2, 3], 6)
    assert s.reward == 0.0 and reason in s.reason and not s


def test_countdown_never_evaluates_code(monkeypatch):
    import builtins

    def boom(*a, **k):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", boom)
    assert verify_countdown("( 3 + 5 ) * 3", [3, 5, 3], 24)
    assert not verify_countdown("eval('1')", [1], 1)


def test_countdown_reasons_name_what_is_wrong():
    assert check_countdown("3 + 5", [3, 5, 7], 8).reason.startswith("uses [3, 5]; must use [3, 5, 7]")
    assert "not the target 9" in check_countdown("3 + 5", [3, 5], 9).reason
    assert check_countdown("07 + 1", [7, 1], 8) == Score(1.0)  # leading zeros read as decimal


def test_boxed_and_numeric_scores():
    assert boxed("so \\boxed{\\frac{1}{2}} and \\boxed{3}") == "3"
    assert boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}" and boxed("none") is None
    item = MathItem("m", "q", "0.5", None, "unit")
    assert score(item, "work\n\\boxed{\\frac{1}{2}}").reward == 1.0
    assert score(item, "Answer: 1/2").reward == 1.0
    s = score(item, "Answer: 3")
    assert s.reward == 0.0 and "answered '3'" in s.reason
    assert "no \\boxed" in score(item, "I am not sure").reason


def test_score_dispatches_by_family():
    mc = MCItem("x", "q", ("1", "2", "3", "4"), "C", None, "unit")
    assert score(mc, "because\nAnswer: C").reward == 1.0
    assert score(mc, "Answer: B").reason == "answered B, gold C"
    assert "no valid" in score(mc, "Answer: E").reason  # E is not an option of a 4-option item
    cd = CountdownItem("c", (3, 5, 7), 22, "unit")
    assert score(cd, "Answer: 3 * 5 + 7").reward == 1.0 and score(cd, "no answer").reward == 0.0
    with pytest.raises(ValueError, match="valid families: letter, countdown, numeric"):
        scoring.family(object())


def test_toy_items_score_their_own_gold_response():
    for task in ("toy_mc4", "toy_mc5", "toy_countdown"):
        items = generate(task, 30, "test")
        assert scoring.accuracy(items, [it.response.replace("<|im_end|>", "") for it in items]) == 1.0
        assert scoring.accuracy(items, ["Answer: nothing"] * len(items)) == 0.0
