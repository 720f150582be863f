"""support.ablations: conditions with count-matched random controls, think-mode prompts, sampling on the real
organism, and the paired trade-off table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from support import ablations as A
from support.errors import ParameterError
from support.interventions import Ablate, Scale
from support.toydata import generate

SETS = {"a": [(0, 1), (2, 3)], "b": ["L4H4", "L5H5"], "c": [(1, 1), (1, 2), (1, 3)]}


def test_conditions_cover_every_set_and_op_with_count_matched_random_draws():
    conds = A.conditions(SETS, ["ablate", "scale_up", "scale_down"], 8, 8, n_random_draws=3, seed=7)
    assert conds[0].name == "baseline" and conds[0].interventions() == []
    named = [c for c in conds if not c.is_random and c.op != "none"]
    assert len(named) == 9 and {c.head_set for c in named} == set(SETS)
    rand = [c for c in conds if c.is_random]
    assert sorted({len(c.heads) for c in rand}) == [2, 3]  # sets "a" and "b" (both 2 heads) share their draws
    assert len(rand) == 2 * 3 and all(c.op == "ablate" for c in rand)
    draws = [c.heads for c in rand if len(c.heads) == 2]
    assert len(set(draws)) == 3  # distinct draws
    again = A.conditions(SETS, ["ablate"], 8, 8, n_random_draws=3, seed=7)
    assert [c.heads for c in again if c.is_random] == [c.heads for c in rand]  # seeded
    ops = {c.op: c.interventions()[0] for c in named if c.head_set == "b"}
    assert isinstance(ops["ablate"], Ablate) and ops["ablate"].heads == ((4, 4), (5, 5))
    assert isinstance(ops["scale_up"], Scale) and ops["scale_up"].factor == 1.3
    assert ops["scale_down"].factor == 0.5


def test_conditions_take_other_factors_and_no_random_ops():
    conds = A.conditions({"a": SETS["a"]}, ["scale_up"], 8, 8, n_random_draws=2, random_ops=[],
                         factors={"scale_up": 2.0, "scale_down": 0.25})
    assert [c.name for c in conds] == ["baseline", "a · scale ×2"]


@pytest.mark.parametrize("call", [
    lambda: A.conditions(SETS, ["zero"], 8, 8),
    lambda: A.conditions(SETS, [], 8, 8),
    lambda: A.conditions(SETS, ["ablate"], 8, 8, random_ops=["nope"]),
    lambda: A.mode_prompt(generate("toy_mc4", 1)[0], "maybe"),
])
def test_bad_choices_are_one_parameter_error(call):
    with pytest.raises(ParameterError, match="valid choices"):
        call()


def test_mode_prompt_puts_the_flag_at_the_end_of_the_user_turn():
    it = generate("toy_mc4", 1)[0]
    on, off = A.mode_prompt(it, "think"), A.mode_prompt(it, "no_think")
    assert on.endswith("/think<|im_end|>\n<|im_start|>assistant\n")
    assert off.endswith("/no_think<|im_end|>\n<|im_start|>assistant\n")
    assert on.replace("/think", "/no_think") == off


def test_mode_prompt_of_a_real_item_uses_enable_thinking():
    from support.models import load_tokenizer, resolve
    from support.records import MCItem

    tok = load_tokenizer(*resolve("toy-qwen2"), "toy-qwen2")  # a real tokenizer; the templates below are Jinja
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "<|im_start|>assistant\n{% if enable_thinking is defined and enable_thinking is false %}"
                         "<think>\n\n</think>\n\n{% endif %}")
    it = MCItem(id="q1", question="What is 2 + 2?", options=("3", "4"), answer="B", rationale=None, source="test")
    on, off = A.mode_prompt(it, "think", tok), A.mode_prompt(it, "no_think", tok)
    assert on.startswith("<|im_start|>system\n") and on.endswith("assistant\n")
    assert off.endswith("<think>\n\n</think>\n\n") and "What is 2 + 2?" in off
    with pytest.raises(ParameterError, match="template='model'"):
        A.mode_prompt(it, "think", tok, template="chatml")
    tok.chat_template = tok.chat_template.replace("enable_thinking", "other_switch")  # a template without the switch
    assert A.mode_prompt(it, "no_think", tok).endswith("assistant\n")
    with pytest.raises(ParameterError, match="no_think"):
        A.mode_prompt(it, "think", tok)


def grid_frame():
    """3 problems × 4 samples in one cell: baseline, a set, and two random draws of its size."""
    rows = []
    counts = {"baseline": [2, 2, 2], "s · ablate (×0)": [0, 0, 1], "random 2 #0 · ablate (×0)": [2, 1, 2],
              "random 2 #1 · ablate (×0)": [1, 2, 3]}
    for cond, cs in counts.items():
        for i, c in enumerate(cs):
            rows.append({"condition": cond, "task": "t", "mode": "think", "item": f"p{i}", "c": c, "n": 4,
                         "tokens": 10.0})
    conds = [A.Condition("baseline", "baseline", "none"),
             A.Condition("s · ablate (×0)", "s", "ablate", ((0, 0), (0, 1)), 0.0),
             A.Condition("random 2 #0 · ablate (×0)", "random 2", "ablate", ((1, 0), (1, 1)), 0.0, 0),
             A.Condition("random 2 #1 · ablate (×0)", "random 2", "ablate", ((2, 0), (2, 1)), 0.0, 1)]
    return pd.DataFrame(rows), conds


def test_tradeoff_is_paired_with_its_standard_error_and_random_range():
    grid, conds = grid_frame()
    tr = A.tradeoff(grid, conds, z=2.0).set_index("condition")
    d = np.array([0, 0, 1]) / 4 - 0.5  # per-problem differences
    assert tr.loc["s · ablate (×0)", "Δ"] == pytest.approx(d.mean())
    assert tr.loc["s · ablate (×0)", "SE(Δ)"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert tr.loc["s · ablate (×0)", "verdict"] == "loss" and tr.loc["baseline", "verdict"] == "–"
    assert tr.loc["s · ablate (×0)", "random Δ min"] == pytest.approx(-1 / 12)
    assert tr.loc["s · ablate (×0)", "random Δ max"] == pytest.approx(0.0)
    assert bool(tr.loc["s · ablate (×0)", "beyond random"])
    assert tr.loc["random 2 #1 · ablate (×0)", "verdict"] == "–"  # Δ = 0
    view = A.tradeoff_view(A.tradeoff(grid, conds))
    assert view.loc["s · ablate (×0)", ("think", "t")].endswith("▼") and view.loc["baseline", ("think", "t")] == "0.50"
    gl = A.gains_and_losses(A.tradeoff(grid, conds)).set_index("condition")
    assert gl.loc["s · ablate (×0)", "losses"] == "t/think" and gl.loc["s · ablate (×0)", "gains"] == "none"
    assert gl.loc["s · ablate (×0)", "beyond its random draws"] == "t/think (below them)"


def test_sample_grid_and_coverage_on_the_organism():
    hf, tok = A.generation_model("toy-qwen2")
    assert hf.config._attn_implementation == "sdpa"
    its = generate("toy_countdown", 2, "test")
    conds = A.conditions({"l0": [(0, h) for h in range(8)]}, ["ablate"], 8, 8, n_random_draws=0)
    grid = A.sample_grid(hf, tok, conds, {("toy_countdown", "no_think"): its}, 2, max_new_tokens=6)
    assert len(grid) == 4 and set(grid.condition) == {"baseline", "l0 · ablate (×0)"}
    assert (grid.n == 2).all() and grid.c.between(0, 2).all() and (grid.tokens <= 6).all()
    again = A.sample_grid(hf, tok, conds, {("toy_countdown", "no_think"): its}, 2, max_new_tokens=6)
    pd.testing.assert_frame_equal(grid, again)  # the same seed, the same samples
    cov = A.coverage_table({"x": np.array([[1, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)}, ks=[1, 4])
    assert list(cov.pass_at_k) == [0.25, 0.5] and cov.pass_se.iloc[1] == pytest.approx(0.5)


def test_the_sdpa_generation_model_computes_the_bridge_models_logits(toy):
    hf, tok = A.generation_model("toy-qwen2")
    ids = tok(generate("toy_mc4", 1)[0].prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, toy.hf_model(ids).logits, atol=1e-4)
