"""Relevance scales and collapsing one scale into a coarser one.

A scale of n levels has grades 0..n-1, 0 the least relevant. The generator's default is 4 levels
(Paper A): 3 = fully answers, 2 = partly answers, 1 = on topic but does not answer, 0 = unrelated.
Coarser scales merge adjacent grades: 4 -> 3 is {0},{1},{2,3}; 4 -> 2 is {0,1},{2,3}.

What counts as a positive is decided here, once (`positive_threshold`): a passage that at least
partly answers the query, i.e. the grades that the binary collapse (n -> 2 levels) calls relevant.
That is level >= 2 of 4 (Paper A's binary recipe), >= 1 of 2, >= 2 of 3 ("answers the query"; level 1
is "on topic but does not answer") and >= 3 of 5 ("partly answers"). Every loss and every label
source takes its positives from this rule unless a threshold is set explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_LEVELS = 2
MAX_LEVELS = 5

# What each grade means, per scale size; used in prompts and reports.
_DESCRIPTIONS: dict[int, tuple[str, ...]] = {
    2: ("not relevant: does not answer the query", "relevant: answers the query"),
    3: (
        "unrelated to the query",
        "on topic but does not answer the query",
        "answers the query",
    ),
    4: (
        "unrelated to the query",
        "on topic but does not answer the query",
        "partly answers the query",
        "fully answers the query",
    ),
    5: (
        "unrelated to the query",
        "on topic but does not answer the query",
        "touches on the answer without giving it",
        "partly answers the query",
        "fully and directly answers the query",
    ),
}


def _check_size(n_levels: int, what: str = "n_levels") -> None:
    if not isinstance(n_levels, int) or isinstance(n_levels, bool):
        raise ValueError(f"{what} must be an integer in [{MIN_LEVELS}, {MAX_LEVELS}], got {n_levels!r}")
    if not MIN_LEVELS <= n_levels <= MAX_LEVELS:
        raise ValueError(f"{what} must be in [{MIN_LEVELS}, {MAX_LEVELS}], got {n_levels}")


@dataclass(frozen=True)
class RelevanceScale:
    """A graded relevance scale with grades 0..n_levels-1."""

    n_levels: int = 4

    def __post_init__(self) -> None:
        _check_size(self.n_levels)

    @property
    def grades(self) -> tuple[int, ...]:
        return tuple(range(self.n_levels))

    @property
    def top(self) -> int:
        return self.n_levels - 1

    def describe(self, grade: int) -> str:
        self.check_grade(grade)
        return _DESCRIPTIONS[self.n_levels][grade]

    def check_grade(self, grade: int) -> int:
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or int(grade) != grade or not 0 <= grade < self.n_levels:
            raise ValueError(f"grade {grade!r} is not on the {self.n_levels}-level scale {self.grades}")
        return int(grade)


def collapse_groups(from_levels: int, to_levels: int) -> tuple[tuple[int, ...], ...]:
    """The fine grades that make up each coarse grade, coarse grade 0 first.

    Collapsing goes one level at a time: from an even number of levels the top two grades merge
    ("partly" and "fully answers" become "answers"), from an odd number the bottom two ("unrelated"
    and "on topic") become "not relevant". For 4 levels this gives 3 -> {0},{1},{2,3} and
    2 -> {0,1},{2,3}, and collapsing in steps (4 -> 3 -> 2) equals collapsing at once (4 -> 2).
    """
    _check_size(from_levels, "from_levels")
    _check_size(to_levels, "to_levels")
    if to_levels > from_levels:
        raise ValueError(f"cannot refine a {from_levels}-level scale into {to_levels} levels")
    groups = [[g] for g in range(from_levels)]
    while len(groups) > to_levels:
        if len(groups) % 2 == 0:
            groups[-2:] = [groups[-2] + groups[-1]]
        else:
            groups[:2] = [groups[0] + groups[1]]
    return tuple(tuple(g) for g in groups)


def collapse_mapping(from_levels: int, to_levels: int) -> dict[int, int]:
    """{fine grade: coarse grade} for collapsing a from_levels scale into to_levels."""
    return {fine: coarse for coarse, members in enumerate(collapse_groups(from_levels, to_levels)) for fine in members}


def collapse(grade: int, from_levels: int, to_levels: int) -> int:
    """The coarse grade of one fine grade."""
    mapping = collapse_mapping(from_levels, to_levels)
    if grade not in mapping:
        raise ValueError(f"grade {grade!r} is not on the {from_levels}-level scale {tuple(range(from_levels))}")
    return mapping[grade]


def positive_threshold(n_levels: int) -> int:
    """The smallest grade of the n_levels scale that counts as a positive: the lowest grade that at
    least partly answers the query (the grades collapsing to "relevant" on the 2-level scale).

    2 levels -> 1, 3 -> 2, 4 -> 2, 5 -> 3. "On topic but does not answer" is never a positive.
    """
    mapping = collapse_mapping(n_levels, 2)
    return min(g for g, coarse in mapping.items() if coarse == 1)


def positive_grades(n_levels: int) -> tuple[int, ...]:
    """The grades of the n_levels scale that count as positives (see `positive_threshold`)."""
    return tuple(range(positive_threshold(n_levels), n_levels))
