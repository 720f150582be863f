"""support.chapter: one helper validates a chapter's parameters and writes its artifacts with provenance."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from support import chapter
from support.params import ParameterError

PARAMS = dict(profile="ci", run_dir="", seed=0, model_name="toy-qwen2", base_model_name="toy-qwen2-base", n_eval=5,
              n_examples=1, max_new_tokens=16)


def test_bad_parameter_fails_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ParameterError, match="valid choices"):
        chapter.start("00_model_organism", {**PARAMS, "run_dir": str(run), "model_name": "toy-nope"})
    with pytest.raises(ParameterError, match=r"unknown chapter '99_x'; valid choices"):
        chapter.start("99_x", PARAMS)
    assert not run.exists()


def test_tables_carry_model_dataset_ids_and_parameters(toy, tmp_path):
    ch = chapter.start("00_model_organism", {**PARAMS, "run_dir": str(tmp_path)})
    ch.identity = toy.identity()
    df = pd.DataFrame({"task": ["toy_mc4"], "accuracy": [0.5]})
    assert ch.table("00_demo", df, "toy_mc4", ["a", "b"], extra_params={"regime": "wh"}) is df
    assert pd.read_csv(tmp_path / "00_demo.csv").equals(df)
    prov = json.loads((tmp_path / "00_demo.provenance.json").read_text())
    assert prov["model"]["name"] == "toy-qwen2" and prov["model"]["weights"] == toy.identity()["weights"]
    assert prov["dataset"] == "toy_mc4" and prov["example_ids"] == ["a", "b"]
    assert prov["params"]["n_eval"] == 5 and prov["params"]["regime"] == "wh"
    assert prov["git_commit"] and prov["package_version"]
