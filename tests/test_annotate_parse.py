"""The judge's answer parser: never raises, accepts only answers stating exactly one valid grade."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from synrank.annotate.parse import parse_answer, parse_grade

SCALES = st.integers(min_value=2, max_value=5)


def _states_exactly_one_grade(text: str, grade: int, n_levels: int) -> bool:
    """Independent check of an accepted answer: the only numbers in it are the grade and, at most,
    the scale's top grade as a denominator right after it ('2/3', '2 out of 3')."""
    numbers = re.findall(r"\d+", text)  # any Unicode digit run
    if numbers == [str(grade)]:
        return True
    if len(numbers) == 2 and numbers[0] == str(grade) and int(numbers[1]) == n_levels - 1:
        return re.search(rf"(?<!\d){grade}\s*(?:/|out\s+of)\s*0*{n_levels - 1}(?!\d)", text, re.I) is not None
    return False


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=80), n_levels=SCALES)
@example(text="2 or 3", n_levels=4)
@example(text="{\"grade\": 1e999999}", n_levels=4)
@example(text="{" * 5000 + "}" * 5000, n_levels=4)
@example(text="٢", n_levels=4)
def test_arbitrary_strings_never_raise_and_accept_only_one_grade(text, n_levels):
    parsed = parse_answer(text, n_levels)
    if parsed.grade is not None:
        assert 0 <= parsed.grade < n_levels
        assert _states_exactly_one_grade(text, parsed.grade, n_levels), (text, parsed)


# Strings built from the pieces judges actually produce, so acceptance is exercised often.
_PIECES = st.sampled_from([
    "", " ", "\n", "Grade", "grade:", "Score is", "The relevance is", "**", "\"", "(", ")", "[", "]", ".",
    "-", "/", "out of", "partly answers", "fully", "two", "three", "one", "{", "}", "\"grade\":", ":", ",",
    "0", "1", "2", "3", "4", "5", "9", "10", "02", "2.5", "-1", "٣", "answer", "I think",
])


@settings(max_examples=2000, deadline=None)
@given(parts=st.lists(_PIECES, max_size=7), n_levels=SCALES)
def test_judge_like_strings(parts, n_levels):
    text = " ".join(parts)
    parsed = parse_answer(text, n_levels)
    if parsed.grade is not None:
        assert 0 <= parsed.grade < n_levels
        assert _states_exactly_one_grade(text, parsed.grade, n_levels), (text, parsed)


@settings(max_examples=500, deadline=None)
@given(n_levels=SCALES, data=st.data())
def test_well_formed_answers_are_accepted(n_levels, data):
    grade = data.draw(st.integers(0, n_levels - 1))
    template = data.draw(st.sampled_from([
        "{g}", " {g}\n", "{g}.", "**{g}**", "Grade: {g}", "grade {g}", "Relevance: {g}", "The score is {g}",
        "Final grade: {g}", "{g}/{top}", "{g} out of {top}", "Grade: {g} - the passage is relevant.",
        "{g} (see the scale above)", '{{"grade": {g}}}', '{{"relevance": "{g}"}}', "[{g}]", "`{g}`",
    ]))
    text = template.format(g=grade, top=n_levels - 1)
    assert parse_grade(text, n_levels) == grade, text


@settings(max_examples=500, deadline=None)
@given(n_levels=SCALES, data=st.data())
def test_two_different_grades_are_rejected(n_levels, data):
    a = data.draw(st.integers(0, n_levels - 1))
    b = data.draw(st.integers(0, n_levels - 1))
    assume(a != b)
    template = data.draw(st.sampled_from(["{a} or {b}", "{a}-{b}", "Grade: {a}\nGrade: {b}", "{a}, maybe {b}",
                                          "{a} {b}", "between {a} and {b}", "{a}/{b}0"]))
    assert parse_grade(template.format(a=a, b=b), n_levels) is None


@pytest.mark.parametrize("text", ["4", "7", "-1", "02", "2.5", "two", "", "   ", "none", "Grade:", "Grade 2 for query 17",
                                  "2/4", "{\"grade\": 2.0}", "{\"grade\": true}", "{\"grade\": 2, \"why\": \"x\"}",
                                  "{\"score\": 9}", "I think 2", "2 two", "٢"])
def test_rejected_on_four_levels(text):
    assert parse_grade(text, 4) is None


@pytest.mark.parametrize("bad", [None, 3, 2.0, b"2", ["2"], object()])
def test_non_text_is_rejected_not_raised(bad):
    assert parse_grade(bad, 4) is None


@pytest.mark.parametrize("scale", [None, 1, 11, 2.0, True, "4"])
def test_invalid_scale_is_rejected_not_raised(scale):
    assert parse_answer("1", scale).grade is None
