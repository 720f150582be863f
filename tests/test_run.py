"""Runner and parameter validation: bad input fails at once naming the valid choices; failures are loud."""

from __future__ import annotations

import nbformat
import pytest

from support import heads, params, run
from support.params import ParameterError


def test_unknown_profile():
    with pytest.raises(ParameterError, match="valid choices: .*ci"):
        run.plan("gpu-please", None, {}, None)


def test_unknown_chapter():
    with pytest.raises(ParameterError, match="valid choices: .*00_model_organism"):
        run.plan("ci", ["99_nope"], {}, None)


def test_unknown_parameter():
    with pytest.raises(ParameterError, match="unknown parameter.*valid"):
        run.plan("ci", ["00_model_organism"], {"n_evaal": 3}, None)


@pytest.mark.parametrize("name,value,msg", [
    ("n_eval", -1, "out of range"),
    ("n_eval", "ten", "expected int"),
    ("n_eval", True, "expected int"),
    ("model_name", "toy-nope", "valid choices"),
    ("seed", 1.5, "expected int"),
])
def test_bad_values_fail_before_running(name, value, msg):
    with pytest.raises(ValueError, match=msg):
        run.plan("ci", ["00_model_organism"], {name: value}, None)


def test_main_exits_2_on_bad_input(capsys):
    assert run.main(["--profile", "nope"]) == 2
    assert "valid choices" in capsys.readouterr().err


def test_every_profile_is_valid_for_every_chapter():
    for prof in params.profiles():
        assert run.plan(prof, None, {}, None)


def test_profiles_cover_every_chapter():
    for prof, spec in params.profiles().items():
        assert set(spec["chapters"]) == set(run.chapters()), prof


def test_notebook_parameters_match_schema():
    import papermill as pm

    for ch in run.chapters():
        names = set(pm.inspect_notebook(str(run.NOTEBOOKS / f"{ch}.ipynb")))
        assert names == set(params.SCHEMA[ch]), ch


def test_validate_missing_and_budget():
    with pytest.raises(ParameterError, match="missing"):
        params.validate("00_model_organism", {"seed": 0})
    with pytest.raises(ParameterError, match=r"\[1, 48\]"):
        heads.check_budget(49, 6, 8)
    heads.check_budget(48, 6, 8)


def _nb(path, src):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(src)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_failure_is_loud_and_others_still_reported(tmp_path, monkeypatch, capsys):
    nbdir, out = tmp_path / "nb", tmp_path / "out"
    nbdir.mkdir()
    _nb(nbdir / "90_good.ipynb", "print('fine')")
    _nb(nbdir / "91_bad.ipynb", "raise RuntimeError('planted failure')")
    _nb(nbdir / "92_after.ipynb", "print('still runs')")
    monkeypatch.setattr(run, "NOTEBOOKS", nbdir)
    for ch in ("90_good", "91_bad", "92_after"):
        monkeypatch.setitem(params.SCHEMA, ch, {"x": params.Param(int), **params.COMMON})
    monkeypatch.setattr(run, "profiles", lambda: {"ci": {"chapters": {}}})
    rc = run.main(["--profile", "ci", "--out", str(out), "--run-dir", str(tmp_path / "runs"), "-p", "x", "2"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "FAILED 91_bad: cell [3]: RuntimeError: planted failure" in text  # [2] is papermill's injected parameters
    assert "90_good" in text and "92_after" in text
    assert (out / "91_bad.ipynb").exists()  # the partial notebook is kept for inspection
    assert text.count(" ok ") + text.count("ok  ") >= 2


@pytest.mark.parametrize("name,value,msg", [
    ("strategies", ["none", "greedy-credit"], "valid choices: .*coupled"),
    ("strategies", [], "must not be empty"),
    ("q", 0.0, "out of range"),
    ("q_ratios", [0.2, 1.5], "out of range"),
    ("head_frac", 0.7, "out of range"),
    ("seeds", [0, -1], "out of range"),
])
def test_chapter_05_bad_values_fail_before_running(name, value, msg):
    with pytest.raises(ValueError, match=msg):
        run.plan("ci", ["05_attention_credit_rl"], {name: value}, None)


def test_optional_ablation_lists_may_be_empty():
    run.plan("ci", ["05_attention_credit_rl"], {"q_ratios": [], "bottom_strategies": []}, None)


def test_chapter_03_runs_after_chapter_05_but_keeps_its_book_place():
    """03 reads 05's GRPO checkpoints: the runner executes it after 05; the book (chapters(), _toc.yml) keeps 00..06."""
    order = [c for c, _ in run.plan("ci", None, {}, None)]
    assert order.index("03_circuits") == order.index("05_attention_credit_rl") + 1
    assert run.chapters().index("03_circuits") < run.chapters().index("04_selective_sft")
    assert [c for c, _ in run.plan("ci", ["03_circuits"], {}, None)] == ["03_circuits"]
    assert run.run_order(["03_circuits", "04_selective_sft"]) == ["03_circuits", "04_selective_sft"]
    toc = (run.PROJECT_ROOT / "_toc.yml").read_text()
    assert toc.index("03_circuits") < toc.index("04_selective_sft")


@pytest.mark.parametrize("chapter,name,value,msg", [
    ("03_circuits", "pairs", "toy_mc4", "valid choices: .*aime24"),
    ("03_circuits", "metric", "cosine", "valid choices: .*kl"),
    ("06_ablations", "ops", ["ablate", "shuffle"], "valid choices: .*scale_up"),
    ("06_ablations", "modes", ["thinking"], "valid choices: .*no_think"),
])
def test_chapters_03_and_06_bad_values_fail_before_running(chapter, name, value, msg):
    with pytest.raises(ValueError, match=msg):
        run.plan("ci", [chapter], {name: value}, None)


def test_memory_plan_fits_the_colab_t4_and_names_what_does_not_fit_an_a100(capsys):
    """`python -m support.run --memory`: each model-running chapter's heavy step under a real profile, estimated from
    the model's shape (offline) with the chapters' own guards; the colab-t4 profile must fit a 16 GB T4."""
    t4 = run.memory_plan("colab-t4")
    assert {r["chapter"] for r in t4} == {"01_tracing", "03_circuits", "04_selective_sft", "05_attention_credit_rl"}
    assert all(r["fits"] for r in t4), [r for r in t4 if not r["fits"]]
    a100 = {r["chapter"]: r for r in run.memory_plan("a100")}
    assert not a100["04_selective_sft"]["fits"]  # full SFT of Qwen3-8B: ~128 GB of AdamW state (issue 17: sharding)
    assert a100["05_attention_credit_rl"]["fits"] and a100["01_tracing"]["fits"]
    assert run.main(["--profile", "colab-t4", "--memory"]) == 0
    assert "05_attention_credit_rl" in capsys.readouterr().out
    assert run.main(["--profile", "ci", "--memory"]) == 2
    assert "no card for profile 'ci'; valid choices: colab-t4, a100" in capsys.readouterr().err
