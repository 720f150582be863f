"""support.synthesis (head-set inventory, overlaps, entropy taxonomy, circuit change), support.toydata's lookup
pairs and support.finetune.load_run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import synthesis as S
from support.artifacts import provenance
from support.errors import ParameterError
from support.heads import HeadSet, head_set_path, write_head_set

MODEL = {"name": "m", "kind": "toy", "weights": "w1", "tokenizer": "t1"}


def write_set(run_dir, kind, task, heads, model=MODEL, **prov):
    hs = HeadSet(kind=kind, heads=heads, n_layers=4, n_heads=4)
    write_head_set(head_set_path(run_dir, kind, task), hs, provenance(model, task, None, {}, **prov))


def test_set_task_routes_each_kind_to_the_chapter_that_writes_it():
    assert S.set_task("wavering", "a", "b") == "a" and S.set_task("global", "a", "b") == "b"
    assert S.set_task("emergent", "a", "b") == S.CIRCUIT_TASK
    with pytest.raises(ParameterError, match="valid choices"):
        S.set_task("entropic", "a", "b")


def test_load_sets_names_every_missing_set_and_its_chapter(tmp_path):
    write_set(tmp_path, "wavering", "t", [(0, 1)])
    got = S.load_sets(tmp_path, {"wavering": "t"}, MODEL)
    assert got["wavering"].heads == [(0, 1)]
    with pytest.raises(ParameterError) as e:
        S.load_sets(tmp_path, {"wavering": "t", "global": "t", "emergent": "toy_lookup"}, MODEL)
    assert "05_attention_credit_rl" in str(e.value) and "03_circuits" in str(e.value)
    with pytest.raises(ParameterError, match="re-run chapter 02_head_selection"):
        S.load_sets(tmp_path, {"wavering": "t"}, {**MODEL, "weights": "other"})


def test_overlaps_leave_structural_pairs_out_of_the_fdr_family():
    sets = {"circuit": [(0, 0), (0, 1), (1, 1)], "emergent": [(0, 0), (0, 1)], "global": [(3, 3), (3, 2)],
            "local": [(0, 0), (1, 0)]}
    tab = S.overlaps(sets, 4, 4, n_draws=500)
    row = tab.set_index(["a", "b"])
    assert row.loc[("circuit", "emergent"), "structural"].startswith("emergent")
    assert np.isnan(row.loc[("circuit", "emergent"), "q_bh"]) and np.isnan(row.loc[("global", "local"), "q_bh"])
    assert tab.q_bh.notna().sum() == len(tab) - 2
    J = S.overlap_matrix(tab, list(sets))
    assert np.allclose(J, J.T) and J[0, 1] == pytest.approx(2 / 3) and (np.diag(J) == 1).all()


def test_position_finds_a_set_at_either_end_of_the_ranking():
    vals = np.arange(16, dtype=float).reshape(4, 4)
    top, bottom = [(3, 1), (3, 2), (3, 3)], [(0, 0), (0, 1), (0, 2)]
    hi, lo = S.position(top, vals, 2000), S.position(bottom, vals, 2000)
    assert hi["mean percentile"] == pytest.approx(100 * 14 / 15) and hi["p higher"] < 0.01 < hi["p lower"]
    assert lo["p lower"] < 0.01 < lo["p higher"] and hi["null mean"] == pytest.approx(50, abs=3)
    assert S.percentiles(np.array([1.0, 1.0, 2.0])).tolist() == [25.0, 25.0, 100.0]


def entropy_run(tmp_path):
    """Fake chapter-01 traces: head (3, 3) always high entropy, (0, 0) always low, the rest in between."""
    from support.tracing import Trace, save_trace, trace_dir, trace_path

    d = trace_dir(tmp_path, "t", "raw")
    ids = [f"x{i}" for i in range(6)]
    g = torch.Generator().manual_seed(0)
    for i in ids:
        H = 0.5 + 0.1 * torch.rand(20, 4, 4, generator=g)
        H[:, 3, 3], H[:, 0, 0] = 2.0, 0.0
        tr = Trace(id=i, logits=torch.zeros(20, 4, 4, 2), entropy=H, tokens=[1], text="", answer=None,
                   stop_reason="eos", labels=("A", "B"), option_ids=torch.zeros(2, dtype=torch.long),
                   final_logits=torch.zeros(20, 2))
        save_trace(trace_path(d, i), tr, provenance(MODEL, "t", [i], {}))
    crit = {k: {"kind": k, "tau": 0.05 if k == "steadfast" else 0.95, "alpha": 0.6, "c": 10,
                "mu": 0.25 if k == "steadfast" else 0.75} for k in ("steadfast", "wavering")}
    hs = HeadSet(kind="wavering", heads=[(3, 3)], n_layers=4, n_heads=4,
                 provenance={**provenance(MODEL, "t", ids, {"readout": "raw"}), "criteria": crit})
    return hs


def test_entropy_scores_and_taxonomy_from_traces(tmp_path):
    hs = entropy_run(tmp_path)
    sc = S.entropy_scores(tmp_path, hs, MODEL).set_index(["layer", "head"])
    assert sc.loc[(3, 3), "mbar percentile"] == 100.0 and sc.loc[(0, 0), "mbar percentile"] == 0.0
    assert sc.loc[(3, 3), "F wavering"] == 1.0 and sc.loc[(0, 0), "F steadfast"] == 1.0
    tax = S.taxonomy({"hi": [(3, 3), (3, 2)], "lo": [(0, 0)]}, sc.reset_index(), [(3, 3)], [(0, 0)], n_draws=500)
    t = tax.set_index("set")
    assert t.loc["hi", "shared with wavering"] == 1 and t.loc["lo", "shared with steadfast"] == 1
    assert t.loc["lo", "mean percentile"] == 0.0
    with pytest.raises(ParameterError, match="chapter 02"):
        S.entropy_scores(tmp_path, HeadSet(kind="global", heads=[(0, 0)], n_layers=4, n_heads=4), MODEL)


def test_circuit_change_of_identical_and_moved_circuits():
    from support.circuits import Circuit

    def circ(edges, nodes):
        return Circuit(edges=edges, scores=[1.0] * len(edges), nodes=nodes, n_layers=1, n_heads=2, n_kv_heads=2)

    a = circ([("input", "a0.h0<q>"), ("a0.h0", "logits")], ["input", "a0.h0", "logits"])
    b = circ([("input", "a0.h1<q>"), ("a0.h1", "logits")], ["input", "a0.h1", "logits"])
    same = S.circuit_change(a, a)
    assert same["head jaccard"] == 1.0 and same["edge jaccard"] == 1.0 and np.isnan(same["edge-score spearman"])
    moved = S.circuit_change(a, b)
    assert moved["head jaccard"] == 0.0 and moved["heads added"] == 1 and moved["heads removed"] == 1

    class G:  # the two fields of support.circuits.Graph that circuit_change reads
        def __init__(self, s):
            self.scores, self.edge_mask = torch.tensor(s), torch.ones(2, 2, dtype=torch.bool)

    assert S.circuit_change(a, a, G([[1.0, 2.0], [3.0, 4.0]]), G([[1.0, 2.0], [3.0, 5.0]]))["edge-score spearman"] == 1


def test_sft_runs_pick_the_budget_with_most_seeds(tmp_path):
    for name in ["full-s0", "full-s1", "wh-M6-s0", "wh-M6-s1", "wh-M3-s0", "random-M6-s0", "random-draw1-M6-s0",
                 "sh-M6-s0"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "final.safetensors").write_bytes(b"")
    (tmp_path / "sh-M6-s1").mkdir()  # unfinished: no final tensors
    runs = S.sft_runs(tmp_path, ["full", "wh", "random", "sh", "lora"])
    assert [p.name for p in runs["full"]] == ["full-s0", "full-s1"]
    assert [p.name for p in runs["wh"]] == ["wh-M6-s0", "wh-M6-s1"]
    assert [p.name for p in runs["random"]] == ["random-M6-s0"] and [p.name for p in runs["sh"]] == ["sh-M6-s0"]
    assert runs["lora"] == [] and S.new_heads([(0, 1), (2, 2)], ["L0H1"]) == [(2, 2)]

def test_load_run_rebuilds_a_trained_shft_model(tmp_path):
    from support import finetune as ft
    from support import training as tr
    from support.models import load_model, load_plain
    from support.toydata import generate

    ident = load_model("toy-qwen2").identity()
    heads = [(1, 0), (3, 3)]
    hf, tok = load_plain("toy-qwen2", dtype="float32")
    prep = ft.prepare("wh", hf, heads)
    data = tr.build_dataset(generate("toy_mc4", 2, "train"), tok, 256, "organism")
    tr.train(hf, data, tr.TrainConfig(lr=1e-2, max_steps=2, grad_accum=1), out_dir=tmp_path,
             prov=provenance(ident, "toy_mc4", None, {"regime": "wh", "heads": heads, "train_seed": 0}))
    trained = prep.finish(merge=True)
    back, _, prov = ft.load_run("toy-qwen2", tmp_path, ident)
    assert prov["params"]["regime"] == "wh"
    for (n, p), (_, q) in zip(trained.named_parameters(), back.named_parameters()):
        assert torch.equal(p, q), n
    base, _ = load_plain("toy-qwen2", dtype="float32")
    assert not torch.equal(base.model.layers[1].self_attn.q_proj.weight, back.model.layers[1].self_attn.q_proj.weight)
    with pytest.raises(FileNotFoundError):
        ft.load_run("toy-qwen2", tmp_path / "nothing")


def test_question1_inputs_name_the_chapters_to_run_first(tmp_path):
    from support.artifacts import write_tensors

    with pytest.raises(ParameterError) as e:
        S.question1_inputs(tmp_path, "t", ["full", "wh"], MODEL)
    assert "03_circuits" in str(e.value) and "04_selective_sft" in str(e.value) and "'wh'" in str(e.value)
    (tmp_path / "04_sft" / "t" / "full-s0").mkdir(parents=True)
    write_tensors(tmp_path / "04_sft" / "t" / "full-s0" / "final.safetensors", {"x": torch.zeros(1)},
                  provenance({**MODEL, "weights": "other"}, "t", None, {}))
    with pytest.raises(ParameterError, match="full-s0 trained another model"):
        S.question1_inputs(tmp_path, "t", ["full"], MODEL)
