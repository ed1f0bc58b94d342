"""Versioned prompts for graded passage generation: one template per relevance level.

Every prompt is a chat (system + user message) rendered later with the model's own chat template
(`synrank.generate.engine.ChatRenderer`). The layout is chosen for prefix caching:

- the system message is the same for every prompt of a run (the task and the whole scale),
- the user message starts with the query, so all levels and samples of one query share it,
- the level instruction comes last.

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
    user: str  # format fields: query, level, top, description, guideline
    # guideline per scale size, one per grade (grade 0 first)
    guidelines: dict[int, tuple[str, ...]]

    def fingerprint(self) -> str:
        blob = json.dumps(
            {"system": self.system, "user": self.user,
             "guidelines": {str(k): list(v) for k, v in sorted(self.guidelines.items())}},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_UNRELATED = (
    "Write about a completely different subject that has nothing to do with the query: "
    "another field, other people, other things. Do not mention anything from the query."
)
_ON_TOPIC = (
    "Write about the same topic as the query, using its key terms, but do not give the "
    "information the query asks for: a reader must not be able to answer the query from it."
)
_TOUCHES = (
    "Write about the topic of the query and come close to the answer, but stop short: give "
    "background or related facts, never the answer itself."
)
_PARTLY = (
    "Answer only part of the query: give some of the information asked for and leave out an "
    "important part of it."
)
_FULLY = "Answer the query directly and completely, with the specific facts a searcher needs."
_NOT_RELEVANT = (
    "Write a passage a searcher would not find useful for this query: it does not answer it."
)

V1 = PromptTemplate(
    version="v1",
    system=(
        "You write passages for a search engine test collection. You are given a search query and "
        "a relevance level, and you write one passage of 3 to 5 sentences that has exactly that "
        "relevance to the query. Write it like an encyclopedia or web page paragraph. Write only the "
        "passage: no title, no introduction such as \"Here is\", no notes or explanations."
    ),
    user=(
        "Query: {query}\n\n"
        "Relevance level {level} of {top}: the passage {description}.\n"
        "{guideline}"
    ),
    guidelines={
        2: (_NOT_RELEVANT, _FULLY),
        3: (_UNRELATED, _ON_TOPIC, _FULLY),
        4: (_UNRELATED, _ON_TOPIC, _PARTLY, _FULLY),
        5: (_UNRELATED, _ON_TOPIC, _TOUCHES, _PARTLY, _FULLY),
    },
)

VERSIONS: dict[str, PromptTemplate] = {V1.version: V1}


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
