"""Versioned judging prompts: one (query, passage) pair per request, one grade as the answer.

A prompt version names the exact wording; the version is recorded with every label
(`prompt_version` column), so labels from different wordings are never mixed unknowingly. Changing
the wording of an existing version is a bug: add a new version instead.

The grades and their meanings come from `synrank.data.levels.RelevanceScale`, so the judge grades on
the same scale the generator writes for (default 4 levels: 3 fully answers ... 0 unrelated).

>>> prompt = build_prompt("what is lift?", "Lift is the force ...", n_levels=4)
>>> prompt.messages       # chat messages for an instruction model (system, user)
>>> prompt.choices        # ("0", "1", "2", "3"): the answers choice decoding allows
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from synrank.data.levels import RelevanceScale

DEFAULT_VERSION = "v1"
# Passages are cut to this many characters (at a word boundary) so that every request fits the
# engine's context; about 450 tokens of English. Part of what a version means.
MAX_PASSAGE_CHARS = 1800
MAX_QUERY_CHARS = 600

_SYSTEM_V1 = (
    "You are a search quality rater. You judge how relevant a passage is to a search query. "
    "You answer with a single digit and nothing else."
)

_USER_V1 = """Grade how well the passage answers the query, on this scale:
{scale}

Query: {query}

Passage: {passage}

Answer with one digit from {first} to {last}.
Grade:"""

_TEMPLATES: dict[str, tuple[str | None, str]] = {
    "v1": (_SYSTEM_V1, _USER_V1),
}


@dataclass(frozen=True)
class JudgePrompt:
    """One judging request: chat messages, the allowed answers, and the prompt's identity."""

    version: str
    messages: tuple[dict[str, str], ...]
    choices: tuple[str, ...]
    query: str = ""  # the (clipped) texts the messages hold, for judges that are not chat models
    passage: str = ""

    @property
    def text(self) -> str:
        """The messages as plain text (for engines without a chat template)."""
        return "\n\n".join(m["content"] for m in self.messages)


def versions() -> tuple[str, ...]:
    return tuple(sorted(_TEMPLATES))


def check_version(version: str) -> str:
    if version not in _TEMPLATES:
        raise ValueError(f"unknown judging prompt version {version!r}; known: {', '.join(versions())}")
    return version


def fingerprint(version: str, n_levels: int) -> str:
    """A short hash of a version's exact wording on a scale: recorded in the run manifest, so a
    resumed run refuses to continue with a changed prompt under an unchanged version name."""
    system, user = _TEMPLATES[check_version(version)]
    scale = scale_text(n_levels)
    blob = "\x1f".join([version, system or "", user, scale, str(MAX_PASSAGE_CHARS), str(MAX_QUERY_CHARS)])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def scale_text(n_levels: int) -> str:
    scale = RelevanceScale(n_levels)
    return "\n".join(f"{g} = {scale.describe(g)}" for g in reversed(scale.grades))


def clip(text: str | None, limit: int) -> str:
    """Whitespace-normalised text of at most `limit` characters, cut at a word boundary."""
    text = " ".join((text or "").split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut + " ..."


def build_prompt(query: str, passage: str, n_levels: int = 4, version: str = DEFAULT_VERSION) -> JudgePrompt:
    system, user = _TEMPLATES[check_version(version)]
    scale = RelevanceScale(n_levels)
    query = clip(query, MAX_QUERY_CHARS)
    passage = clip(passage, MAX_PASSAGE_CHARS) or "(empty passage)"
    content = user.format(
        scale=scale_text(n_levels),
        query=query,
        passage=passage,
        first=scale.grades[0],
        last=scale.top,
    )
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": content})
    return JudgePrompt(version, tuple(messages), tuple(str(g) for g in scale.grades), query, passage)


def render(prompt: JudgePrompt, tokenizer=None) -> str:
    """The prompt as one string: through the tokenizer's chat template when it has one."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(prompt.messages), tokenize=False, add_generation_prompt=True)
    return prompt.text
