"""A strict parser for the judge's answer: one grade, or nothing.

The judge is asked for a single digit. With vLLM structured outputs (choice decoding) the answer
is exactly one of the grades; without it (or with a backend that ignores the constraint) small
models add words, repeat the scale, or hedge. This parser accepts an answer only when it states
exactly one grade of the scale and nothing that could be read as another one:

- a bare grade: ``2``, ``2.``, ``**2**``, ``"2"``, ``[2]``;
- a labelled grade: ``Grade: 2``, ``relevance = 2``, ``The score is 2``, ``Answer - 2``;
- a grade out of the top grade: ``2/3``, ``2 out of 3`` (the denominator must be the scale's top
  grade, so ``2/4`` on a 0..3 scale is rejected: is it 2 of 0..4 or a fraction?);
- followed by a short explanation that contains no digit and no number word
  (``2 - partly answers the query``, ``Grade: 3. The passage defines lift.``);
- a JSON object with one key ``grade`` (or ``relevance``, ``score``, ``label``) whose value is an
  integer grade, e.g. ``{"grade": 2}``.

Everything else is rejected: no grade, two grades (``2 or 3``, ``2-3``), a grade off the scale
(``4`` on 0..3, ``-1``, ``02``, ``2.5``), number words (``two``), other digits anywhere
(``Grade 2 for query 17``). A rejected answer is retried by the pipeline and, if it stays
unparseable, recorded as a failure; it is never guessed.

`parse_grade` never raises, whatever it is given.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# Only ASCII digits count as digits here: `\d` would also match Arabic-Indic and other digits.
_DIGIT = "[0-9]"
_LABEL = r"(?:final\s+)?(?:relevance\s+)?(?:grade|score|label|rating|relevance|answer|judgment|judgement)"
_PREFIX = rf"(?:(?:the\s+|my\s+)?{_LABEL}\s*(?:(?:is|of|=|:|-|–)\s*)?)?"
_WRAP_OPEN = r"""[\s*_`"'(\[{<]*"""
_WRAP_CLOSE = r"""(?:\s*[*_`"')\]}>])*"""
_CORE = re.compile(
    rf"""\A{_WRAP_OPEN}{_PREFIX}{_WRAP_OPEN}(?P<grade>{_DIGIT})(?!{_DIGIT})"""
    rf"""(?:\s*(?:/|out\s+of)\s*(?P<den>{_DIGIT}+))?{_WRAP_CLOSE}(?P<rest>.*)\Z""",
    re.IGNORECASE | re.DOTALL,
)
# What may follow the grade: nothing, or a separator and an explanation free of numbers.
_REST = re.compile(r"\A(?:[.!]?\s*|[.!,;:\-–—)]\s*(?P<why>.*)|\s+(?P<why2>.*))\Z", re.DOTALL)
_ANY_DIGIT = re.compile(r"\d")  # any Unicode digit in the explanation is a reason to reject
_NUMBER_WORDS = re.compile(
    r"\b(?:zero|one|two|three|four|five|six|seven|eight|nine|ten)\b",
    re.IGNORECASE,
)
_JSON_KEYS = ("grade", "relevance", "score", "label")
MAX_ANSWER_CHARS = 2000  # a longer answer is not "a grade" and is not scanned


@dataclass(frozen=True)
class Parsed:
    """The outcome of parsing one answer: `grade` (None when rejected) and why."""

    grade: int | None
    reason: str

    @property
    def ok(self) -> bool:
        return self.grade is not None


def _check(grade: int, n_levels: int) -> Parsed:
    if 0 <= grade < n_levels:
        return Parsed(grade, "ok")
    return Parsed(None, f"grade {grade} is not on the scale 0..{n_levels - 1}")


def _parse_json(text: str, n_levels: int) -> Parsed | None:
    """A JSON object answer, or None when `text` is not one."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return Parsed(None, "malformed JSON object")
    if not isinstance(obj, dict) or len(obj) != 1:
        return Parsed(None, "JSON answer must have exactly one key")
    key, value = next(iter(obj.items()))
    if str(key).strip().lower() not in _JSON_KEYS:
        return Parsed(None, f"JSON key {key!r} is not one of {_JSON_KEYS}")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return Parsed(None, f"JSON grade {value!r} is not an integer")
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]", value.strip()):
            return Parsed(None, f"JSON grade {value!r} is not a single digit")
        value = int(value.strip())
    return _check(value, n_levels)


def parse_answer(answer: object, n_levels: int) -> Parsed:
    """Parse one judge answer on a scale of `n_levels` grades (0..n_levels-1). Never raises."""
    try:
        return _parse(answer, n_levels)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"; a bug here is a rejection
        return Parsed(None, f"parser error: {type(exc).__name__}")


def parse_grade(answer: object, n_levels: int) -> int | None:
    """The grade an answer states, or None when it does not state exactly one grade of the scale."""
    return parse_answer(answer, n_levels).grade


def _parse(answer: object, n_levels: int) -> Parsed:
    if not isinstance(n_levels, int) or isinstance(n_levels, bool) or not 2 <= n_levels <= 10:
        return Parsed(None, f"invalid scale size {n_levels!r}")
    if not isinstance(answer, str):
        return Parsed(None, f"answer is {type(answer).__name__}, not text")
    text = answer.strip()
    if not text:
        return Parsed(None, "empty answer")
    if len(text) > MAX_ANSWER_CHARS:
        return Parsed(None, f"answer longer than {MAX_ANSWER_CHARS} characters")
    as_json = _parse_json(text, n_levels)
    if as_json is not None:
        return as_json
    match = _CORE.match(text)
    if match is None:
        return Parsed(None, "no grade stated")
    grade = int(match.group("grade"))
    den = match.group("den")
    if den is not None and int(den) != n_levels - 1:
        return Parsed(None, f"'/{den}' does not match the scale's top grade {n_levels - 1}")
    rest = _REST.match(match.group("rest"))
    if rest is None:
        return Parsed(None, "text runs into the grade")
    why = rest.group("why") or rest.group("why2") or ""
    if _ANY_DIGIT.search(why):
        return Parsed(None, "more than one number in the answer")
    if _NUMBER_WORDS.search(why):
        return Parsed(None, "a number word in the explanation")
    return _check(grade, n_levels)
