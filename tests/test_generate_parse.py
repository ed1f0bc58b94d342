"""Validation of generated passages: one test per rejection rule, the cleaning of chat artefacts,
duplicates, and fuzzing: whatever the model writes, the parser never raises."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from synrank.generate.parse import (
    REASONS,
    DuplicateFilter,
    ParseSettings,
    clean,
    cut_to_sentence,
    normalize,
    parse_passage,
)

GOOD = (
    "Goldfish keep growing throughout their lives. In a small bowl they stay a few centimetres long, "
    "but in a pond they can reach thirty centimetres. Water quality and space limit their growth."
)


def test_a_good_passage_is_accepted_unchanged():
    parsed = parse_passage(GOOD, "stop")
    assert parsed.ok and parsed.reason is None
    assert parsed.text == GOOD
    assert not parsed.trimmed


# -- cleaning (not rejections) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        f"Sure, here is a passage about goldfish:\n{GOOD}",
        f"Sure! Here's a passage that fully answers the query:\n\n{GOOD}",
        f"Certainly!\nHere is the passage:\n{GOOD}",
        f"Here is a passage: {GOOD}",
        f"<|im_start|>assistant\n{GOOD}<|im_end|>",
        f"assistant: {GOOD}",
        f"Passage: {GOOD}",
        f"**Passage:** {GOOD}",
        f"# Goldfish growth\n{GOOD}",
        f'"{GOOD}"',
        f"{GOOD}\n\nI hope this helps! Let me know if you need anything else.",
        f"{GOOD} Note: this passage is written for a test collection.",
        f"{GOOD}</s>",
        f"  {GOOD}\n\n\n  ",
    ],
)
def test_chat_artefacts_are_stripped(raw):
    parsed = parse_passage(raw, "stop")
    assert parsed.ok, parsed
    assert normalize(parsed.text) == normalize(GOOD)


def test_cleaning_keeps_text_that_only_looks_like_a_preamble():
    text = "Here in the Netherlands, goldfish are a common pond fish that can live for twenty years or more."
    assert parse_passage(text).text == text


# -- one test per rejection rule -------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   \n\t ", "<|im_end|>", "Sure, here is the passage:", None, 42, "!!! ??? ..."])
def test_empty(raw):
    parsed = parse_passage(raw, "stop")
    assert parsed.reason == "empty" and parsed.text == ""


@pytest.mark.parametrize(
    "raw",
    [
        "I'm sorry, but I can't write a passage about that topic because it may be harmful.",
        "As an AI language model, I cannot produce content on this subject for you today.",
        "I cannot help with this request, as it asks for information that I do not have.",
    ],
)
def test_refusal(raw):
    assert parse_passage(raw, "stop").reason == "refusal"


@pytest.mark.parametrize(
    "raw, why",
    [
        ("Goldfish grow " + "a" * 40, "character"),
        ("The answer is " + "la" * 30 + " and that is all there is to say about it.", "short unit"),
        ("Goldfish grow in ponds. " * 4 + "They live long.", "sentence"),
        (" ".join(["goldfish grow big"] * 3 + ["goldfish grow in ponds", "ponds are big"] * 6), "3-grams"),
    ],
)
def test_repetition(raw, why):
    parsed = parse_passage(raw, "stop")
    assert parsed.reason == "repetition", parsed
    assert why in parsed.detail


def test_a_sentence_may_occur_twice():
    text = "Goldfish grow in ponds. They grow slowly in bowls. Goldfish grow in ponds."
    assert parse_passage(text, "stop", ParseSettings(min_words=4)).ok


def test_truncated_mid_sentence_is_rejected_when_too_little_remains():
    raw = "Goldfish grow slowly. In a pond with clean water and enough space they can become very large and live for many"
    parsed = parse_passage(raw, "length")
    assert parsed.reason == "truncated"
    assert "token limit" in parsed.detail


def test_truncated_mid_sentence_is_cut_back_when_most_remains():
    raw = GOOD + " They also"
    parsed = parse_passage(raw, "length")
    assert parsed.ok and parsed.trimmed
    assert parsed.text == GOOD


def test_a_length_stop_at_a_sentence_end_is_not_truncated():
    parsed = parse_passage(GOOD, "length")
    assert parsed.ok and not parsed.trimmed


def test_the_same_unfinished_text_is_fine_when_the_model_stopped_by_itself():
    raw = "Goldfish grow slowly in bowls and quickly in ponds with clean water and enough space to swim"
    assert parse_passage(raw, "stop").ok


def test_too_short():
    parsed = parse_passage("Goldfish grow.", "stop")
    assert parsed.reason == "too_short"
    assert parse_passage("Goldfish grow.", "stop", ParseSettings(min_words=2)).ok


def test_engine_error_is_a_rejection_not_an_exception():
    parsed = parse_passage("", "error: prompt of 5000 tokens does not fit max_model_len=2048")
    assert parsed.reason == "engine_error"
    assert "max_model_len" in parsed.detail


def test_duplicates_within_a_query_keep_the_first():
    dedup = DuplicateFilter()
    assert not dedup.seen("q1", GOOD)
    assert dedup.seen("q1", GOOD.upper().replace(" ", "  "))  # case and spacing do not make it new
    assert not dedup.seen("q2", GOOD)  # another query may have the same text
    assert not dedup.seen("q1", GOOD + " More.")


def test_cut_to_sentence():
    assert cut_to_sentence("One. Two three") == "One."
    assert cut_to_sentence('He said "yes." Then') == 'He said "yes."'
    assert cut_to_sentence("no end at all") == ""


# -- fuzzing ---------------------------------------------------------------------------------

FINISH = st.sampled_from(["stop", "length", "abort", "", None, "error: boom", 3])

# pieces of what chat models actually emit, so that the rules are exercised, not only garbage
PIECES = st.sampled_from([
    "Sure, here is a passage:", "Certainly!", "Here's the passage:\n", "<|im_start|>", "<|im_end|>",
    "assistant\n", "Passage:", "**Passage:**", "# Title\n", "\"", "I hope this helps!", "Note: ",
    GOOD, "Goldfish grow.", "la", "la" * 20, ". ", "\n", "\n\n", " ", "I'm sorry, but I can't", "\u201c", "\u201d",
    "x" * 30, "The the the the", ":", "!", "?", "\u0000", "\ufeff", "\u202e", "\U0001F600",
])
MODEL_LIKE = st.lists(st.one_of(PIECES, st.text(max_size=40)), max_size=12).map("".join)


def _check(parsed, raw):
    assert parsed.reason is None or parsed.reason in REASONS
    assert isinstance(parsed.text, str) and isinstance(parsed.detail, str)
    if parsed.ok:
        words = [w for w in parsed.text.split() if any(c.isalnum() for c in w)]
        assert parsed.text == parsed.text.strip() and parsed.text
        assert len(words) >= 1
        for artefact in ("<|im_end|>", "<|im_start|>", "</s>", "\u0000"):
            assert artefact not in parsed.text
        assert len(parsed.text) <= len(str(raw))
    else:
        assert parsed.text == ""


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.text(max_size=400), finish=FINISH)
@example(raw="(" * 5000, finish="length")
@example(raw="a" * 100_000, finish="stop")
@example(raw="." * 3000, finish="length")
@example(raw="Sure" + ":" * 500, finish="stop")
@example(raw="\n" * 1000 + "x", finish="stop")
def test_arbitrary_text_never_crashes_the_parser(raw, finish):
    _check(parse_passage(raw, finish), raw)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=MODEL_LIKE, finish=FINISH)
def test_model_like_output_never_crashes_the_parser(raw, finish):
    _check(parse_passage(raw, finish), raw)


@settings(max_examples=300, deadline=None)
@given(raw=st.text(alphabet=string.printable, max_size=300))
def test_clean_is_total_and_never_grows_the_text(raw):
    out = clean(raw)
    assert isinstance(out, str) and len(out) <= len(raw)


def test_parsing_is_fast_on_long_adversarial_text():
    import time

    raw = ("ab" * 20 + " ") * 2000 + "(" * 20000 + "la " * 5000
    started = time.perf_counter()
    parse_passage(raw, "length")
    assert time.perf_counter() - started < 5.0


def test_a_text_that_announces_something_missing_is_truncated():
    parsed = parse_passage("The best answer to this question about goldfish would be the following:", "stop")
    assert parsed.reason == "truncated" and "colon" in parsed.detail
