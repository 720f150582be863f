"""Provenance, atomic writes, refusal of artifacts made with another model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from support import artifacts
from support.artifacts import ProvenanceError

MODEL_A = {"name": "toy-qwen2", "weights": "aaa", "tokenizer": "ttt"}
MODEL_B = {"name": "Qwen/Qwen2.5-0.5B-Instruct", "weights": "main", "tokenizer": "main"}


def test_provenance_record_has_every_field():
    rec = artifacts.provenance(MODEL_A, dataset="toy_mc4", example_ids=["x", "y"], params={"m": 3})
    for key in ("model", "dataset", "example_ids", "params", "package_version", "git_commit", "time"):
        assert key in rec
    assert rec["model"]["name"] == "toy-qwen2" and rec["example_ids"] == ["x", "y"]


def test_json_roundtrip_and_model_check(tmp_path):
    p = artifacts.write_json(tmp_path / "heads.json", {"heads": [[0, 1]]}, artifacts.provenance(MODEL_A))
    assert artifacts.read_json(p, expect_model=MODEL_A)["heads"] == [[0, 1]]
    with pytest.raises(ProvenanceError, match="toy-qwen2"):
        artifacts.read_json(p, expect_model=MODEL_B)
    with pytest.raises(ProvenanceError, match="tokenizer"):
        artifacts.read_json(p, expect_model={**MODEL_A, "tokenizer": "other"})


def test_tensors_roundtrip_and_model_check(tmp_path):
    p = artifacts.write_tensors(tmp_path / "t.safetensors", {"x": torch.arange(4.0)}, artifacts.provenance(MODEL_A))
    t, prov = artifacts.read_tensors(p, expect_model=MODEL_A)
    assert torch.equal(t["x"], torch.arange(4.0)) and prov["model"]["name"] == "toy-qwen2"
    with pytest.raises(ProvenanceError):
        artifacts.read_tensors(p, expect_model=MODEL_B)


def test_table_roundtrip(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    p = artifacts.write_table(tmp_path / "t.csv", df, artifacts.provenance(MODEL_A))
    assert artifacts.read_table(p, expect_model=MODEL_A).equals(df)
    with pytest.raises(ProvenanceError):
        artifacts.read_table(p, expect_model=MODEL_B)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = artifacts.write_json(tmp_path / "a.json", {"v": 1}, {})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", boom)
    with pytest.raises(OSError):
        artifacts.write_json(p, {"v": 2}, {})
    assert json.loads(p.read_text())["v"] == 1
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_missing_artifact_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the chapter"):
        artifacts.read_json(tmp_path / "nope.json")
