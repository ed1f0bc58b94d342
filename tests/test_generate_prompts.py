"""Prompts: one per level for scales of 2-5 levels, a shared prefix, the model's chat template."""

from __future__ import annotations

import pytest

from synrank.generate.prompts import VERSIONS, get_template, level_prompt


@pytest.mark.parametrize("n_levels", [2, 3, 4, 5])
def test_every_level_of_every_scale_has_its_own_prompt(n_levels):
    chats = [level_prompt("do goldfish grow", level, n_levels) for level in range(n_levels)]
    users = [c[-1]["content"] for c in chats]
    assert len(set(users)) == n_levels
    for chat in chats:
        assert [m["role"] for m in chat] == ["system", "user"]
        assert "do goldfish grow" in chat[-1]["content"]


def test_prompts_share_their_prefix_for_prefix_caching():
    a = [level_prompt("do goldfish grow", level, 4) for level in range(4)]
    b = [level_prompt("what is wifi vs bluetooth", level, 4) for level in range(4)]
    systems = {c[0]["content"] for c in a + b}
    assert len(systems) == 1  # one system message for every prompt of a run
    # the levels of one query share the query, which comes first in the user message
    firsts = {c[-1]["content"].split("\n", 1)[0] for c in a}
    assert len(firsts) == 1 and "do goldfish grow" in firsts.pop()


def test_invalid_levels_and_versions_are_errors():
    with pytest.raises(ValueError, match="grade"):
        level_prompt("q", 4, 4)
    with pytest.raises(ValueError, match="n_levels"):
        level_prompt("q", 0, 6)
    with pytest.raises(ValueError, match="unknown prompt_version 'v0'.*v1"):
        get_template("v0")


def test_queries_are_whitespace_normalised():
    assert level_prompt("do\n goldfish   grow", 3, 4) == level_prompt("do goldfish grow", 3, 4)


def test_fingerprints_identify_versions():
    prints = {v: t.fingerprint() for v, t in VERSIONS.items()}
    assert len(set(prints.values())) == len(prints)
    assert get_template("v1").fingerprint() == prints["v1"]


def test_chats_render_with_the_default_models_chat_template():
    from transformers import AutoTokenizer

    from synrank.llm.engine import ChatRenderer
    from synrank.models import resolve_generator

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(resolve_generator("default")))
    assert renderer.has_template
    text = renderer(level_prompt("do goldfish grow", 2, 4))
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>assistant\n")
    assert "do goldfish grow" in text
    assert renderer("already rendered") == "already rendered"


# -- v2: a definition, what the paragraph must and must not contain, and an example per level ------

def test_released_versions_keep_their_wording():
    # a released version is frozen: these hashes change only if its texts change (add a version instead)
    assert get_template("v1").fingerprint() == "0e74b71ebfcd331d"
    assert get_template("v2").fingerprint() == "e7b86b9bfaf562f8"


@pytest.mark.parametrize("n_levels", [2, 3, 4, 5])
def test_v2_says_for_every_level_what_it_must_and_must_not_contain(n_levels):
    users = [level_prompt("do goldfish grow", level, n_levels, "v2")[-1]["content"] for level in range(n_levels)]
    assert len(set(users)) == n_levels
    for user in users:
        assert user.startswith("Query: do goldfish grow\n\n")  # the query first: prefix caching
        assert "must" in user and "must not" in user and "for example" in user
    assert "completely" in users[-1] and "answers" in users[-1]


def test_v2_level_1_is_on_topic_without_the_answer():
    user = level_prompt("do goldfish grow", 1, 4, "v2")[-1]["content"]
    assert "about the query's topic that does not contain the answer" in user
    assert "unrelated" in level_prompt("do goldfish grow", 0, 4, "v2")[-1]["content"]
    # v1 is unchanged by v2
    assert level_prompt("q", 1, 4, "v1")[-1]["content"].endswith("about the topic of this query that does not answer it.")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_template_renders_and_a_typical_answer_parses(version):
    from transformers import AutoTokenizer

    from synrank.generate.parse import parse_passage
    from synrank.llm.engine import ChatRenderer
    from synrank.models import resolve_generator

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(resolve_generator("default")))
    answer = ("Sure, here is a paragraph:\n\nGoldfish keep growing for most of their lives. In a small bowl they "
              "stay small, while in a pond they can reach thirty centimetres.<|im_end|>")
    for n_levels in range(2, 6):
        for level in range(n_levels):
            text = renderer(level_prompt("do goldfish grow", level, n_levels, version))
            assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
            assert text.count("<|im_start|>") == 3 and "do goldfish grow" in text
    parsed = parse_passage(answer, "stop")
    assert parsed.ok and parsed.text.startswith("Goldfish keep growing") and "<|im_end|>" not in parsed.text
