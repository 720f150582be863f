"""support.selection: Eq. 11-17 on synthetic traces with hand-computed answers, head-set files, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from support import heads
from support import selection as S
from support.artifacts import ProvenanceError, provenance

LOG4 = math.log(4)
T = 20


def col(*segments: tuple[int, float]) -> np.ndarray:
    """A [T] normalised-entropy column from (length, value) segments."""
    out = np.concatenate([np.full(n, v) for n, v in segments])
    assert out.shape == (T,)
    return out


def example_one() -> np.ndarray:
    """[T, 2, 4] raw entropy with known normalised values (min 0, max 1 -> raw = H~ * log 4)."""
    Hn = np.zeros((T, 2, 4))
    Hn[:, 0, 0] = col((20, 0.0))  # steadfast: f=1, r=20, m=0
    Hn[:, 0, 1] = col((9, 0.0), (1, 0.5), (3, 0.0), (7, 0.5))  # f=0.6, m=0.2, but r=9 < c=10
    Hn[:, 0, 2] = col((4, 0.5), (12, 0.0), (4, 0.5))  # f=0.6, r=12, m=0.2 -> steadfast
    Hn[:, 0, 3] = col((20, 1.0))  # wavering: f=1, r=20, m=1
    Hn[:, 1, 0] = col((12, 0.0), (8, 0.9))  # f=0.6, r=12, m=0.36 > mu=0.25 -> not steadfast
    Hn[:, 1, 1] = col((12, 0.96), (8, 0.5))  # high: f=0.6, r=12, m=0.776 >= 0.75 -> wavering
    Hn[:, 1, 2] = col((6, 0.96), (1, 0.5), (6, 0.96), (7, 0.5))  # high f=0.6 but r=6 -> not wavering
    Hn[:, 1, 3] = col((20, 0.5))  # neither
    return Hn * LOG4


def test_normalise_eq11():
    H = example_one()
    assert np.allclose(S.normalise(H), H / LOG4)
    assert np.allclose(S.normalise(H + 0.3), H / LOG4)  # shift-invariant
    assert (S.normalise(np.full((3, 1, 2), 0.7)) == 0).all()  # constant trace: no contrast


def test_longest_run():
    m = np.array([1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)[:, None]
    assert S.longest_run(m).tolist() == [3]


def test_candidates_match_hand_computation():
    H = example_one()
    st = S.example_stats(H, S.STEADFAST)
    assert st.candidate.tolist() == [[True, False, True, False], [False, False, False, False]]
    assert st.r[0, 1] == 9 and st.f[0, 1] == pytest.approx(0.6) and st.m[0, 1] == pytest.approx(0.2)
    assert st.m[1, 0] == pytest.approx(0.36)
    wv = S.example_stats(H, S.WAVERING)
    assert wv.candidate.tolist() == [[False, False, False, True], [False, True, False, False]]
    assert wv.r[1, 2] == 6 and wv.m[1, 1] == pytest.approx(0.776)
    assert np.allclose(st.m_raw, H.mean(0))  # Eq. 17 input is the original entropy
    # run length c matters: with c=9 head (0,1) becomes a candidate
    loose = S.Criteria("steadfast", tau=0.05, alpha=0.6, c=9, mu=0.25)
    assert S.example_stats(H, loose).candidate[0, 1]


def test_frequency_first_ranking_and_tie_breaks():
    """F first; equal F broken by m-bar on the ORIGINAL entropy (asc steadfast, desc wavering)."""
    x1 = np.full((T, 1, 4), 0.5)
    x2 = np.full((T, 1, 4), 0.5)
    # example 1 spans [0, 1]; example 2 spans [0, 0.5]  (raw units)
    x1[:, 0, 0], x1[:, 0, 1] = 0.02, 0.0  # head P=(0,0), head Q=(0,1)
    x2[:, 0, 0], x2[:, 0, 1] = 0.0, 0.02
    x1[0, 0, 3], x2[0, 0, 3] = 1.0, 0.5  # set each example's maximum
    x2[:, 0, 2] = 0.5  # head R=(0,2) never low
    # normalised: P = (0.02, 0.0), Q = (0.0, 0.04) -> normalised means P 0.01 < Q 0.02
    # original:   P = (0.02, 0.0), Q = (0.0, 0.02) -> equal; make Q lower in raw terms:
    x2[:, 0, 1] = 0.015  # normalised Q in x2 = 0.03; raw mean Q = 0.0075 < raw mean P = 0.01
    rk = S.rank_heads([x1, x2], S.Criteria("steadfast", tau=0.05, alpha=0.6, c=10, mu=0.25))
    assert rk.F[0, 0] == rk.F[0, 1] == 1.0
    assert rk.mbar[0, 1] < rk.mbar[0, 0]
    assert rk.order[:2] == [(0, 1), (0, 0)]  # Q before P: original-entropy tie-break, not the normalised one
    eq17 = S.rank_heads([x1, x2], S.Criteria("steadfast", tau=0.05, alpha=0.6, c=10, mu=0.25, tie_break="normalised"))
    assert eq17.mbar[0, 0] == pytest.approx(0.01) and eq17.mbar[0, 1] == pytest.approx(0.015)
    assert eq17.order[:2] == [(0, 0), (0, 1)] and eq17.tie_break == "normalised"  # Eq. 17 read literally: P first
    with pytest.raises(ValueError, match="valid choices: raw, normalised"):
        S.Criteria("steadfast", tau=0.05, alpha=0.6, c=10, mu=0.25, tie_break="eq17")

    # wavering: C=(0,0) at 1.0 and D=(0,1) at 0.97 in both examples -> F equal, C has higher m-bar
    y = np.full((T, 1, 3), 0.2)
    y[0, 0, 2] = 0.0
    y[:, 0, 0], y[:, 0, 1] = 1.0, 0.97
    rkw = S.rank_heads([y, y], S.WAVERING)
    assert rkw.F[0, 0] == rkw.F[0, 1] == 1.0 and rkw.order[:2] == [(0, 0), (0, 1)]
    # frequency beats entropy: a head that is a candidate in 2/2 examples outranks one in 1/2 with lower m-bar
    z1, z2 = np.full((T, 1, 2), 0.5), np.full((T, 1, 2), 0.5)
    z1[:, 0, 0], z2[:, 0, 0] = 0.01, 0.01
    z1[:, 0, 1], z2[:, 0, 1] = 0.0, 0.4  # (0,1): candidate only in z1, lower raw mean in z1
    z2[0, 0, 1] = 0.0
    z1[0, 0, 1] = 1.0
    z2[0, 0, 0] = 1.0
    rkz = S.rank_heads([z1, z2], S.Criteria("steadfast", tau=0.05, alpha=0.6, c=10, mu=0.25))
    assert rkz.F.tolist() == [[1.0, 0.5]] and rkz.order == [(0, 0), (0, 1)]


def test_candidate_warning_when_fewer_than_m_heads_are_candidates():
    rk = S.rank_heads([example_one()], S.STEADFAST)  # steadfast candidates: (0, 0) and (0, 2)
    assert S.candidate_warning(rk, 2) is None
    w = S.candidate_warning(rk, 5)
    assert "only 2 of 8 heads" in w and "the other 3 are picked by the m-bar tie-break" in w
    assert "F=1: 2, F=0: 6" in w


def test_head_sets_budget_and_errors(tmp_path):
    H = example_one()
    sets = S.head_sets([H, H], M=2, seed=3)
    assert sets["steadfast"].heads == [(0, 0), (0, 2)]
    assert sets["wavering"].heads == [(0, 3), (1, 1)]
    assert len(sets["random"]) == 2 and sets["random"].heads == heads.random_heads(2, 4, 2, seed=3)
    assert len(set(heads.random_heads(2, 4, 8, seed=1))) == 8
    with pytest.raises(ValueError, match=r"M=9 .*\[1, 8\]"):
        S.head_sets([H], M=9)
    with pytest.raises(ValueError, match="M=0"):
        heads.random_heads(2, 4, 0)
    with pytest.raises(ValueError, match="empty probe set"):
        S.head_sets([], M=2)
    with pytest.raises(ValueError, match="valid choices: steadfast, wavering"):
        S.Criteria("confident", 0.05, 0.6, 10, 0.25)
    with pytest.raises(ValueError, match="tau must be in"):
        S.Criteria("steadfast", 1.5, 0.6, 10, 0.25)
    with pytest.raises(ValueError, match="run length"):
        S.Criteria("wavering", 0.95, 0.6, 0, 0.75)
    with pytest.raises(ValueError, match=r"\[T, L, H\]"):
        S.rank_heads([np.zeros((3, 4))], S.STEADFAST)


def test_head_set_file_roundtrip_and_model_check(tmp_path):
    sets = S.head_sets([example_one()], M=2)
    model = {"name": "toy-qwen2", "kind": "toy", "weights": "abc", "tokenizer": "def"}
    prov = provenance(model, "toy_mc4", ["a", "b"], {"M": 2})
    path = heads.write_head_set(heads.head_set_path(tmp_path, "wavering"), sets["wavering"], prov)
    assert path == tmp_path / "head_sets" / "wavering.json"
    hs = heads.load_head_set(path, expect_model=model)
    assert hs.heads == sets["wavering"].heads and hs.kind == "wavering" and hs.criteria["tau"] == 0.95
    assert hs.provenance["example_ids"] == ["a", "b"] and hs.provenance["params"] == {"M": 2}
    assert hs.by_layer() == {0: [3], 1: [1]}
    with pytest.raises(ProvenanceError):
        heads.load_head_set(path, expect_model={**model, "weights": "other"})


def test_statistics():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, LOG4, size=(1, 3, 4))
    probe = [np.clip(base + rng.normal(0, 0.01, size=(T, 3, 4)), 0, LOG4) for _ in range(12)]
    sh = S.split_half(probe, n_splits=50, seed=0)
    assert sh.rhos.shape == (50,) and sh.median > 0.95 and sh.iqr[0] <= sh.iqr[1]
    assert sh.half_a.shape == (12,)
    with pytest.raises(ValueError, match="at least 4"):
        S.split_half(probe[:3])
    rk = S.rank_heads(probe, S.WAVERING)
    fd = S.frequency_distribution(rk)
    assert fd.shape == (12,) and (np.diff(fd) <= 0).all()
    ov = S.probe_size_overlap(probe, sizes=(3, 9), ref=6, M=4, n_draws=3)
    assert set(ov) == {3, 9} and all(0 <= v <= 1 for arr in ov.values() for v in arr)
    same = S.probe_size_overlap([probe[0]] * 6, sizes=(2,), ref=4, M=4, n_draws=2)
    assert (same[2] == 1.0).all()
    with pytest.raises(ValueError, match="needs 60 examples"):
        S.probe_size_overlap(probe, sizes=(20, 60), ref=40)
    rows = S.cross_task_overlap({"a": [(0, 0), (0, 1)], "b": [(0, 1), (1, 1)], "c": [(0, 1), (0, 0)]})
    assert [r["shared"] for r in rows] == [1, 2, 1, 1] and rows[-1]["pair"] == "3-way core"
    assert S.overlap([(0, 0), (1, 1)], [(1, 1), (2, 2)]) == 0.5
    assert S.chance_overlap(8, 6, 8) == pytest.approx(8 / 48)
