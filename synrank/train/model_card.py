"""The model card of an exported model: ``README.md`` in the sentence-transformers directory.

>>> write_card(card_facts(config, generator="HuggingFaceTB/SmolLM2-135M-Instruct"), "runs/r/train/model")
>>> write_card(card_facts(config, generator=..., evaluation=table), "runs/r/train/model")  # evaluated

(`synrank.train.export.export_model` writes the first; ``write_model_card`` the second, from the
resolved config the run left beside the model.)

A card is a function of its facts (`CardFacts`): the resolved training config (base model, loss,
steps, batch, learning rate, encoder settings), the training data as the groups record it (label
source, relevance levels, training queries; the generator of synthetic passages comes from whoever
ran generation, the pipeline) and, when the model was evaluated, the evaluation table. Rendering the
same facts gives the same card, so a later stage can render it again with more facts.

The YAML front matter is what the Hugging Face hub reads (library, base model, pipeline tag, tags);
`SentenceTransformer(path)` loads the directory unchanged and keeps the card as its card text.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from synrank import storage
from synrank.config import TrainConfig
from synrank.models import DEFAULT, DEFAULT_ENCODER_NAME

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
GENERATED_SOURCES = ("synthetic", "mixed")  # label sources whose passages an LLM wrote
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class TrainingData:
    """What the training groups record about themselves (None: not recorded)."""

    path: str | None = None
    source: str | None = None  # synthetic | human | llm | mixed
    n_levels: int | None = None
    n_queries: int | None = None  # one training group per query
    group_size: int | None = None
    passages: dict[str, int] = field(default_factory=dict)  # passages by origin (synthetic, human, bm25, ...)
    generator: str | None = None  # the LLM that wrote the synthetic passages


@dataclass(frozen=True)
class CardFacts:
    config: TrainConfig  # resolved: groups path, group size and steps filled in
    data: TrainingData
    loss_params: dict[str, Any]  # every parameter the loss was built with, defaults included
    evaluation: str | None = None  # markdown (e.g. the pipeline's summary table), None: not evaluated


def training_data(groups_path: str | None, generator: str | None = None) -> TrainingData:
    """The facts of the groups at `groups_path`: ``<groups>.stats.json`` (label source, passage
    origins), the scale in the file's metadata and the number of groups (one per query)."""
    if not groups_path:
        return TrainingData(generator=generator)
    from synrank.train.ingest import groups_scale, groups_shape

    stats_path = f"{groups_path}.stats.json"
    try:
        stats = storage.read_json(stats_path) if storage.exists(stats_path) else {}
        n_queries, group_size = groups_shape(groups_path)
        n_levels, _ = groups_scale(groups_path)
    except (OSError, ValueError) as exc:  # the card documents a model; it does not fail its export
        log.warning("model card: the training groups %s are not readable (%s); the card says not recorded",
                    groups_path, exc)
        return TrainingData(path=str(groups_path), generator=generator)
    return TrainingData(path=str(groups_path), source=stats.get("source"), n_levels=n_levels, n_queries=n_queries,
                        group_size=group_size, passages=dict(stats.get("sources") or {}), generator=generator)


def loss_parameters(config: TrainConfig) -> dict[str, Any]:
    """The parameters the training loop built the loss with (`synrank.train.loop.build_loss`):
    the configured ones and the loss's defaults; the configured ones alone if it cannot be built."""
    from synrank.train.loop import build_loss

    try:
        return build_loss(config).config()
    except ValueError:
        return dict(config.loss_params)


def card_facts(config: TrainConfig, *, generator: str | None = None, evaluation: str | None = None) -> CardFacts:
    return CardFacts(config, training_data(config.groups, generator), loss_parameters(config), evaluation)


def base_model_name(model: str) -> str:
    """The base encoder as people know it: the packaged default by its hub name."""
    return DEFAULT_ENCODER_NAME if model in (DEFAULT, "all-MiniLM-L6-v2") else model


def _front_matter(facts: CardFacts) -> str:
    base = base_model_name(facts.config.encoder.model)
    meta: dict[str, Any] = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity"}
    if _HUB_ID.match(base):  # the hub accepts only model ids here, not local paths
        meta["base_model"] = base
    meta["tags"] = ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense-retrieval",
                    "synrank", f"loss:{facts.config.loss}"]
    if facts.data.source:
        meta["tags"].append(f"labels:{facts.data.source}")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _value(value: Any, missing: str = "not recorded") -> str:
    if value is None:
        return missing
    return f"`{value}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {name} | {_value(value)} |" for name, value in rows)]


def _generator(data: TrainingData) -> Any:
    if data.source is not None and data.source not in GENERATED_SOURCES:
        return "none (no generated passages)"
    return data.generator


def _data_section(data: TrainingData) -> list[str]:
    rows: list[tuple[str, Any]] = [
        ("label source", data.source),
        ("relevance levels", data.n_levels),
        ("generator", _generator(data)),
        ("training queries", data.n_queries),
        ("passages per query (group size)", data.group_size),
    ]
    if data.passages:
        rows.append(("passages by origin", ", ".join(f"{k} {v}" for k, v in sorted(data.passages.items()))))
    rows.append(("groups file", data.path))
    return ["## Training data", "", *_table(rows)]


def _loss_section(config: TrainConfig, params: dict[str, Any]) -> list[str]:
    lines = ["## Loss", "", f"`{config.loss}` (`synrank.losses`), with:", ""]
    lines += [f"- `{name}` = {_value(value, missing='None')}" for name, value in params.items()] or ["- none"]
    return lines


def _training_section(config: TrainConfig) -> list[str]:
    rows: list[tuple[str, Any]] = [
        ("steps", config.max_steps),
        ("epochs", config.epochs),
        ("batch size (queries per worker per step)", config.batch_size),
        ("workers", config.num_workers),
        ("gradient accumulation", config.grad_accumulation),
        ("in-batch negatives", config.in_batch_negatives),
        ("learning rate", config.lr),
        ("warmup ratio", config.warmup_ratio),
        ("weight decay", config.weight_decay),
        ("WiSE-FT alpha (weight of the fine-tuned model against the base)", config.wise_ft_alpha),
        ("seed", config.seed),
    ]
    return ["## Training", "", *_table(rows)]


def _encoder_section(config: TrainConfig) -> list[str]:
    enc = config.encoder
    rows: list[tuple[str, Any]] = [
        ("pooling", enc.pooling),
        ("similarity", enc.similarity),
        ("normalized embeddings", enc.normalize or enc.similarity == "cosine"),
        ("query prefix", json.dumps(enc.query_prefix)),
        ("passage prefix", json.dumps(enc.passage_prefix)),
        ("max query / passage tokens", f"{enc.max_query_length} / {enc.max_passage_length}"),
    ]
    return ["## Encoder", "", *_table(rows)]


def _evaluation_section(evaluation: str | None) -> list[str]:
    if not evaluation:
        return ["## Evaluation", "", "No evaluation was run for this export; `synrank evaluate --model <this "
                "directory> --collection <BEIR folder>` measures it."]
    return ["## Evaluation", "", "Retrieval on held-out test queries of the run that trained it (`trained` is this "
            "model, the other systems are baselines):", "", evaluation.strip()]


def render(facts: CardFacts) -> str:
    """The card: YAML front matter and a markdown body."""
    config = facts.config
    base = base_model_name(config.encoder.model)
    body = [
        f"# Dense retriever trained with synrank from {base}",
        "",
        f"A bi-encoder (queries and passages share the weights) fine-tuned from `{base}` with the "
        f"`{config.loss}` loss on graded training groups, by synrank.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        'model = SentenceTransformer("path/to/this/directory")',
        'queries = model.encode(["a question"], prompt_name="query")',
        'passages = model.encode(["a passage"], prompt_name="document")',
        "scores = model.similarity(queries, passages)",
        "```",
        "",
        *_data_section(facts.data),
        "",
        *_loss_section(config, facts.loss_params),
        "",
        *_training_section(config),
        "",
        *_encoder_section(config),
        "",
        *_evaluation_section(facts.evaluation),
    ]
    return _front_matter(facts) + "\n" + "\n".join(body) + "\n"


def write_card(facts: CardFacts, model_dir: str) -> str:
    """Write the card into the model directory (local path or URL), atomically; returns its URL."""
    url = storage.join(model_dir, CARD_FILE)
    storage.write_text(render(facts), url)
    return url
