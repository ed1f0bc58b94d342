"""Validation of generated passages: clean chat artefacts, reject what is not a usable passage.

`parse_passage(text, finish_reason)` never raises (whatever the model wrote) and returns a
`ParsedPassage`: the cleaned text when accepted, else the rejection `reason` (one of `REASONS`)
with a human-readable `detail`. `parse_passages(texts, finish_reasons)` does the same for a whole
engine batch (the generation pipeline's path), with the same decisions. Duplicates are a property
of a set of passages, not of one text: `DuplicateFilter` keeps the first of exact duplicates
(after whitespace/case normalisation) within one query.

Rules, in order:
1. cleaning (not a rejection): special tokens (`<|im_end|>`, `</s>`, ...), a leading role label
   ("assistant:"), a chatty preamble line ("Sure, here is a passage ...:", "Certainly!"), a
   leading "Passage:" / markdown heading, wrapping quotes, trailing chatter ("I hope this
   helps", "Let me know ..."), and whitespace runs;
2. `empty`: nothing left;
3. `refusal`: the model declined ("I'm sorry, but I can't ...", "As an AI language model");
4. `repetition`: a degenerate loop - a character or short unit repeated many times, one sentence
   repeated 3+ times, or few distinct word n-grams;
5. `truncated`: the text ends with a colon (it announces something that is missing), or the
   generation hit the token limit mid-sentence; then the text is cut back to its last complete
   sentence if that keeps at least `min_kept_fraction` of it (and `min_words` words), otherwise
   rejected;
6. `too_short`: fewer than `min_words` words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

REASONS = ("empty", "refusal", "repetition", "truncated", "too_short", "duplicate", "engine_error")


@dataclass(frozen=True)
class ParseSettings:
    min_words: int = 8
    min_kept_fraction: float = 0.6  # of words, when cutting a truncated text back to a sentence end
    max_sentence_repeats: int = 2  # a sentence may occur at most this often
    min_distinct_ngram_ratio: float = 0.5  # distinct word 3-grams / all 3-grams (texts of >= 24 words)
    max_char_run: int = 24  # the same character this many times in a row (spaces aside)


@dataclass(frozen=True)
class ParsedPassage:
    text: str
    reason: str | None = None
    detail: str = ""
    trimmed: bool = False  # cut back to a sentence end after a length stop

    @property
    def ok(self) -> bool:
        return self.reason is None


_SPECIAL_TOKENS = re.compile(
    r"<\|[^|<>\n]{0,40}\|>|</?s>|<pad>|<unk>|\[/?INST\]|<<SYS>>|<</SYS>>|<start_of_turn>|<end_of_turn>|<eos>|<bos>"
)
_ROLE_LABEL = re.compile(r"^\s*(?:assistant|system|user|model|ai|bot)\s*[:\n]\s*", re.I)
_PREAMBLE_START = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|absolutely|alright|great|no problem|here(?:'s| is| are)"
    r"|below is|the following is|i(?:'ve| have)? (?:written|created|generated)|as requested)\b",
    re.I,
)
_LEADING_LABEL = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\*\*|__)?(?:the\s+|my\s+)?(?:passage|paragraph|answer|response|text|relevance level \d+[^:\n]*)(?:\s*\d+)?"
    r"\s*(?:\*\*|__)?\s*[:\-\u2013\u2014]\s*(?:\*\*|__)?\s*",
    re.I,
)
_HEADING_LINE = re.compile(r"^\s*(?:#{1,6}\s+|(?:\*\*|__)?title\s*:)[^\n]*\n", re.I)
_TRAILING_CHATTER = re.compile(
    r"(?:^|\n|(?<=[.!?\"'\u201d\u2019)]))\s*(?:i hope (?:this|that)|let me know|feel free to|please note|note:|"
    r"is there anything else|if you (?:need|have|want|would like)|this passage (?:is|has|does|was|meets|should))"
    r"[^\n]*$",
    re.I,
)
_QUOTES = {('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("`", "`")}
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:no|')t (?:help|write|provide|assist|do)|"
    r"i (?:cannot|can not|won't|will not|am unable to|'m unable to|am not able to)\b|as an ai\b|"
    r"as a language model|unfortunately,? i)",
    re.I,
)
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s|$)")
_WORD = re.compile(r"\w+", re.UNICODE)


_CHATTY = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|absolutely|alright|great|no problem|as requested)\b"
    r"|\b(?:passage|paragraph|text|answer|response|relevance|level|query)\b",
    re.I,
)


def _is_chatty(head: str) -> bool:
    """A preamble speaks to the user or about the passage; "Here are the main causes:" does not."""
    return bool(_CHATTY.search(head))


def _strip_preamble(text: str) -> str:
    """Drop a leading chatty line such as "Sure, here is a passage about X:"."""
    for _ in range(2):  # "Sure!\nHere is the passage:\n..." is two lines of preamble
        head, sep, rest = text.partition("\n")
        if not sep:
            # one line: "Sure, here is a passage: Text..." -> drop up to the colon
            m = re.match(r"^[^:\n]{0,160}:\s*", text)
            if m and _PREAMBLE_START.match(text) and _is_chatty(m.group(0)):
                return text[m.end():]  # "Sure, here is the passage:" alone leaves nothing
            return text
        head_s = head.strip()
        if not head_s:
            text = rest
            continue
        if _PREAMBLE_START.match(head_s) and (_is_chatty(head_s) or len(head_s.split()) <= 6):
            text = rest
            continue
        if head_s.endswith(":") and len(head_s.split()) <= 12 and re.search(r"\b(?:passage|paragraph|text)\b", head_s, re.I):
            text = rest
            continue
        break
    return text


def clean(text: object) -> str:
    """Remove chat artefacts; never raises (a non-string counts as empty)."""
    if not isinstance(text, str):
        return ""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = _SPECIAL_TOKENS.sub(" ", text)
    text = text.strip()
    text = _ROLE_LABEL.sub("", text, count=1)
    text = _strip_preamble(text.strip()).strip()
    while _HEADING_LINE.match(text):
        text = _HEADING_LINE.sub("", text, count=1).strip()
    text = _LEADING_LABEL.sub("", text, count=1).strip()
    for _ in range(3):
        new = _TRAILING_CHATTER.sub("", text).strip()
        if new == text:
            break
        text = new
    if len(text) >= 2 and (text[0], text[-1]) in _QUOTES and text.count(text[0]) <= 2:
        text = text[1:-1].strip()
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s*\n\s*", "\n", text)
    return re.sub(r"\n{2,}", "\n", text).strip()


def normalize(text: str) -> str:
    """The key of exact-duplicate detection: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [normalize(p) for p in parts if len(_words(p)) >= 3]


def repetition(text: str, settings: ParseSettings = ParseSettings()) -> str | None:
    """Why `text` looks like a generation loop, or None."""
    squeezed = re.sub(r"\s+", "", text)
    if re.search(r"(.)\1{%d,}" % (settings.max_char_run - 1), squeezed):
        return f"a character repeated {settings.max_char_run}+ times"
    # a short unit (2..12 chars) repeated 8+ times in a row: "lalalala...", "1, 2, 1, 2, ..."
    if re.search(r"(.{2,12}?)\1{7,}", squeezed):
        return "a short unit repeated 8+ times in a row"
    counts: dict[str, int] = {}
    for s in _sentences(text):
        counts[s] = counts.get(s, 0) + 1
    worst = max(counts.values(), default=0)
    if worst > settings.max_sentence_repeats:
        return f"a sentence repeated {worst} times"
    words = _words(text)
    if len(words) >= 24:
        grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
        ratio = len(set(grams)) / len(grams)
        if ratio < settings.min_distinct_ngram_ratio:
            return f"only {ratio:.0%} distinct word 3-grams"
    return None


def cut_to_sentence(text: str) -> str:
    """`text` up to its last sentence end ("" if it has none)."""
    last = None
    for m in _SENTENCE_END.finditer(text):
        last = m
    return text[: last.end()].strip() if last else ""


_ENDS_SENTENCE = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s*$")


def ends_sentence(text: str) -> bool:
    return bool(_ENDS_SENTENCE.search(text))


def parse_passage(text: object, finish_reason: object = "stop", settings: ParseSettings = ParseSettings()) -> ParsedPassage:
    """Clean and validate one generated passage. Never raises."""
    try:
        return _parse(text, str(finish_reason or ""), settings)
    except Exception as exc:  # pragma: no cover - a bug in a rule must not fail a job
        return ParsedPassage("", "empty", f"parser error: {type(exc).__name__}: {exc}")


def parse_passages(texts: Sequence[object], finish_reasons: Sequence[object],
                   settings: ParseSettings = ParseSettings()) -> list[ParsedPassage]:
    """`parse_passage` over a batch, in order. The rules run once per distinct (text, finish
    reason): the passages a model repeats word for word, the empty answers and the rows of a failed
    call (all alike) cost one parse each. Never raises on what the model wrote."""
    if len(texts) != len(finish_reasons):
        raise ValueError(f"{len(texts)} texts for {len(finish_reasons)} finish reasons")
    done: dict[tuple[object, str], ParsedPassage] = {}
    out = []
    for raw, finish in zip(texts, finish_reasons):
        finish = str(finish or "")
        key = (raw if isinstance(raw, str) else None, finish)
        parsed = done.get(key)
        if parsed is None:
            parsed = done[key] = parse_passage(raw, finish, settings)
        out.append(parsed)
    return out


def _parse(raw: object, finish_reason: str, settings: ParseSettings) -> ParsedPassage:
    if finish_reason.startswith("error"):
        return ParsedPassage("", "engine_error", finish_reason)
    text = clean(raw)
    if not _words(text):
        return ParsedPassage("", "empty", "no words after removing chat artefacts")
    if _REFUSAL.match(text):
        return ParsedPassage("", "refusal", text[:80])
    why = repetition(text, settings)
    if why:
        return ParsedPassage("", "repetition", why)
    if text.rstrip().endswith(":"):
        return ParsedPassage("", "truncated", "ends with a colon: what it announces is missing")
    trimmed = False
    if finish_reason == "length" and not ends_sentence(text):
        kept = cut_to_sentence(text)
        n_all, n_kept = len(_words(text)), len(_words(kept))
        if n_kept < settings.min_words or n_kept < settings.min_kept_fraction * n_all:
            return ParsedPassage(
                "", "truncated",
                f"stopped at the token limit mid-sentence; the last sentence end keeps {n_kept} of {n_all} words",
            )
        text, trimmed = kept, True
    n = len(_words(text))
    if n < settings.min_words:
        return ParsedPassage("", "too_short", f"{n} words (minimum {settings.min_words})")
    return ParsedPassage(text, None, "", trimmed)


class DuplicateFilter:
    """Exact duplicates within one query: the first occurrence wins."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {}

    def seen(self, query_id: str, text: str) -> bool:
        """True if `text` was already accepted for `query_id`; otherwise remember it."""
        key = normalize(text)
        bucket = self._seen.setdefault(query_id, set())
        if key in bucket:
            return True
        bucket.add(key)
        return False
