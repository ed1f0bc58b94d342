"""Relevance scales and collapsing (synrank.data.levels): every grade maps as the module says,
collapsing in steps equals collapsing at once, invalid scales raise."""

from __future__ import annotations

import itertools

import pytest

from synrank.data.levels import (
    MAX_LEVELS,
    MIN_LEVELS,
    RelevanceScale,
    collapse,
    collapse_groups,
    collapse_mapping,
)

SIZES = range(MIN_LEVELS, MAX_LEVELS + 1)

# The documented merges: from an even number of levels the top two grades merge, from an odd
# number the bottom two; spelled out for every pair of sizes.
EXPECTED_GROUPS = {
    (5, 5): ((0,), (1,), (2,), (3,), (4,)),
    (5, 4): ((0, 1), (2,), (3,), (4,)),
    (5, 3): ((0, 1), (2,), (3, 4)),
    (5, 2): ((0, 1, 2), (3, 4)),
    (4, 4): ((0,), (1,), (2,), (3,)),
    (4, 3): ((0,), (1,), (2, 3)),
    (4, 2): ((0, 1), (2, 3)),
    (3, 3): ((0,), (1,), (2,)),
    (3, 2): ((0, 1), (2,)),
    (2, 2): ((0,), (1,)),
}


def test_default_scale_matches_the_generator_levels() -> None:
    scale = RelevanceScale()
    assert scale.n_levels == 4 and scale.grades == (0, 1, 2, 3) and scale.top == 3
    assert scale.describe(3) == "fully answers the query"
    assert scale.describe(2) == "partly answers the query"
    assert scale.describe(1) == "on topic but does not answer the query"
    assert scale.describe(0) == "unrelated to the query"


def test_issue_examples() -> None:
    """4 -> 3: {0},{1},{2,3}; 4 -> 2: {0,1},{2,3}, grade by grade."""
    assert [collapse(g, 4, 3) for g in range(4)] == [0, 1, 2, 2]
    assert [collapse(g, 4, 2) for g in range(4)] == [0, 0, 1, 1]
    assert collapse_mapping(4, 3) == {0: 0, 1: 1, 2: 2, 3: 2}
    assert collapse_mapping(4, 2) == {0: 0, 1: 0, 2: 1, 3: 1}


@pytest.mark.parametrize("sizes", sorted(EXPECTED_GROUPS), ids=lambda s: f"{s[0]}to{s[1]}")
def test_every_grade_maps_as_documented(sizes: tuple[int, int]) -> None:
    fine, coarse = sizes
    groups = EXPECTED_GROUPS[sizes]
    assert collapse_groups(fine, coarse) == groups
    for coarse_grade, members in enumerate(groups):
        for grade in members:
            assert collapse(grade, fine, coarse) == coarse_grade
            assert collapse_mapping(fine, coarse)[grade] == coarse_grade


@pytest.mark.parametrize("fine,coarse", [(f, c) for f in SIZES for c in SIZES if c <= f])
def test_collapse_is_a_monotone_surjection(fine: int, coarse: int) -> None:
    mapping = collapse_mapping(fine, coarse)
    assert sorted(mapping) == list(range(fine))
    values = [mapping[g] for g in range(fine)]
    assert values == sorted(values)  # order preserved, groups contiguous
    assert set(values) == set(range(coarse))  # every coarse grade used
    assert values[0] == 0 and values[-1] == coarse - 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(values))


def test_identity() -> None:
    for n in SIZES:
        assert collapse_mapping(n, n) == {g: g for g in range(n)}


def test_four_three_two_equals_four_two_for_every_grade() -> None:
    for grade in range(4):
        assert collapse(collapse(grade, 4, 3), 3, 2) == collapse(grade, 4, 2)


@pytest.mark.parametrize("a,b,c", [(a, b, c) for a in SIZES for b in SIZES for c in SIZES if a >= b >= c])
def test_collapsing_in_steps_equals_collapsing_at_once(a: int, b: int, c: int) -> None:
    for grade in range(a):
        assert collapse(collapse(grade, a, b), b, c) == collapse(grade, a, c)


@pytest.mark.parametrize("bad", [0, 1, 6, -4, 2.5, "4", None, True])
def test_invalid_scale_sizes_raise(bad: object) -> None:
    with pytest.raises(ValueError, match="n_levels"):
        RelevanceScale(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="from_levels"):
        collapse_groups(bad, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="to_levels"):
        collapse_mapping(4, bad)  # type: ignore[arg-type]


def test_refining_raises() -> None:
    with pytest.raises(ValueError, match="cannot refine a 2-level scale into 4 levels"):
        collapse_groups(2, 4)
    with pytest.raises(ValueError, match="cannot refine"):
        collapse(0, 3, 5)


@pytest.mark.parametrize("grade", [-1, 4, 7, 1.5, None])
def test_grades_off_the_scale_raise(grade: object) -> None:
    with pytest.raises(ValueError, match="not on the 4-level scale"):
        collapse(grade, 4, 2)  # type: ignore[arg-type]
    if grade is not None:
        with pytest.raises(ValueError, match="not on the 4-level scale"):
            RelevanceScale(4).check_grade(grade)  # type: ignore[arg-type]


def test_check_grade_and_describe() -> None:
    scale = RelevanceScale(5)
    assert scale.check_grade(4) == 4 and scale.check_grade(2.0) == 2
    with pytest.raises(ValueError):
        scale.check_grade(True)
    with pytest.raises(ValueError):
        scale.describe(5)
    for n in SIZES:
        s = RelevanceScale(n)
        descriptions = [s.describe(g) for g in s.grades]
        assert len(set(descriptions)) == n and descriptions[0] in ("unrelated to the query",
                                                                   "not relevant: does not answer the query")


# --------------------------------------------------------------------------------------------------
# what counts as a positive (the one rule every loss and label source uses)


def test_positive_threshold_is_partly_answers_or_better_on_every_scale() -> None:
    from synrank.data.levels import positive_grades, positive_threshold

    # level >= 2 of 4 (Paper A's binary recipe); "on topic but does not answer" is never a positive
    assert {n: positive_threshold(n) for n in SIZES} == {2: 1, 3: 2, 4: 2, 5: 3}
    for n in SIZES:
        scale = RelevanceScale(n)
        t = positive_threshold(n)
        assert positive_grades(n) == tuple(range(t, n))
        assert "answers" in scale.describe(t) and "does not answer" not in scale.describe(t)
        assert all(scale.describe(g) != "on topic but does not answer the query" for g in positive_grades(n))
        # the same passages are positives whatever scale they are collapsed to
        for fine in range(n, MAX_LEVELS + 1):
            for g in range(fine):
                assert (g >= positive_threshold(fine)) == (collapse(g, fine, n) >= t), (fine, n, g)
