"""`synrank evaluate`: a model (an encoder directory, ``default`` or ``bm25``) on real collections.

For each collection: the judged queries of the split are retrieved from the whole corpus (top k,
default 100) and scored with pytrec_eval (see `metrics`). Outputs under ``<out>/<collection>/``:

- ``run.trec``      the TREC run (``qid Q0 docid rank score tag``)
- ``metrics.json``  means and per-query values of every measure, and how they were obtained
- ``embeddings/``   query and passage embedding shards (Parquet), kept only with keep_embeddings

and ``<out>/summary.json`` / ``summary.md``: the table across collections.

Dense models: the queries and corpora of all collections go through one Ray Data actor pool
(`encode.encode_sources`), then a faiss index per collection (`index.DenseIndex`, built from the
shards) is searched in the driver. BM25 (`bm25.BM25Retriever`) runs in the driver.

Every collection is checked before any encoding starts, so a bad input fails in seconds: a model
that is not an encoder, a collection without the asked split (the message lists those it has),
no corpus or an empty corpus, qrels naming no query of the queries file, qrels naming no document
of the corpus.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synrank.config import EncoderConfig, EvaluateConfig
from synrank import storage
from synrank.storage import write_json, write_text
from synrank.data.errors import DataError, DataWarning, MissingFileError
from synrank.evaluate.bm25 import BM25_NAME, BM25Retriever
from synrank.evaluate.index import DenseIndex, IndexOptions, results_to_run
from synrank.evaluate.metrics import MEASURES, evaluate_run, mean_metrics
from synrank.evaluate.runfile import write_run

log = logging.getLogger(__name__)

RUN_FILE = "run.trec"
METRICS_FILE = "metrics.json"


class ModelError(ValueError):
    """The model argument does not name a usable encoder."""


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class PreparedCollection:
    """A checked collection: its judged queries (in queries-file order) and qrels."""

    name: str
    path: str
    split: str
    corpus_path: str
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    num_docs: int
    notes: list[str] = field(default_factory=list)


def _note(prepared_notes: list[str], message: str) -> None:
    prepared_notes.append(message)
    warnings.warn(DataWarning(message), stacklevel=3)


def prepare_collection(path: str, split: str = "test", name: str | None = None) -> PreparedCollection:
    """Read and check one collection folder for evaluation (see the module doc for the errors)."""
    from synrank.data import readers

    path = os.fspath(path)
    splits = readers.available_splits(path)  # raises MissingFileError for a missing path
    if split not in splits:
        if splits:
            raise MissingFileError(path, f"no qrels for split {split!r}; this collection has: {', '.join(splits)} "
                                   f"(pass --split {splits[0]})")
        raise MissingFileError(path, f"no qrels at all (looked for qrels/{split}.tsv, qrels/{split}.parquet, "
                               f"qrels-{split}.parquet): it is a query set, not a test collection")
    corpus_path = readers.collection_file(path, "corpus")
    if corpus_path is None:
        raise MissingFileError(path, "no corpus (corpus.jsonl, corpus.jsonl.gz or corpus.parquet): retrieval "
                               "needs one; this folder holds queries and qrels only")
    queries = readers.read_queries(path)
    qrels_table = readers.read_qrels(path, split=split)
    qrels_file = readers.collection_file(path, "qrels", split) or path
    notes: list[str] = []

    qrels: dict[str, dict[str, int]] = {}
    for qid, did, grade in zip(*(qrels_table.column(c).to_pylist() for c in ("query_id", "doc_id", "grade"))):
        qrels.setdefault(qid, {})[did] = int(grade)
    if not qrels:
        raise DataError(qrels_file, f"the qrels of split {split!r} are empty")

    texts = dict(zip(queries.column("query_id").to_pylist(), queries.column("text").to_pylist()))
    judged = [qid for qid in texts if qid in qrels]
    missing_queries = [qid for qid in qrels if qid not in texts]
    if not judged:
        raise DataError(qrels_file, f"no judged query is in the queries file ({len(qrels)} judged query id(s), e.g. "
                        f"{missing_queries[0]!r}, none of the {len(texts)} queries): do the qrels belong to this "
                        "collection?")
    if missing_queries:
        _note(notes, f"{qrels_file}: {len(missing_queries)} judged query id(s) have no text in the queries file "
              f"(e.g. {missing_queries[0]!r}); they are not evaluated")

    # One streaming pass over the corpus: its size, and which judged documents it holds.
    judged_docs = {did for qid in judged for did in qrels[qid]}
    found: set[str] = set()
    num_docs = 0
    for batch in readers.iter_corpus(path, batch_size=65_536):
        num_docs += batch.num_rows
        if len(found) < len(judged_docs):
            found.update(d for d in batch.column(0).to_pylist() if d in judged_docs)
    if num_docs == 0:
        raise DataError(corpus_path, "the corpus is empty: there is nothing to retrieve")
    if not found:
        raise DataError(qrels_file, f"no judged document is in the corpus ({len(judged_docs)} judged doc id(s), "
                        f"none among the {num_docs} documents of {corpus_path}): the qrels have no judged query "
                        "with a document in this corpus; do the qrels belong to it?")
    if len(found) < len(judged_docs):
        _note(notes, f"{qrels_file}: {len(judged_docs) - len(found)} of {len(judged_docs)} judged doc id(s) are not "
              f"in the corpus; they stay in the qrels (relevant but unretrievable, as in trec_eval)")
    no_doc = [qid for qid in judged if not any(d in found for d in qrels[qid])]
    if no_doc:
        _note(notes, f"{qrels_file}: {len(no_doc)} judged query(ies) have no judged document in the corpus "
              f"(e.g. {no_doc[0]!r}); they score 0")

    return PreparedCollection(
        name=name or storage.name(path) or path,
        path=path,
        split=split,
        corpus_path=corpus_path,
        query_ids=judged,
        query_texts=[texts[q] for q in judged],
        qrels={q: qrels[q] for q in judged},
        num_docs=num_docs,
        notes=notes,
    )


def _parts(path: str) -> tuple[str, ...]:
    if storage.is_local(path):
        return Path(path.rstrip("/")).parts or (path,)
    return tuple(x for x in path.split("://", 1)[1].split("/") if x) or (path,)


def unique_names(paths: list[str]) -> list[str]:
    """Collection names for output folders: the folder name, with parents added on a clash."""
    parts = [_parts(os.fspath(p)) for p in paths]
    depth = {i: 1 for i in range(len(paths))}
    while True:
        names = ["__".join(parts[i][-depth[i]:]) for i in range(len(paths))]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


# ---------------------------------------------------------------------------------------------
# the model


def is_bm25(model: str) -> bool:
    return model.strip().lower() == BM25_NAME


def model_label(model: str) -> str:
    """A short name for run tags and tables."""
    from synrank.models import DEFAULT, DEFAULT_ENCODER_NAME

    if is_bm25(model):
        return BM25_NAME
    if model in (DEFAULT, DEFAULT_ENCODER_NAME):
        return DEFAULT_ENCODER_NAME.rsplit("/", 1)[-1]
    return storage.name(model) or model


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_encoder(model: str) -> str:
    """Resolve `model` to an encoder path (or hub name) and check that it loads as one, cheaply:
    a Hugging Face config, a tokenizer and weights. Raises ModelError saying what is wrong."""
    from synrank.models import ModelNotFound, resolve_encoder

    try:
        path = resolve_encoder(model)
    except ModelNotFound as exc:
        raise ModelError(f"model {model!r} is not an encoder: {exc} (or pass 'bm25' or 'default')") from None
    from transformers import AutoConfig, AutoTokenizer

    local = Path(path)
    if not local.is_dir():  # a hub name: its config must be reachable (cache or network) from here too
        try:
            AutoConfig.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model {model!r} is not a local directory and not a loadable hub model ({exc}); "
                             "pass an encoder directory, 'default' or 'bm25'") from None
        return path
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelError(f"model {model!r} is not an encoder: its config.json does not load ({exc})") from None
    if not any((local / w).exists() for w in _WEIGHTS):
        raise ModelError(f"model {model!r} is not an encoder: no weights in {path} (expected one of "
                         f"{', '.join(_WEIGHTS)})")
    try:
        AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"model {model!r} is not an encoder: its tokenizer does not load ({exc})") from None
    if not getattr(config, "hidden_size", None):
        raise ModelError(f"model {model!r} is not an encoder: its config has no hidden_size")
    return path


def encoder_overrides(encoder: EncoderConfig) -> dict[str, Any]:
    """The encoder settings given explicitly (YAML / overrides); they win over a model's own."""
    values = encoder.model_dump(exclude_unset=True)
    values.pop("model", None)
    return values


# ---------------------------------------------------------------------------------------------
# the stage


def _progress(total: int | None, desc: str, enabled: bool) -> Callable[[int], None] | None:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="q" if "search" in desc else "doc", leave=False, mininterval=1.0)

    def update(n: int) -> None:
        bar.update(n)
        if total is not None and bar.n >= total:
            bar.close()

    return update


def _rmtree(path: str) -> None:
    storage.remove(path)


def evaluate(
    config: EvaluateConfig,
    *,
    address: str | None = None,
    keep_embeddings: bool = False,
    index_options: IndexOptions | None = None,
    relevance_level: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the evaluation `config` describes; returns ``{collection: {"metrics", "per_query",
    "run_path", "metrics_path", ...}}`` and writes the files listed in the module doc."""
    if not config.collections:
        raise ValueError("evaluate: no collection given (--collection DIR [DIR ...])")
    if not config.out:
        raise ValueError("evaluate: no output folder given (--out DIR)")
    model = config.model
    bm25 = is_bm25(model)
    model_path = None if bm25 else check_encoder(model)
    # Encoder actors may run on other nodes: a remote model goes to them as its URL (each node
    # makes its own local copy); a local one as the resolved path.
    actor_model = model if not bm25 and not storage.is_local(model) else model_path
    names = unique_names(config.collections)
    started = time.perf_counter()
    prepared = [prepare_collection(p, config.split, n) for p, n in zip(config.collections, names)]
    label = model_label(model)
    out = os.fspath(config.out)
    options = dataclasses.replace(index_options or IndexOptions(), kind=config.index)
    settings: dict[str, Any] = {"model": model, "label": label, "split": config.split, "top_k": config.top_k,
                                "relevance_level": relevance_level}
    results: dict[str, dict[str, Any]] = {}

    if bm25:
        for col in prepared:
            t0 = time.perf_counter()
            from synrank.data.readers import iter_corpus

            retriever = BM25Retriever()
            retriever.index_batches(iter_corpus(col.corpus_path, batch_size=10_000),
                                    progress=_progress(col.num_docs, f"bm25 index {col.name}", progress))
            t1 = time.perf_counter()
            run = retriever.search(col.query_ids, col.query_texts, k=config.top_k, show_progress=progress)
            t2 = time.perf_counter()
            results[col.name] = _finish(col, run, out, label, {**settings, "bm25": retriever.settings},
                                        {"index_s": t1 - t0, "search_s": t2 - t1}, relevance_level)
    else:
        from synrank.evaluate.encode import EncodeSource, EncodeStats, encode_sources, read_all, read_shards
        from synrank.runtime import init_ray

        overrides = encoder_overrides(config.encoder)
        resources = init_ray(address)
        sources = []
        for col in prepared:
            emb_dir = storage.join(out, col.name, "embeddings")
            _rmtree(emb_dir)
            sources.append(EncodeSource(col.name, emb_dir, col.query_ids, col.query_texts, col.corpus_path, col.num_docs))
        total_docs = sum(c.num_docs for c in prepared)
        log.info("encoding %d queries and %d documents of %d collection(s) with %s", sum(len(c.query_ids) for c in prepared),
                 total_docs, len(prepared), label)
        t0 = time.perf_counter()
        stats = EncodeStats()
        shards = encode_sources(sources, actor_model, overrides=overrides, batch_size=config.batch_size,
                                num_encoders=config.num_encoders, resources=resources, progress=progress,
                                stats=stats)
        encode_s = time.perf_counter() - t0
        log.info("encoded in %.1f s (%.1f docs/s; %d actor(s), model load %.1f s, busiest actor encoding %.1f s)",
                 encode_s, total_docs / max(encode_s, 1e-9), len(stats.busy_s),
                 max(stats.init_s.values(), default=0.0), stats.busiest_s)
        for col in prepared:
            t1 = time.perf_counter()
            got = shards[col.name]
            if got.rows("passage") != col.num_docs or got.rows("query") != len(col.query_ids):
                raise RuntimeError(f"{col.name}: encoded {got.rows('passage')} documents and {got.rows('query')} "
                                   f"queries, expected {col.num_docs} and {len(col.query_ids)}")
            qids, qvecs = read_all(got.paths("query"))
            passage_paths = got.paths("passage")
            index = DenseIndex.build(qvecs.shape[1], lambda: read_shards(passage_paths), col.num_docs, options,
                                     top_k=config.top_k)
            order = {q: i for i, q in enumerate(qids)}
            qvecs = qvecs[[order[q] for q in col.query_ids]]
            t2 = time.perf_counter()
            run = results_to_run(col.query_ids, index.search(qvecs, config.top_k), index.doc_ids)
            t3 = time.perf_counter()
            del index
            if not keep_embeddings:
                _rmtree(storage.join(out, col.name, "embeddings"))
            extra = {**settings, "encoder": overrides, "model_path": model_path, "index": options.kind}
            results[col.name] = _finish(col, run, out, label, extra,
                                        {"encode_s_all_collections": encode_s, "encoder_actors": stats.as_dict(),
                                         "index_s": t2 - t1, "search_s": t3 - t2},
                                        relevance_level)
    summary = summary_table(results)
    write_text(summary + "\n", storage.join(out, "summary.md"))
    write_json({"model": model, "label": label, "split": config.split, "top_k": config.top_k,
                "seconds": time.perf_counter() - started,
                "collections": {n: {"metrics": r["metrics"], "num_queries": r["num_queries"], "num_docs": r["num_docs"],
                                    "metrics_path": r["metrics_path"], "run_path": r["run_path"]}
                                for n, r in results.items()}},
               storage.join(out, "summary.json"))
    log.debug("%s on %d collection(s):\n%s", label, len(results), summary)
    return results


def _finish(col: PreparedCollection, run, out: str, label: str, settings: dict, timings: dict,
            relevance_level: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    per_query = evaluate_run(col.qrels, run, relevance_level=relevance_level)
    metrics = mean_metrics(per_query, MEASURES)
    timings = {**timings, "metrics_s": time.perf_counter() - t0}
    run_path = storage.join(out, col.name, RUN_FILE)
    metrics_path = storage.join(out, col.name, METRICS_FILE)
    write_run(run, run_path, tag=label)
    write_json({
        "collection": col.name, "collection_path": col.path, "split": col.split, "name": label,
        "num_queries": len(col.query_ids), "num_docs": col.num_docs, "measures": list(MEASURES),
        "metrics": metrics, "per_query": per_query, "run_path": run_path, "settings": settings,
        "timings": timings, "notes": col.notes,
        "relevance": f"nDCG: graded qrels as given; recall, MRR, MAP: grade >= {relevance_level} is relevant",
    }, metrics_path)
    return {"metrics": metrics, "per_query": per_query, "run_path": run_path, "metrics_path": metrics_path,
            "num_queries": len(col.query_ids), "num_docs": col.num_docs, "timings": timings}


def summary_table(results: dict[str, dict[str, Any]], measures=MEASURES) -> str:
    """A Markdown table: one row per collection, one column per measure, and their mean."""
    header = ["collection", "queries", "docs", *measures]
    rows = [[name, str(r["num_queries"]), str(r["num_docs"]), *(f"{r['metrics'][m]:.4f}" for m in measures)]
            for name, r in results.items()]
    if len(results) > 1:
        means = [sum(r["metrics"][m] for r in results.values()) / len(results) for m in measures]
        rows.append(["mean", "", "", *(f"{v:.4f}" for v in means)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                          for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def evaluate_model(
    model: str,
    collections: list[str],
    out_dir: str,
    split: str = "test",
    top_k: int = 100,
    encoder_batch_size: int = 64,
    index: str = "flat",
    *,
    encoder: EncoderConfig | dict | None = None,
    num_encoders: int | None = None,
    address: str | None = None,
    keep_embeddings: bool = False,
    index_options: IndexOptions | None = None,
    relevance_level: int = 1,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate `model` (encoder path, hub name, ``default`` or ``bm25``) on `collections`.

    Returns ``{collection_name: {"metrics": {measure: mean}, "per_query": {qid: {measure: v}},
    "run_path": str, "metrics_path": str, "num_queries", "num_docs", "timings"}}``.
    """
    if isinstance(encoder, dict):
        encoder = EncoderConfig(**encoder)
    fields: dict[str, Any] = dict(model=model, collections=[os.fspath(c) for c in collections], split=split,
                                  out=os.fspath(out_dir), top_k=top_k, index=index, batch_size=encoder_batch_size,
                                  num_encoders=num_encoders)
    if encoder is not None:
        fields["encoder"] = encoder
    config = EvaluateConfig(**fields)
    results = evaluate(config, address=address, keep_embeddings=keep_embeddings, index_options=index_options,
                       relevance_level=relevance_level, progress=progress)
    log.info("%s on %d collection(s):\n%s", model_label(model), len(results), summary_table(results))
    return results
