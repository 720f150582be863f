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
