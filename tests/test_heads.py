"""support.heads: one naming scheme, budgets, random draws, head sets as files."""

from __future__ import annotations

import pytest

from support import heads
from support.artifacts import ProvenanceError, provenance
from support.errors import ParameterError


@pytest.mark.parametrize("spelling", [(3, 5), [3, 5], "L3H5", "a3.h5", {"layer": 3, "head": 5}, " L3H5 "])
def test_every_spelling_names_the_same_head(spelling):
    assert heads.as_head(spelling) == (3, 5)
    assert heads.head_name(spelling) == "L3H5" and heads.eap_name(spelling) == "a3.h5"


@pytest.mark.parametrize("bad", ["L3", "h5", "a3h5", "layer 3 head 5", "L-1H2"])
def test_unknown_head_names_fail_naming_the_spellings(bad):
    with pytest.raises(ValueError, match="valid spellings: 'L3H5', 'a3.h5'"):
        heads.as_head(bad)


def test_check_heads_sorts_dedups_and_names_ranges():
    assert heads.check_heads(["L1H2", (0, 3), "a1.h2"], 2, 4) == [(0, 3), (1, 2)]
    with pytest.raises(ValueError, match=r"layer in \[0, 1\]"):
        heads.check_heads([(2, 0)], 2, 4)
    with pytest.raises(ValueError, match="empty head set"):
        heads.check_heads([], 2, 4)


@pytest.mark.parametrize("m", [0, 9, 2.0, True, "3"])
def test_budget_out_of_range_is_a_parameter_error(m):
    with pytest.raises(ParameterError, match=r"valid choices: an integer in \[1, 8\]"):
        heads.check_budget(m, 2, 4)


def test_random_heads_are_seeded_and_distinct():
    a = heads.random_heads(6, 8, 10, seed=1)
    assert a == heads.random_heads(6, 8, 10, seed=1) and a != heads.random_heads(6, 8, 10, seed=2)
    assert len(set(a)) == 10 and a == sorted(a)
    assert heads.by_layer([(1, 3), (0, 2), (1, 0)]) == {0: [2], 1: [0, 3]}


def test_head_set_round_trip_and_refusal(tmp_path):
    model = {"name": "m", "weights": "w1", "tokenizer": "t1"}
    hs = heads.HeadSet("wavering", [(0, 1), (1, 2)], 2, 4, F=[0.5, 0.25])
    path = heads.write_head_set(heads.head_set_path(tmp_path, "wavering", "toy_mc4"), hs, provenance(model))
    assert path == tmp_path / "head_sets" / "toy_mc4" / "wavering.json"
    back = heads.load_head_set(path, expect_model=model)
    assert back.heads == hs.heads and back.F == hs.F and back.names == ["L0H1", "L1H2"]
    with pytest.raises(ProvenanceError):
        heads.load_head_set(path, expect_model={**model, "weights": "w2"})
