"""Versioned prompts for graded passage generation: one template per relevance level.

Every prompt is a chat (system + user message) rendered later with the model's own chat template
(`synrank.llm.engine.ChatRenderer`). The layout is chosen for prefix caching:

- the system message is the same for every prompt of a run (the task and the whole scale),
- the user message starts with the query, so all levels and samples of one query share it,
- the level instruction comes last.

The level is asked for in plain words ("a paragraph that answers only part of this query"): small
models follow that better than a description of a relevance scale. Even so SmolLM2-135M writes
on-topic text at every level - hence the swap strategy for level 0 and the level-fidelity report.

Versions: v1 asks for each level in one plain sentence; v2 adds to each level what the paragraph
must and must not contain, with an example of such content (see `V2`). v1 stays the default (`generate.prompt_version`).

A template version is frozen once released: changing wording means adding a version. The
fingerprint (a hash of every text of a version) is recorded in the output manifest, so editing a
released version by accident is caught when a run resumes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from synrank.data.levels import RelevanceScale

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    user: str  # format fields: query, level, top, description (RelevanceScale.describe), guideline
    # guideline per scale size, one per grade (grade 0 first)
    guidelines: dict[int, tuple[str, ...]]

    def fingerprint(self) -> str:
        blob = json.dumps(
            {"system": self.system, "user": self.user,
             "guidelines": {str(k): list(v) for k, v in sorted(self.guidelines.items())}},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Plain imperative instructions: small instruction models (SmolLM2-135M) answer a prompt that talks
# about "relevance levels" with text about the passage ("The passage provides ...") instead of a
# passage; they write passages when simply asked for a paragraph.
_SHAPE = "Write a short paragraph (two or three sentences)"
_UNRELATED = f"{_SHAPE} about something completely unrelated to this query."
_ON_TOPIC = f"{_SHAPE} about the topic of this query that does not answer it."
_TOUCHES = f"{_SHAPE} about the topic of this query that comes close to the answer but does not give it."
_PARTLY = f"{_SHAPE} that answers only part of this query and leaves out the rest."
_FULLY = f"{_SHAPE} that answers this query completely."
_NOT_RELEVANT = f"{_SHAPE} related to this query that does not answer it."

V1 = PromptTemplate(
    version="v1",
    system=(
        "You write short, factual paragraphs like those found on web pages. "
        "Write only the paragraph, nothing else."
    ),
    user="Query: {query}\n\n{guideline}",
    guidelines={
        2: (_NOT_RELEVANT, _FULLY),
        3: (_UNRELATED, _ON_TOPIC, _FULLY),
        4: (_UNRELATED, _ON_TOPIC, _PARTLY, _FULLY),
        5: (_UNRELATED, _ON_TOPIC, _TOUCHES, _PARTLY, _FULLY),
    },
)

# v2: each level is a definition plus what the paragraph must and must not contain, with a short
# example of such content. The point is the gap between "on topic" and "answers": v1's "does not
# answer it" leaves a small model free to answer anyway; v2 names the answer as the thing to leave
# out. The examples are kinds of content, not a worked example query: SmolLM2-135M copies the
# topic of a worked example ("why is the sky blue?") into its passages.
_V2_UNRELATED = (
    f"{_SHAPE} about something completely unrelated to this query. "
    "It must be about a different subject, for example cooking, sports or music; "
    "it must not mention the query's topic or use its words."
)
_V2_NOT_RELEVANT = (
    f"{_SHAPE} about the query's topic that does not contain the answer. "
    "It may be about the query's subject, for example its background or history; "
    "it must not state the answer or any part of it."
)
_V2_ON_TOPIC = (
    f"{_SHAPE} about the query's topic that does not contain the answer. "
    "It must be about the same subject as the query, for example its background, history or a related question; "
    "it must not state the answer or any part of it."
)
_V2_TOUCHES = (
    f"{_SHAPE} about the query's topic that comes close to the answer but does not give it. "
    "It must mention what the answer depends on, for example the method or the quantities involved; "
    "it must not state the answer itself."
)
_V2_PARTLY = (
    f"{_SHAPE} that gives only part of the answer to this query. "
    "It must state one part of the answer, for example one of several reasons or the answer without its details; "
    "it must not give the whole answer."
)
_V2_FULLY = (
    f"{_SHAPE} that answers this query completely and directly. "
    "It must state the whole answer in its first sentence, for example the value, reason or method asked for "
    "with its key facts; it must not be vague or change the subject."
)

V2 = PromptTemplate(
    version="v2",
    system=(
        "You write short, factual paragraphs like those found on web pages. "
        "Each request says what the paragraph must contain and what it must not contain; follow it exactly. "
        "Write only the paragraph, nothing else: no title, no notes, no mention of these instructions."
    ),
    user="Query: {query}\n\n{guideline}",
    guidelines={
        2: (_V2_NOT_RELEVANT, _V2_FULLY),
        3: (_V2_UNRELATED, _V2_ON_TOPIC, _V2_FULLY),
        4: (_V2_UNRELATED, _V2_ON_TOPIC, _V2_PARTLY, _V2_FULLY),
        5: (_V2_UNRELATED, _V2_ON_TOPIC, _V2_TOUCHES, _V2_PARTLY, _V2_FULLY),
    },
)

VERSIONS: dict[str, PromptTemplate] = {V1.version: V1, V2.version: V2}


def get_template(version: str) -> PromptTemplate:
    try:
        return VERSIONS[version]
    except KeyError:
        raise ValueError(f"unknown prompt_version {version!r}; known versions: {', '.join(sorted(VERSIONS))}") from None


def _describe(scale: RelevanceScale, level: int) -> str:
    text = scale.describe(level)
    # "unrelated to the query" -> "is unrelated to the query"; "answers the query" stays a verb phrase
    if text.startswith(("unrelated", "on topic", "relevant", "not relevant")):
        return "is " + text
    return text


def level_prompt(query: str, level: int, n_levels: int, version: str = "v1") -> Chat:
    """The chat asking for a passage of relevance `level` (0..n_levels-1) to `query`."""
    template = get_template(version)
    scale = RelevanceScale(n_levels)
    scale.check_grade(level)
    guideline = template.guidelines[n_levels][level]
    user = template.user.format(
        query=" ".join(str(query).split()),
        level=level,
        top=scale.top,
        description=_describe(scale, level),
        guideline=guideline,
    )
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]
