"""The one BM25: a text without a usable term stays empty on both sides of the index."""

from __future__ import annotations

import pytest

from synrank.data.bm25 import BM25Index


@pytest.fixture(scope="module")
def index_with_an_empty_document():
    # Cranfield has documents with neither title nor text (471, 995); this is the same situation.
    return BM25Index(["lift", "empty", "drag"],
                     ["lift of a wing in supersonic flow", "", "drag of a blunt body"])


@pytest.mark.parametrize("query", ["the", "", "?!", "unheardofterm"])
def test_a_query_without_a_known_term_finds_nothing(index_with_an_empty_document, query):
    assert index_with_an_empty_document.search([query], k=3) == [[]]


def test_an_empty_document_never_scores(index_with_an_empty_document):
    hits = index_with_an_empty_document.search(["lift of the wing", "drag"], k=3)
    assert [doc for doc, _ in hits[0]] == ["lift"]
    assert [doc for doc, _ in hits[1]] == ["drag"]


def test_an_empty_document_does_not_change_the_other_scores():
    with_empty = BM25Index(["a", "e", "b"], ["lift of a wing", "", "drag of a body"])
    without = BM25Index(["a", "b", "c"], ["lift of a wing", "drag of a body", "heat transfer"])
    # length normalisation uses the average document length: an empty document counts 0 tokens
    # (avgdl over 3 docs: (2 + 0 + 2) / 3 vs (2 + 2 + 2) / 3), so the two indexes differ exactly there
    score_with = with_empty.search(["lift"], k=1)[0][0][1]
    score_without = without.search(["lift"], k=1)[0][0][1]
    k1, b = 0.9, 0.4
    def lucene_tf(doclen, avgdl):
        return 1.0 / (1.0 + k1 * (1 - b + b * doclen / avgdl))
    # same idf (1 of 3 documents has "lift"), so the ratio of scores is the ratio of tf parts
    assert score_with / score_without == pytest.approx(lucene_tf(2, 4 / 3) / lucene_tf(2, 2), rel=1e-5)
