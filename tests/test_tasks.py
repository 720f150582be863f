"""Tests for support.tasks: real-data loaders (counts from shared/data/README.md), converters, malformed-row policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import scoring
from support import tasks as T
from support.tasks import CountdownItem, MalformedRowError, MathItem, MCItem

# --------------------------------------------------------------------------------------------------- real data

# name -> (split, rows in shared/data/README.md, record type)
COUNTS = {
    "gsm8k": ("test", 1319, MathItem),
    "aqua_rat": ("test", 254, MCItem),
    "arc_challenge": ("test", 1170, MCItem),
    "arc_easy": ("test", 2376, MCItem),
    "commonsenseqa": ("dev", 1221, MCItem),
    "qasc": ("dev", 926, MCItem),
    "math500": ("test", 500, MathItem),
    "aime24": ("test", 30, MathItem),
    "aime25": ("test", 30, MathItem),
    "amc23": ("test", 40, MathItem),
    "countdown": ("test", 256, CountdownItem),
}
EXTRA_SPLITS = {("gsm8k", "train"): 7473, ("gsm8k", "test_socratic"): 1319, ("aqua_rat", "dev"): 254,
                ("arc_challenge", "dev"): 299, ("arc_easy", "dev"): 570}
# Known malformed BBH rows in the upstream data (a free-text target on an MC task; a truncated 1-option input).
BBH_KNOWN_SKIPS = {"movie_recommendation": [163], "ruin_names": [99, 144], "snarks": [88]}


@pytest.fixture(scope="module")
def real_root() -> Path:
    """The default data root (RH_DATA_DIR unset) must exist: the data is guaranteed present, so fail, never skip."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RH_DATA_DIR", raising=False)
        root = T.data_root()
    assert root == (T.project_root().parent / "shared" / "data").resolve()
    assert root.is_dir(), f"shared data folder {root} is missing (expected ../shared/data next to the repo)"
    return root


@pytest.fixture(scope="module")
def loaded(real_root) -> dict[str, T.LoadResult]:
    """Every real dataset, loaded once through the default resolution with source='local'."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RH_DATA_DIR", raising=False)
        return {name: T.load_task(name, source="local") for name in T.DATASETS if name in COUNTS
                or name.startswith("bbh:") or name == "wikitext2"}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_counts(loaded, name):
    split, n, kind = COUNTS[name]
    res = loaded[name]
    assert res.split == split and res.origin.startswith("local:")
    assert res.skipped == [], f"{name}: unexpected malformed rows {res.skipped[:5]}"
    assert len(res) == n
    assert all(isinstance(it, kind) for it in res)
    assert len({it.id for it in res}) == n, "ids must be unique"


@pytest.mark.parametrize("name,split", sorted(EXTRA_SPLITS))
def test_real_extra_splits(real_root, monkeypatch, name, split):
    monkeypatch.delenv("RH_DATA_DIR", raising=False)
    res = T.load_task(name, split=split, source="local")
    assert len(res) == EXTRA_SPLITS[(name, split)] and not res.skipped


def test_mc_gold_letters_valid(loaded):
    for name in ("aqua_rat", "arc_challenge", "arc_easy", "commonsenseqa", "qasc"):
        for it in loaded[name]:
            assert it.answer in it.letters and it.question and all(it.options), (name, it.id)
            assert it.letters == "ABCDEFGH"[: len(it.options)]
    assert {len(it.options) for it in loaded["aqua_rat"]} == {5}
    assert {len(it.options) for it in loaded["commonsenseqa"]} == {5}
    assert {len(it.options) for it in loaded["qasc"]} == {8}
    assert {len(it.options) for it in loaded["arc_challenge"]} == {3, 4, 5}  # 3- and 5-option items exist


def test_spot_checks(loaded):
    g = loaded["gsm8k"][0]
    assert g.answer == "18" and g.solution.endswith("every day at the farmer’s market.") and "####" not in g.solution
    assert all("," not in it.answer for it in loaded["gsm8k"])
    a = loaded["aqua_rat"][0]
    assert a.options[0] == "5(√3 + 1)" and a.answer == "A" and a.rationale.startswith("Explanation")
    c = loaded["arc_challenge"][0]
    assert (c.id, c.answer, c.options[2]) == ("Mercury_7175875", "C", "Planetary days will become shorter.")
    q = loaded["qasc"][0]
    assert q.answer == "F" and q.rationale == "Climate is generally described in terms of local weather conditions"
    assert loaded["commonsenseqa"][0].options[0] == "bank"
    cd = loaded["countdown"][0]
    assert (cd.numbers, cd.target) == ((30, 100, 93), 23)
    assert all(len(it.numbers) == 3 for it in loaded["countdown"])


def test_arc_numeric_labels_mapped(real_root):
    ids = set()
    for line in (real_root / "arc" / "ARC-Challenge-Test.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["question"]["choices"][0]["label"] == "1":
            ids.add(row["id"])
    assert len(ids) == 22  # 21 four-option + 1 three-option items use labels "1".."n"
    items = [it for it in T.load_task("arc_challenge", source="local") if it.id in ids]
    assert len(items) == 22 and all(it.answer in it.letters for it in items)


def test_math_answers(loaded):
    aime24 = {it.id: it for it in loaded["aime24"]}
    assert aime24["aime24-67"].answer == "25"  # stored as the zero-padded string "025"
    assert scoring.answers_equal("025", 25) and scoring.answers_equal(25, 25.0) and scoring.answers_equal("025", 25.0)
    assert loaded["aime25"][0].answer == "70"
    assert loaded["amc23"][0].answer == "27"  # stored as the float 27.0
    m = loaded["math500"]
    assert m[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and m[0].id == "math500-test/precalculus/807.json"
    assert all(it.solution for it in m)


def test_bbh(loaded, real_root):
    assert len(T.bbh_tasks()) == 27
    assert sorted(p.stem for p in (real_root / "bbh" / "bbh").glob("*.json")) == sorted(T.bbh_tasks())
    total = 0
    for task in T.bbh_tasks():
        res = loaded[f"bbh:{task}"]
        total += len(res) + len(res.skipped)
        assert [i for i, _ in res.skipped] == BBH_KNOWN_SKIPS.get(task, []), task
        for it in res:
            if isinstance(it, MCItem):
                assert it.answer in it.letters and "(A)" not in it.question and not it.question.endswith("Options:")
    assert total == 6511
    date = loaded["bbh:date_understanding"][0]
    assert isinstance(date, MCItem) and date.answer == "B" and date.options[1] == "12/25/1937"
    assert len(loaded["bbh:geometric_shapes"][0].options) == 10
    assert max(len(it.options) for it in loaded["bbh:reasoning_about_colored_objects"]) == 18
    boolean = loaded["bbh:boolean_expressions"][0]
    assert isinstance(boolean, MathItem) and boolean.answer in ("True", "False")


def test_bbh_cot_prompts(real_root):
    for task in T.bbh_tasks():
        p = T.bbh_cot_prompt(task)
        assert "canary" not in p and not p.startswith("-----"), task
        assert p.count("A: Let's think step by step.") == 3, task
    with pytest.raises(ValueError, match="valid choices"):
        T.bbh_cot_prompt("nope")


def test_wikitext(loaded, real_root):
    valid, test = T.load_wikitext("valid"), T.load_wikitext("test")
    assert len(valid) == 2461 and len(test) == 2891  # non-empty of 3760 / 4358 lines
    assert valid[0] == "= Homarus gammarus =" and all(ln and ln == ln.strip() for ln in valid)
    assert loaded["wikitext2"].items == valid
    assert T.load_wikitext("validation", limit=3) == valid[:3]
    with pytest.raises(ValueError):
        T.load_wikitext("train")


# --------------------------------------------------------------------------------------------------- converters


def test_arc_hub_layout_row():
    row = {"id": "X1", "question": "Which is a gas?",
           "choices": {"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]}, "answerKey": "2"}
    it = T.mc_from_choices(row, "arc_challenge", 0)
    assert it == MCItem("X1", "Which is a gas?", ("rock", "steam", "ice"), "B", None, "arc_challenge")
    local = {"id": "X1", "question": {"stem": "Which is a gas?", "choices": [
        {"text": t, "label": lab} for t, lab in zip(["rock", "steam", "ice"], "ABC")]}, "answerKey": "B"}
    assert T.mc_from_choices(local, "arc_challenge", 0) == it
    five = dict(row, choices={"text": list("vwxyz"), "label": list("ABCDE")}, answerKey="E")
    assert T.mc_from_choices(five, "arc_challenge", 0).letters == "ABCDE"


def test_hub_fallback_uses_same_converters(tmp_path, monkeypatch):
    """With no local file, source='auto' goes to the hub; rows are mapped by the same converters (hub faked)."""
    calls = []

    def fake_hub(hub_id, config, split):
        calls.append((hub_id, config, split))
        rows = {"allenai/ai2_arc": [{"id": "h0", "question": "Q?", "choices": {"text": ["a", "b", "c", "d"],
                                                                                "label": list("ABCD")},
                                     "answerKey": "D"}],
                "Jiayi-Pan/Countdown-Tasks-3to4": [{"nums": [3, 5, 7, 2], "target": 24}],
                "openai/gsm8k": [{"question": "1+1?", "answer": "one plus one\n#### 2"}]}[hub_id]
        yield from ((i, r, None) for i, r in enumerate(rows))

    monkeypatch.setenv("RH_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(T, "_hub_rows", fake_hub)
    arc = T.load_task("arc_challenge", split="validation")
    assert arc.origin == "hub:allenai/ai2_arc/ARC-Challenge" and arc[0].answer == "D"
    cd = T.load_task("countdown")
    assert cd[0] == CountdownItem("countdown-0", (3, 5, 7, 2), 24, "countdown")
    assert T.load_task("gsm8k", source="hub")[0].answer == "2"
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "validation"),
                     ("Jiayi-Pan/Countdown-Tasks-3to4", None, "train"), ("openai/gsm8k", "main", "test")]
    with pytest.raises(FileNotFoundError, match="RH_DATA_DIR"):
        T.load_task("arc_challenge", source="local")


# --------------------------------------------------------------------------------------------------- malformed rows

ARC_OK = {"id": "ok", "question": {"stem": "Q?", "choices": [{"text": t, "label": lab} for t, lab in
                                                               zip("wxyz", "ABCD")]}, "answerKey": "B"}

# (dataset, relative file, bad line (str = raw text, dict = JSON object), reason substring)
MALFORMED = [
    ("arc_challenge", "arc/ARC-Challenge-Test.jsonl", '{"id": "x", "question": ', "unparseable JSON"),
    ("arc_challenge", "arc/ARC-Challenge-Test.jsonl",
     {**ARC_OK, "question": {**ARC_OK["question"], "stem": "  "}}, "empty question"),
    ("arc_challenge", "arc/ARC-Challenge-Test.jsonl", {k: v for k, v in ARC_OK.items() if k != "answerKey"},
     "missing answer"),
    ("arc_challenge", "arc/ARC-Challenge-Test.jsonl", {**ARC_OK, "answerKey": "E"}, "not among labels"),
    ("arc_challenge", "arc/ARC-Challenge-Test.jsonl",
     {"id": "h", "question": "Q?", "choices": {"text": list("wxyz"), "label": list("ABC")}, "answerKey": "A"},
     "4 options but 3 labels"),
    ("arc_easy", "arc/ARC-Easy-Test.jsonl",
     {**ARC_OK, "question": {"stem": "Q?", "choices": [{"text": "w", "label": "A"}, {"text": "x", "label": "A"}]}},
     "labels"),
    ("commonsenseqa", "commonsenseqa/dev_rand_split.jsonl", ARC_OK, "expected 5 options"),
    ("qasc", "qasc/dev.jsonl", ARC_OK, "expected 8 options"),
    ("aqua_rat", "aqua_rat/test.json", {"question": "Q?", "options": ["A)1", "B)2", "C)3", "D)4", "E)5"],
                                        "rationale": "r", "correct": "F"}, "not among labels"),
    ("aqua_rat", "aqua_rat/test.json", {"question": "Q?", "options": ["A)1", "B)2", "C)3", "D)4"],
                                        "rationale": "r", "correct": "A"}, "expected 5 options"),
    ("aqua_rat", "aqua_rat/test.json", {"question": "Q?", "options": ["A)1", "2", "C)3", "D)4", "E)5"],
                                        "correct": "A"}, "prefix"),
    ("aqua_rat", "aqua_rat/test.json", {"question": "", "options": ["A)1", "B)2", "C)3", "D)4", "E)5"],
                                        "correct": "A"}, "empty question"),
    ("gsm8k", "gsm8k/test.jsonl", {"question": "Q?", "answer": "no final marker"}, "missing answer"),
    ("gsm8k", "gsm8k/test.jsonl", {"answer": "x\n#### 3"}, "empty question"),
    ("math500", "math500/test.jsonl", {"problem": "P?", "answer": ""}, "missing answer"),
    ("aime25", "aime25/test.jsonl", {"problem": "P?"}, "missing answer"),
    ("amc23", "amc23/test.jsonl", {"answer": 3.0}, "empty problem"),
    ("countdown", "countdown/countdown_cd3_test.jsonl", {"input": "1,x,3", "output": "4"}, "not integers"),
    ("countdown", "countdown/countdown_cd3_test.jsonl", {"input": "1,2,3"}, "not integers"),
]
GOOD = {
    "arc_challenge": ARC_OK, "arc_easy": ARC_OK,
    "commonsenseqa": {**ARC_OK, "question": {"stem": "Q?", "choices": [{"text": t, "label": lab}
                                                                      for t, lab in zip("vwxyz", "ABCDE")]}},
    "qasc": {**ARC_OK, "question": {"stem": "Q?", "choices": [{"text": t, "label": lab}
                                                             for t, lab in zip("stuvwxyz", "ABCDEFGH")]},
             "fact1": "f1", "fact2": "f2"},
    "aqua_rat": {"question": "Q?", "options": ["A)1", "B) 2", "C)3", "D)4", "E)5"], "rationale": "r", "correct": "B"},
    "gsm8k": {"question": "Q?", "answer": "because\n#### 1,000"},
    "math500": {"problem": "P?", "answer": "\\frac{1}{2}", "solution": "s", "unique_id": "u"},
    "aime25": {"problem": "P?", "answer": 7, "id": "0"},
    "amc23": {"problem": "P?", "answer": 7.0, "id": 0},
    "countdown": {"input": "1,2,3", "output": "6"},
}


def _write(path: Path, lines: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))


@pytest.mark.parametrize("name,rel,bad,reason", MALFORMED, ids=[f"{m[0]}-{m[3]}" for m in MALFORMED])
def test_malformed_skip_and_raise(tmp_path, monkeypatch, name, rel, bad, reason):
    monkeypatch.setenv("RH_DATA_DIR", str(tmp_path))
    _write(tmp_path / rel, [GOOD[name], bad, GOOD[name]])
    res = T.load_task(name)  # on_error="skip" is the default
    assert res.origin == f"local:{tmp_path / rel}"
    assert len(res) == 2 and len(res.skipped) == 1
    row, why = res.skipped[0]
    assert row == 1 and reason in why
    with pytest.raises(MalformedRowError, match=rf"{name}: malformed row 1: .*{reason}") as exc:
        T.load_task(name, on_error="raise")
    assert isinstance(exc.value, ValueError) and (exc.value.dataset, exc.value.row) == (name, 1)


def test_good_rows_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("RH_DATA_DIR", str(tmp_path))
    for name in GOOD:
        _write(tmp_path / dict((m[0], m[1]) for m in MALFORMED)[name], [GOOD[name]])
    assert T.load_task("aqua_rat")[0].options[1] == "2"
    assert T.load_task("gsm8k")[0].answer == "1000"
    assert T.load_task("qasc")[0].rationale == "f1 f2"  # no combinedfact: fact1 + fact2
    assert T.load_task("math500")[0].answer == "\\frac{1}{2}" and T.load_task("amc23")[0].answer == "7"


def test_row_index_is_file_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RH_DATA_DIR", str(tmp_path))
    _write(tmp_path / "countdown/countdown_cd3_test.jsonl", [GOOD["countdown"], "", "[1, 2]", GOOD["countdown"]])
    res = T.load_task("countdown")
    assert len(res) == 2 and res.skipped == [(2, "JSON line is not an object")]


def test_bbh_malformed(tmp_path, monkeypatch):
    monkeypatch.setenv("RH_DATA_DIR", str(tmp_path))
    examples = [{"input": "Q?\nOptions:\n(A) x\n(B) y", "target": "(B)"},
                {"input": "Q?\nOptions:\n(A) x\n(B) y", "target": "x"},
                {"input": "Q?\nOptions:\n(A) x\n(C) y", "target": "(A)"},
                {"input": "", "target": "(A)"},
                {"input": "free form", "target": ""},
                {"input": "2 + 2 =", "target": "4"}]
    path = tmp_path / "bbh" / "bbh" / "snarks.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"canary": "c", "examples": examples}))
    res = T.load_bbh("snarks")
    assert [type(it) for it in res] == [MCItem, MathItem] and res[0].question == "Q?" and res[0].answer == "B"
    assert [i for i, _ in res.skipped] == [1, 2, 3, 4]
    with pytest.raises(MalformedRowError, match="bbh:snarks: malformed row 1: .*not an option letter"):
        T.load_task("bbh:snarks", on_error="raise")


# --------------------------------------------------------------------------------------------------- registry


def test_registry_and_load_task(real_root, monkeypatch):
    monkeypatch.delenv("RH_DATA_DIR", raising=False)
    expected = {"gsm8k", "aqua_rat", "arc_challenge", "arc_easy", "commonsenseqa", "qasc", "math500", "aime24",
                "aime25", "amc23", "countdown", "wikitext2"} | {f"bbh:{t}" for t in T.bbh_tasks()}
    assert expected <= set(T.DATASETS)
    with pytest.raises(ValueError, match="valid choices: .*gsm8k"):
        T.load_task("gsm9k")
    with pytest.raises(ValueError, match="source"):
        T.load_task("gsm8k", source="web")
    with pytest.raises(ValueError, match="on_error"):
        T.load_task("gsm8k", on_error="ignore")
    with pytest.raises(ValueError, match="split"):
        T.load_task("gsm8k", split="nope")
    assert len(T.load_task("arc_easy", split="validation", limit=5)) == 5
    assert len(T.load_task("bbh:navigate", limit=3)) == 3
    assert len(T.load_task("gsm8k", limit=0)) == 0


def test_register(monkeypatch):
    monkeypatch.setattr(T, "DATASETS", dict(T.DATASETS))
    T.register("toy_test", lambda split=None, limit=None, source="auto", on_error="skip": ["a", "b", "c"])
    res = T.load_task("toy_test", limit=2)
    assert isinstance(res, T.LoadResult) and res.items == ["a", "b"]
    T.register("toy_test", lambda **kw: T.LoadResult("toy_test", "test", ["z"]))  # re-register replaces
    assert T.load_task("toy_test").items == ["z"]
    with pytest.raises(ValueError, match="built-in"):
        T.register("gsm8k", lambda **kw: [])
    with pytest.raises(TypeError):
        T.register("toy_x", "not callable")
