"""The peer a user would pick instead of synrank's trainer: sentence-transformers ``fit`` with
MultipleNegativesRankingLoss (MNRL) on the same training groups and the same budget.

Each group becomes one (anchor, positive, negative) row, the hard-negative triple MNRL is used with:
the positive is the group's best-graded passage if it reaches synrank's positive threshold
(``synrank.data.levels.positive_threshold``), the negative the group's best-graded passage below it
(for BM25-mined groups, the hardest negative). A group without both is left out and counted.

Budget and settings follow the ``TrainConfig`` synrank trains with: epochs (or max_steps), queries
per step (``batch_size`` times ``num_workers``), learning rate, warm-up, weight decay, gradient
clipping, seed, the passage length limit (sentence-transformers has one limit for queries and
passages), bf16 autocast when synrank has it (``train.cpu_amp``), and MNRL's scale = 1 / InfoNCE
temperature (``loss_params.temperature``, default 0.05).
Batches take no duplicate texts (``BatchSamplers.NO_DUPLICATES``), as sentence-transformers
recommends for MNRL. Nothing of synrank's own recipe is added (no WiSE-FT): this is plain ``fit``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass

from synrank.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Triples:
    anchor: list[str]
    positive: list[str]
    negative: list[str]
    skipped: int  # groups without a passage on each side of the threshold


def mnrl_triples(groups_path: str, threshold: float) -> Triples:
    """One (query, best positive, best-graded negative) row per group of a groups parquet file."""
    from synrank.data.readers import read_table

    table = read_table(groups_path, "groups")
    anchor: list[str] = []
    positive: list[str] = []
    negative: list[str] = []
    skipped = 0
    for query, texts, grades in zip(table.column("query").to_pylist(), table.column("texts").to_pylist(),
                                    table.column("grades").to_pylist()):
        order = sorted(range(len(texts)), key=lambda j: -grades[j])  # stable: ties keep group order
        pos = [j for j in order if grades[j] >= threshold]
        neg = [j for j in order if grades[j] < threshold]
        if not pos or not neg:
            skipped += 1
            continue
        anchor.append(query)
        positive.append(texts[pos[0]])
        negative.append(texts[neg[0]])
    if not anchor:
        raise ValueError(f"{groups_path}: no group has both a positive (grade >= {threshold}) and a negative; "
                         "MNRL needs (query, positive, negative) rows")
    return Triples(anchor, positive, negative, skipped)


def fit_st_mnrl(config: TrainConfig, groups_path: str, out_dir: str, *, n_levels: int) -> str:
    """Train the encoder of `config` with sentence-transformers' trainer and MNRL on `groups_path`;
    save the model (sentence-transformers layout) to `out_dir` and return it."""
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.training_args import BatchSamplers

    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 5
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    from synrank.data.levels import positive_threshold
    from synrank.models import resolve_encoder

    threshold = config.positive_threshold if config.positive_threshold is not None else positive_threshold(n_levels)
    triples = mnrl_triples(groups_path, threshold)
    log.info("st-mnrl peer: %d (query, positive, negative) rows from %s (%d groups without both sides left out)",
             len(triples.anchor), groups_path, triples.skipped)
    dataset = Dataset.from_dict({"anchor": triples.anchor, "positive": triples.positive,
                                 "negative": triples.negative})
    model = SentenceTransformer(resolve_encoder(config.encoder.model), device="cpu")
    model.max_seq_length = config.encoder.max_passage_length
    temperature = float(config.loss_params.get("temperature", 0.05))
    threads = torch.get_num_threads()  # the peer trains in the calling process (the pipeline's driver)
    torch.set_num_threads(config.cpus_per_worker * config.num_workers)
    with tempfile.TemporaryDirectory() as scratch:
        args = SentenceTransformerTrainingArguments(
            output_dir=scratch, per_device_train_batch_size=config.batch_size * config.num_workers,
            num_train_epochs=config.epochs, max_steps=config.max_steps or -1, learning_rate=config.lr,
            warmup_ratio=config.warmup_ratio, weight_decay=config.weight_decay,
            max_grad_norm=config.max_grad_norm or 0.0, seed=config.seed, save_strategy="no", report_to="none",
            logging_steps=10_000, batch_sampler=BatchSamplers.NO_DUPLICATES, use_cpu=True, disable_tqdm=True,
            bf16=config.cpu_amp)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                             loss=MultipleNegativesRankingLoss(model, scale=1.0 / temperature))
        try:
            trainer.train()
        finally:
            torch.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    model.save(out_dir)
    return out_dir
