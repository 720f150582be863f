"""support.papers: every reference number the chapters print is found in the paper's own text."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import papers

PAPERS = Path(__file__).resolve().parent.parent.parent / "shared" / "papers"


@pytest.fixture(scope="module")
def p000() -> str:
    files = sorted(PAPERS.glob("000_*.txt"))
    if not files:
        pytest.skip(f"paper texts not found in {PAPERS}")
    return files[0].read_text()


def test_table1_rows_are_the_papers(p000):
    for (model, regime), vals in papers.TABLE1.items():
        label = f"<i>{model}</i>" if regime == "base" else f"+ {regime}"  # the paper's row labels
        row = label + "\t" + "\t".join(f"{v:.3f}" for v in vals)
        assert row in p000, (model, regime)
    assert papers.table1_frame().shape == (12, 11)


def test_reported_statistics_appear_in_the_paper(p000):
    found = [str(papers.SPLIT_HALF_RHO.value), *map(str, papers.SPLIT_HALF_IQR.value),
             *(v for v in papers.TABLE6_SEEDS.values()), "0.662 ± 0.012",
             *(x for v in papers.TABLE2_PPL.values() for x in v.split(" / ")),
             *(str(papers.FIG5[k]) for k in ("mean_wh", "mean_sh", "r_rb", "cliffs_delta")),
             *(r.value for by_model in papers.PROBE_SIZE_OVERLAP.values() for r in by_model.values()),
             *(v for row in papers.CROSS_TASK_OVERLAP.values() for v in row.values())]
    missing = [x for x in found if x not in p000]
    assert not missing, missing


def test_refs_name_their_source():
    assert str(papers.SPLIT_HALF_RHO) == "0.973 (LLaMA-2-7B-chat, 000 Fig. 3)"
    assert str(papers.SPLIT_HALF_IQR).startswith("0.969–0.975")
    assert papers.probe_size_ref(20, papers.QWEN3) == "86.7%" and papers.probe_size_ref(40, papers.QWEN3) == "–"


def test_paper_003_numbers_appear_in_its_text():
    files = sorted(PAPERS.glob("003_*.txt"))
    if not files:
        pytest.skip(f"paper texts not found in {PAPERS}")
    text = files[0].read_text()
    t1 = papers.P003_TABLE1
    assert f"Mean Jaccard similarity\t{t1['top_jaccard'].value}\t{t1['bottom_jaccard'].value}" in text
    assert t1["pr_top_lt_bottom"].value in text
    for row in papers.P003_TABLE2.values():
        assert "\t".join(row) in text, row
    labels = {"none": "GRPO", "random": "+ random credit", "entropy": "+ high-entropy credit",
              "local": "+ local-chunk credit", "global": "+ global-anchor credit", "coupled": "+ coupled rhythm credit"}
    for k, v in papers.P003_TABLE3_COUNTDOWN.items():
        assert f"{labels[k]}\t{v}" in text, k
    t5 = {"none": "GRPO (Baseline)", "global-bottom": "Global (Bottom-40%)", "local-bottom": "Local (Bottom-40%)",
          "coupled-bottom": "Coupled (Bottom-40%)", "global": "Global (Top-40%)", "local": "Local (Top-40%)",
          "coupled": "Coupled (Top-40%)", "coupled q=0.2": "Coupled (Top-20%)", "coupled q=0.6": "Coupled (Top-60%)",
          "coupled q=0.8": "Coupled (Top-80%)", "coupled q=1.0": "Coupled (Top-100%)"}
    for k, v in papers.P003_TABLE5_AVG.items():
        line = next(x for x in text.splitlines() if x.startswith(t5[k] + "\t"))
        assert line.split("\t")[6].split()[0] == str(v), (k, line)


def test_paper_001_numbers_appear_in_its_text():
    files = sorted(PAPERS.glob("001_*.txt"))
    if not files:
        pytest.skip(f"paper texts not found in {PAPERS}")
    text = files[0].read_text()
    for label, n in papers.P001_TABLE1_HEADS.items():
        line = next(x for x in text.splitlines() if x.startswith(label + " L"))
        assert line.split()[-1] == str(n), (label, line)
    assert "AIME’24 pass@1 drop from 30 to 26.6" in text
    assert "think on mode does not have its own exclusive reasoning heads" in text
    assert "activates a much larger and more complex set of attention heads" in text


def test_paper_001_ablation_tables_appear_in_its_text():
    files = sorted(PAPERS.glob("001_*.txt"))
    if not files:
        pytest.skip(f"paper texts not found in {PAPERS}")
    text = files[0].read_text()
    for (model, method), vals in papers.P001_TABLE2.items():
        cells = " ".join(f"{v:.2f}" if v == 0 else f"{v:.1f}" for v in vals)
        assert f"{method} {cells}" in text, (model, method)
    for row, vals in papers.P001_TABLE3.items():
        assert f"{row} {' '.join(f'{v:.1f}' for v in vals)}" in text, row
    assert len(papers.P001_TABLE2_BENCHMARKS) == 4 and len(papers.P001_TABLE3_BENCHMARKS) == 5
    for phrase in ("AIME’24 performance decreases sharply from 13.3 to 3.3", "56 to 63, and 38.5 to 42.1",
                   "MATH benchmark increases from 56 to 60", "does not much overlap with the mid-to-late heads by SFT",
                   "close to zero", "initially outperforms the baseline at very low sampling rates"):
        assert phrase in text, phrase
