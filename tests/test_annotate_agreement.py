"""Agreement report: kappas on a hand-made confusion case, computed by hand here."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from synrank.annotate.agreement import agreement, cohens_kappa, confusion_matrix

# human (rows) x llm (columns), 100 pairs on a 3-level scale.
CASE = [[20, 5, 0],
        [10, 30, 5],
        [0, 5, 25]]
# By hand: observed agreement 75/100; marginals rows (25, 45, 30), columns (30, 40, 30).
# chance agreement (25*30 + 45*40 + 30*30) / 100^2 = 0.345, kappa = (0.75 - 0.345) / (1 - 0.345) = 81/131.
KAPPA = Fraction(81, 131)
# linear weights |i-j|/2: observed disagreement (5+10+5+5)*1/2 / 100 = 1/8; chance
# (0.5*(25*40 + 45*30 + 45*30 + 30*40) + 1*(25*30 + 30*30)) / 100^2 = 0.41; kappa = 1 - 0.125/0.41 = 57/82.
KAPPA_LINEAR = Fraction(57, 82)
# quadratic weights (i-j)^2/4: observed 25*1/4 / 100 = 1/16; chance (0.25*4900 + 1650) / 100^2 = 0.2875;
# kappa = 1 - 0.0625/0.2875 = 18/23.
KAPPA_QUADRATIC = Fraction(18, 23)


def _qrels_from_matrix(matrix, rows: bool) -> pa.Table:
    """Qrels whose (human, llm) grade pairs realise `matrix`: pair n gets doc id d<n>."""
    qids, dids, grades = [], [], []
    n = 0
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            for _ in range(count):
                qids.append(f"q{n % 7}")
                dids.append(f"d{n}")
                grades.append(i if rows else j)
                n += 1
    return pa.table({"query_id": qids, "doc_id": dids, "grade": pa.array(grades, pa.int32()),
                     "source": ["human" if rows else "llm"] * n})


def test_kappa_on_hand_made_case():
    assert cohens_kappa(CASE) == pytest.approx(float(KAPPA), abs=1e-12)
    assert cohens_kappa(CASE, "linear") == pytest.approx(float(KAPPA_LINEAR), abs=1e-12)
    assert cohens_kappa(CASE, "quadratic") == pytest.approx(float(KAPPA_QUADRATIC), abs=1e-12)


def test_report_from_qrels(tmp_path):
    human = _qrels_from_matrix(CASE, rows=True)
    llm = _qrels_from_matrix(CASE, rows=False)
    # an LLM label of a pair people never judged, and a human label the LLM never gave
    llm = pa.concat_tables([llm, pa.table({"query_id": ["q0"], "doc_id": ["new"], "grade": pa.array([2], pa.int32()),
                                           "source": ["llm"]})])
    human = pa.concat_tables([human, pa.table({"query_id": ["q1"], "doc_id": ["only-h"],
                                               "grade": pa.array([1], pa.int32()), "source": ["human"]})])
    report = agreement(human, llm, human_levels=3, llm_levels=3)
    assert report.confusion.tolist() == CASE
    d = report.as_dict()
    assert d["kappa"] == pytest.approx(float(KAPPA))
    assert d["kappa_linear"] == pytest.approx(float(KAPPA_LINEAR))
    assert d["kappa_quadratic"] == pytest.approx(float(KAPPA_QUADRATIC))
    assert d["exact_agreement"] == pytest.approx(0.75)
    # positive on 3 levels = grade 2 (the 2-level collapse merges 0 and 1): tp 25, fp 5, fn 5
    assert d["positive_grades"] == [2]
    assert (d["positive"]["tp"], d["positive"]["fp"], d["positive"]["fn"], d["positive"]["tn"]) == (25, 5, 5, 65)
    assert d["positive"]["precision"] == pytest.approx(25 / 30)
    assert d["positive"]["recall"] == pytest.approx(25 / 30)
    assert d["coverage"]["both"] == 100 and d["coverage"]["llm_only"] == 1 and d["coverage"]["human_only"] == 1

    # counting the unjudged LLM pair as human grade 0 adds it to row 0, column 2
    with_unjudged = agreement(human, llm, human_levels=3, llm_levels=3, unjudged_as=0)
    assert with_unjudged.confusion[0, 2] == 1 and with_unjudged.n == 101

    text = report.format()
    assert "0.618" in text and "0.695" in text and "0.783" in text
    paths = report.write(str(tmp_path / "rep"))
    saved = json.loads((tmp_path / "rep" / "agreement.json").read_text())
    assert saved["confusion"] == CASE and saved["kappa_quadratic"] == pytest.approx(float(KAPPA_QUADRATIC))
    png = (tmp_path / "rep" / "agreement.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert set(paths) == {"json", "text", "png"}


def test_scales_are_collapsed_to_the_coarser():
    # Cranfield-like 5-level human grades vs a 4-level judge: 5 -> 4 merges human 0 and 1.
    human = pa.table({"query_id": ["q"] * 5, "doc_id": list("abcde"), "grade": pa.array([0, 1, 2, 3, 4], pa.int32())})
    llm = pa.table({"query_id": ["q"] * 5, "doc_id": list("abcde"), "grade": pa.array([0, 0, 1, 2, 3], pa.int32())})
    report = agreement(human, llm, human_levels=5, llm_levels=4)
    assert report.n_levels == 4
    assert np.trace(report.confusion) == 5  # a perfect match once collapsed
    assert report.kappa() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not on its 4-level scale"):
        agreement(llm, human, human_levels=4, llm_levels=4)


def test_undefined_and_perfect_kappa():
    assert cohens_kappa([[0, 0], [0, 0]]) is None  # no data
    assert cohens_kappa([[7, 0], [0, 0]]) is None  # both raters used one grade: chance agreement is 1
    assert cohens_kappa([[3, 0], [0, 4]]) == pytest.approx(1.0)
    assert cohens_kappa([[0, 5], [5, 0]]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        confusion_matrix([0, 5], [0, 1], 3)


def test_against_sklearn_when_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 300)
    b = np.clip(a + rng.integers(-1, 2, 300), 0, 3)
    m = confusion_matrix(a, b, 4)
    for ours, theirs in (("none", None), ("linear", "linear"), ("quadratic", "quadratic")):
        assert cohens_kappa(m, ours) == pytest.approx(metrics.cohen_kappa_score(a, b, weights=theirs), abs=1e-12)
