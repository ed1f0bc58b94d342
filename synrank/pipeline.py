"""`synrank pipeline`: every stage in one run directory, resumable stage by stage.

    queries ─ split ─┬─ train queries ─ generate ─ (annotate) ─ groups ─ train ─┐
                     └─ test queries ── test collection ────────────────────────┴─ evaluate ─ summary

Each stage writes its outputs, then a marker `<stage>/_stage.json` holding a fingerprint of the
settings that produced them (its own config section and its inputs' fingerprints). A rerun skips a
stage whose marker matches, so a run that crashed continues where it stopped; a stage whose
settings changed runs again, and so does everything after it.

Run directory:
    queries/{train,test}.parquet      the split
    generate/{train,test}/            synthetic passages (generate's shards and report)
    collections/<name>/               the test collection(s): queries, corpus, qrels-test (Parquet)
    annotate/                         LLM qrels for the train queries (pipeline.annotate)
    groups/groups.parquet             training groups
    train/                            checkpoints, model/ (sentence-transformers, with its card
                                      README.md: data, loss, steps, the evaluation table), curve
    evaluate/<system>/<collection>/   run files and metrics
    summary.json, summary.md          the result table
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from synrank.config import GroupsConfig, QuerySplitConfig, SynrankConfig
from synrank.data import schemas
from synrank import storage
from synrank.storage import write_json, write_parquet, write_text

log = logging.getLogger(__name__)

DEMO_QUERIES = "demo"
ST_PEER = "st-mnrl"  # the baseline trained with sentence-transformers (synrank.train.st_peer)
MARKER = "_stage.json"
ATTEMPT = "_attempt.json"  # written when a resumable stage starts: the settings its checkpoints belong to
SUMMARY_MEASURES = ("ndcg@10", "recall@100", "mrr@10")


class PipelineError(ValueError):
    pass


def demo_queries_path() -> str:
    """The 40 questions shipped with synrank for the embedded demo."""
    return str(resources.files("synrank") / "resources" / "demo_queries.jsonl")


def fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class StageLog:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class PipelineResult:
    run_dir: str
    stages: list[StageLog]
    summary: dict[str, dict[str, dict[str, float]]]  # system -> collection -> measure -> value
    table: str


class RunDir:
    """The run directory: a local path (made absolute) or a URL (s3://, gs://, ...)."""

    def __init__(self, root: str) -> None:
        self.root = storage.absolute(root)

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def marker(self, stage: str) -> dict[str, Any] | None:
        try:
            return storage.read_json(self.path(stage, MARKER))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # a marker is written atomically; an unreadable one means: run again

    def done(self, stage: str, fp: str) -> dict[str, Any] | None:
        marker = self.marker(stage)
        return marker if marker and marker.get("fingerprint") == fp else None

    def begin(self, stage: str, fp: str) -> bool:
        """Before a resumable stage (train) runs with fingerprint `fp`: if its folder holds the work of
        other settings (a finished run's marker, or an attempt started with another fingerprint), that
        work is removed, since resuming from it would continue the other run. A crashed attempt with
        the same settings is kept, to be resumed. Returns whether anything was removed."""
        previous = [m.get("fingerprint") for m in (self.marker(stage), self._attempt(stage)) if m]
        stale = any(p != fp for p in previous)
        if stale:
            log.warning("stage %s: %s holds the work of other settings; starting over", stage, self.path(stage))
            storage.remove(self.path(stage))
        write_json({"stage": stage, "fingerprint": fp, "started": time.time()}, self.path(stage, ATTEMPT))
        return stale

    def _attempt(self, stage: str) -> dict[str, Any] | None:
        try:
            return storage.read_json(self.path(stage, ATTEMPT))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def mark(self, stage: str, fp: str, outputs: dict[str, str], extra: dict[str, Any] | None = None) -> None:
        write_json({"stage": stage, "fingerprint": fp, "outputs": outputs, "finished": time.time(), **(extra or {})},
                   self.path(stage, MARKER))


class Pipeline:
    """Runs the stages of one SynrankConfig; `run()` is the whole pipeline."""

    def __init__(self, cfg: SynrankConfig, stop_after: str | None = None) -> None:
        self.cfg = cfg
        self.dir = RunDir(cfg.run_dir)
        self.stages: list[StageLog] = []
        self.stop_after = stop_after
        self._pool = None
        self.verdict: list[dict[str, Any]] = []  # trained vs untrained per test collection

    # -- stage bookkeeping -----------------------------------------------------------------
    def _stage(self, name: str, fp: str, body: Callable[[], dict[str, str]]) -> dict[str, str]:
        done = self.dir.done(name, fp)
        if done is not None:
            log.info("stage %s: done before with the same settings, skipped", name)
            self.stages.append(StageLog(name, "skipped", 0.0, done["outputs"]))
            return done["outputs"]
        log.info("stage %s: running", name)
        began = time.perf_counter()
        outputs = body()
        seconds = time.perf_counter() - began
        self.dir.mark(name, fp, outputs, {"seconds": round(seconds, 2)})
        self.stages.append(StageLog(name, "ran", seconds, outputs))
        log.info("stage %s: finished in %.1f s", name, seconds)
        return outputs

    # -- stages ----------------------------------------------------------------------------
    def split(self) -> tuple[dict[str, str], str]:
        """Queries and their train/test split."""
        p = self.cfg.pipeline
        source = p.collection or self.cfg.generate.queries or DEMO_QUERIES
        fp = fingerprint("split", source, p.test_fraction, p.split_seed, self.cfg.generate.limit)
        if p.collection:  # v2: a collection's judged queries are split before `limit` (see body)
            fp = fingerprint(fp, "v2")

        def body() -> dict[str, str]:
            queries, judged = self._source_queries(source)
            ids = judged if judged is not None else queries.column("query_id").to_pylist()
            limit = self.cfg.generate.limit
            # With a collection, split every judged query first, exactly as the groups' query_split
            # (synrank.data.groups.human_split) splits them, and only then apply `limit`: a query held
            # out here is held out by every label source, whatever `limit` is. Without one only the
            # generated passages of the training queries are trained on: `limit` comes first.
            if limit and judged is None:
                ids = ids[:limit]
            if p.test_fraction > 0:
                from synrank.data.groups import split_queries

                train, test = split_queries(ids, 1.0 - p.test_fraction, p.split_seed)
            else:
                train, test = sorted(ids), []
            if limit and judged is not None:
                first = set(ids[:limit])
                train, test = [q for q in train if q in first], [q for q in test if q in first]
                if not train:
                    raise PipelineError(f"generate.limit={limit} leaves no training query after the split "
                                        f"(pipeline.test_fraction={p.test_fraction}); raise the limit")
            out = {}
            for name, keep in (("train", train), ("test", test)):
                table = queries.filter(pc.is_in(queries.column("query_id"), pa.array(keep, pa.string())))
                path = self.dir.path("queries", f"{name}.parquet")
                write_parquet(table, path)
                out[name] = path
            log.info("queries: %d for training, %d held out for evaluation", len(train), len(test))
            return out

        return self._stage("queries", fp, body), fp

    def _source_queries(self, source: str) -> tuple[pa.Table, list[str] | None]:
        from synrank.data.readers import load_collection, read_queries

        if source == DEMO_QUERIES:
            return read_queries(demo_queries_path()), None
        if self.cfg.pipeline.collection:
            col = load_collection(source, self.cfg.evaluate.split)
            judged = sorted(set(col.qrels.column("query_id").to_pylist()))
            if not judged:
                raise PipelineError(f"{source}: no judged queries in split {self.cfg.evaluate.split!r}")
            return col.queries, judged
        return read_queries(source), None

    def generate(self, queries: dict[str, str], upstream: str) -> tuple[dict[str, str], str]:
        gen = self.cfg.generate
        settings = gen.model_dump(exclude={"queries", "out", "limit", "engine_pool", "num_engines", "min_engines", "engine_cpus"})
        # The test queries need passages only when they make the test collection themselves.
        parts = ["train"] if self.cfg.pipeline.collection else ["train", "test"]
        fp = fingerprint("generate", upstream, settings, parts)

        def body() -> dict[str, str]:
            from synrank.data.readers import read_queries
            from synrank.generate.pipeline import generate, shards_to_generate
            from synrank.llm.engine import spec_from_config
            from synrank.llm.pool import EnginePool

            out = {}
            pool = None  # one pool for the parts, started once a part has shards left (a rerun may have none)
            try:
                for part in parts:
                    table = read_queries(queries[part])
                    if table.num_rows == 0:
                        continue
                    target = self.dir.path("generate", part)
                    part_cfg = gen.model_copy(update={"queries": queries[part], "out": target, "limit": None,
                                                      "engine_pool": None})
                    if pool is None and shards_to_generate(part_cfg, table):
                        pool = EnginePool.start(spec_from_config(gen), gen.num_engines, min_engines=gen.min_engines,
                                                cpus_per_engine=gen.engine_cpus, engine_retries=gen.engine_retries)
                    generate(part_cfg, runtime=self.cfg.runtime, pool=pool, queries=table)
                    out[part] = target
            finally:
                if pool is not None:
                    pool.shutdown()
            return out

        return self._stage("generate", fp, body), fp

    def test_collections(self, queries: dict[str, str], generated: dict[str, str], upstream: str) -> tuple[list[str], str]:
        """The held-out test collection: the real collection's test queries, or (no collection)
        the generated passages of the test queries with their levels as graded qrels."""
        fp = fingerprint("collections", upstream)

        def body() -> dict[str, str]:
            from synrank.data.readers import read_queries

            test_queries = read_queries(queries["test"])
            if test_queries.num_rows == 0:
                return {}
            if self.cfg.pipeline.collection:
                name = storage.name(self.cfg.pipeline.collection) + "-test"
                path = subset_collection(self.cfg.pipeline.collection, test_queries, self.dir.path("collections", name),
                                         self.cfg.evaluate.split)
            else:
                path = synthetic_collection(generated, test_queries, self.dir.path("collections", "synthetic-test"))
            return {storage.name(path): path}

        out = self._stage("collections", fp, body)
        return list(out.values()) + list(self.cfg.evaluate.collections), fp

    def annotate(self, queries: dict[str, str], upstream: str) -> tuple[str | None, str]:
        p = self.cfg.pipeline
        if not p.annotate:
            return None, upstream
        if not p.collection:
            raise PipelineError("pipeline.annotate needs pipeline.collection: annotation judges real passages")
        ann = self.cfg.annotate
        fp = fingerprint("annotate", upstream, ann.model_dump(exclude={"collection", "out", "split"}))

        def body() -> dict[str, str]:
            from synrank.annotate.pipeline import annotate
            from synrank.data.readers import read_queries

            train_view = subset_collection(p.collection, read_queries(queries["train"]),
                                           self.dir.path("collections", "annotate-train"), self.cfg.evaluate.split)
            out = self.dir.path("annotate")
            annotate(ann.model_copy(update={"collection": train_view, "out": out, "split": "test"}))
            return {"qrels": out}

        out = self._stage("annotate", fp, body)
        return out["qrels"], fp

    def groups(self, queries: dict[str, str], generated: dict[str, str], llm_qrels: str | None,
               upstream: str) -> tuple[str, str]:
        cfg = self._groups_config(self.cfg.groups.source, queries, generated, llm_qrels)
        fp = fingerprint("groups", upstream, cfg.model_dump(mode="json"))

        def body() -> dict[str, str]:
            from synrank.data.groups import build_groups_to

            path = self.dir.path("groups", "groups.parquet")
            stats = build_groups_to(cfg, path)
            log.info("groups: %d training groups from %s labels", stats.n_groups, cfg.source)
            return {"groups": path}

        return self._stage("groups", fp, body)["groups"], fp

    def _groups_config(self, source: str, queries: dict[str, str], generated: dict[str, str],
                       llm_qrels: str | None) -> GroupsConfig:
        g = self.cfg.groups
        p = self.cfg.pipeline
        # Only the pipeline's training queries (split before `limit`), whatever the label source.
        update: dict[str, Any] = {"out": None, "train_queries": queries["train"], "source": source}
        if "train" in generated:
            update.update(synthetic=generated["train"], queries=queries["train"])
        if p.collection:
            update["collection"] = p.collection
            # The same held-out queries as the pipeline's split, so nothing trains on a test query.
            update["query_split"] = QuerySplitConfig(train_fraction=1.0 - p.test_fraction, seed=p.split_seed) \
                if p.test_fraction > 0 else None
            update["qrels_split"] = self.cfg.evaluate.split
        if llm_qrels:
            update["llm_qrels"] = llm_qrels
        return GroupsConfig.model_validate({**g.model_dump(), **update})

    def st_peer(self, queries: dict[str, str], upstream: str) -> tuple[str, str]:
        """The `st-mnrl` baseline: sentence-transformers `fit` with MNRL on the human labels of the
        same training queries, with train's budget (`synrank.train.st_peer`)."""
        if not self.cfg.pipeline.collection:
            raise PipelineError(f"pipeline.baselines: {ST_PEER} trains on human labels and needs pipeline.collection")
        cfg = self._groups_config("human", queries, {}, None)
        t = self.cfg.train
        fp = fingerprint(ST_PEER, upstream, cfg.model_dump(mode="json"),
                         t.model_dump(mode="json", exclude={"groups", "out", "fail_at_step"}))

        def body() -> dict[str, str]:
            from synrank.data.groups import build_groups_to
            from synrank.train.st_peer import fit_st_mnrl

            groups = self.dir.path(ST_PEER, "groups.parquet")
            build_groups_to(cfg, groups)
            model = fit_st_mnrl(t, groups, self.dir.path(ST_PEER, "model"), n_levels=cfg.n_levels)
            return {"model": model}

        return self._stage(ST_PEER, fp, body)["model"], fp

    def train(self, groups_path: str, upstream: str) -> tuple[str, str]:
        t = self.cfg.train
        fp = fingerprint("train", upstream, t.model_dump(mode="json", exclude={"groups", "out", "fail_at_step"}))

        def body() -> dict[str, str]:
            from synrank.train import fit

            # A crashed earlier attempt with these settings left checkpoints under train/: fit resumes
            # from them. Checkpoints of other settings are removed first.
            self.dir.begin("train", fp)
            result = fit(t, groups_path, self.dir.path("train"))
            return {"model": result.model_dir, "curve": self.dir.path("train")}

        return self._stage("train", fp, body)["model"], fp

    def model_card(self, generated: dict[str, str], evaluation: str | None = None) -> None:
        """Render the trained model's card (`synrank.train.model_card`) again with what only the run
        knows: the generator of its synthetic passages and, once evaluated, the result table."""
        from synrank.train.export import write_model_card

        generator = None
        if "train" in generated and self.cfg.groups.source in ("synthetic", "mixed"):
            from synrank.generate.layout import MANIFEST

            try:  # the label generate recorded for the model it ran
                generator = storage.read_json(storage.join(generated["train"], MANIFEST))["model"]
            except (FileNotFoundError, KeyError, json.JSONDecodeError):
                generator = self.cfg.generate.model
        write_model_card(self.dir.path("train"), generator=generator, evaluation=evaluation)

    def evaluate(self, model_dir: str, collections: list[str], upstream: str,
                 peers: dict[str, str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
        e = self.cfg.evaluate
        systems = {"trained": model_dir, **{b: (peers or {}).get(b, b) for b in self.cfg.pipeline.baselines}}
        fp = fingerprint("evaluate", upstream, collections, systems,
                         e.model_dump(mode="json", exclude={"model", "collections", "out"}))

        def body() -> dict[str, str]:
            from synrank.evaluate import evaluate_model

            summary: dict[str, dict[str, dict[str, float]]] = {}
            per_query: dict[str, dict[str, Any]] = {}
            for system, model in systems.items():
                encoder = self.cfg.train.encoder.model_copy(update={"model": model}) if system != "bm25" else None
                results = evaluate_model(model, collections, self.dir.path("evaluate", system), split="test",
                                         top_k=e.top_k, encoder_batch_size=e.batch_size, index=e.index,
                                         encoder=encoder, num_encoders=e.num_encoders, encoder_gpus=e.encoder_gpus)
                summary[system] = {name: r["metrics"] for name, r in results.items()}
                per_query[system] = {name: r["per_query"] for name, r in results.items()}
            write_json(summary, self.dir.path("evaluate", "metrics.json"))
            verdicts = trained_vs_untrained(per_query)
            if ST_PEER in per_query:
                verdicts += trained_vs_untrained(per_query, against=ST_PEER)
            write_json(verdicts, self.dir.path("evaluate", "verdict.json"))
            return {"metrics": self.dir.path("evaluate", "metrics.json"),
                    "verdict": self.dir.path("evaluate", "verdict.json")}

        out = self._stage("evaluate", fp, body)
        self.verdict = storage.read_json(out["verdict"]) if "verdict" in out else []
        return storage.read_json(out["metrics"])

    # -- the whole run -----------------------------------------------------------------------
    def run(self) -> PipelineResult:
        from synrank.runtime import init_ray_for

        init_ray_for(self.cfg.runtime)
        write_text(_config_yaml(self.cfg), self.dir.path("config.yaml"))
        queries, fp = self.split()
        peers: dict[str, str] = {}
        fp_peer = ""
        if ST_PEER in self.cfg.pipeline.baselines:  # first: it fails fast on a config the human labels refuse
            peers[ST_PEER], fp_peer = self.st_peer(queries, fp)
        generated: dict[str, str] = {}
        if self.cfg.groups.source in ("synthetic", "mixed") or not self.cfg.pipeline.collection:
            generated, fp = self.generate(queries, fp)
        collections, fp_test = self.test_collections(queries, generated, fp)
        llm_qrels, fp = self.annotate(queries, fp)
        groups_path, fp = self.groups(queries, generated, llm_qrels, fp)
        model_dir, fp = self.train(groups_path, fp)
        self.model_card(generated)
        if self.stop_after == "train":
            return PipelineResult(self.dir.root, self.stages, {}, "")
        if not collections:
            raise PipelineError("nothing to evaluate: pipeline.test_fraction is 0 and evaluate.collections is empty")
        fp_eval = fingerprint(fp, fp_test, fp_peer) if peers else fingerprint(fp, fp_test)
        summary = self.evaluate(model_dir, collections, fp_eval, peers)
        table = summary_table(summary)
        if self.verdict:
            table += "\n\n" + "\n".join(verdict_line(v) for v in self.verdict)
        write_json({"stages": [s.__dict__ for s in self.stages], "metrics": summary, "trained_vs_untrained": self.verdict},
                   self.dir.path("summary.json"))
        write_text(table + "\n", self.dir.path("summary.md"))
        self.model_card(generated, evaluation=table)
        return PipelineResult(self.dir.root, self.stages, summary, table)


def _config_yaml(cfg: SynrankConfig) -> str:
    from synrank.config import to_yaml

    return to_yaml(cfg)


def subset_collection(collection: str, queries: pa.Table, out: str, split: str) -> str:
    """A collection folder with only `queries` (and their qrels) of `collection`, as split `test`."""
    from synrank.data.readers import load_collection

    col = load_collection(collection, split)
    keep = pa.array(queries.column("query_id").to_pylist(), pa.string())
    write_parquet(col.queries.filter(pc.is_in(col.queries.column("query_id"), keep)), storage.join(out, "queries.parquet"))
    write_parquet(col.corpus, storage.join(out, "corpus.parquet"))
    write_parquet(col.qrels.filter(pc.is_in(col.qrels.column("query_id"), keep)), storage.join(out, "qrels-test.parquet"))
    return out


def synthetic_collection(generated: dict[str, str], test_queries: pa.Table, out: str) -> str:
    """A graded test collection made of generated passages: the corpus is every generated passage
    (the train queries' passages are distractors), the qrels are each test query's own passages
    with their intended levels as grades."""
    from synrank.data.readers import read_table

    passages = pa.concat_tables([read_table(path, "synthetic") for path in generated.values()])
    test_ids = pa.array(test_queries.column("query_id").to_pylist(), pa.string())
    mine = passages.filter(pc.is_in(passages.column("query_id"), test_ids))
    if mine.num_rows == 0:
        raise PipelineError("no generated passages for the test queries: cannot build the synthetic test collection")
    corpus = pa.table({
        "doc_id": passages.column("doc_id"),
        "title": pa.array([""] * passages.num_rows, pa.string()),
        "text": passages.column("text"),
    }, schema=schemas.CORPUS)
    qrels = pa.table({
        "query_id": mine.column("query_id"),
        "doc_id": mine.column("doc_id"),
        "grade": pc.cast(mine.column("level"), pa.int32()),
        "source": pa.array(["synthetic"] * mine.num_rows, pa.string()),
    }, schema=schemas.QRELS)
    write_parquet(test_queries, storage.join(out, "queries.parquet"))
    write_parquet(corpus, storage.join(out, "corpus.parquet"))
    write_parquet(qrels, storage.join(out, "qrels-test.parquet"))
    return out


UNTRAINED = "default"  # the baseline that is the encoder before training


def trained_vs_untrained(per_query: dict[str, dict[str, dict[str, dict[str, float]]]], measure: str = "ndcg@10",
                         alpha: float = 0.05, against: str | None = None) -> list[dict[str, Any]]:
    """Per test collection: did training beat the untrained encoder (or the system `against`),
    query by query? The mean difference in `measure` over the queries both were scored on, wins and
    losses, and the two-sided paired randomization test's p-value (`synrank.evaluate.compare`)."""
    import numpy as np

    from synrank.evaluate.compare import randomization_test

    against = against or UNTRAINED
    if "trained" not in per_query or against not in per_query:
        return []
    out = []
    for collection, trained in per_query["trained"].items():
        other = per_query[against].get(collection, {})
        qids = sorted(q for q in trained if q in other and measure in trained[q] and measure in other[q])
        if not qids:
            continue
        a = np.array([trained[q][measure] for q in qids])
        b = np.array([other[q][measure] for q in qids])
        p = randomization_test(a, b)
        out.append({"collection": collection, "measure": measure, "queries": len(qids), "against": against,
                    "trained": float(a.mean()), "other": float(b.mean()), "difference": float((a - b).mean()),
                    "wins": int((a > b).sum()), "losses": int((a < b).sum()), "p_value": p, "alpha": alpha,
                    "significant": p < alpha})
    return out


def verdict_line(v: dict[str, Any]) -> str:
    """One sentence: whether the trained model beats the untrained encoder (or another baseline) on a
    collection."""
    name = "untrained" if v["against"] == UNTRAINED else v["against"]
    if not v["significant"]:
        outcome = "no significant difference"
    elif v["difference"] > 0:
        outcome = "the trained model is significantly better"
    else:
        outcome = "the trained model is significantly worse"
    return (f"{v['collection']} ({v['queries']} held-out queries): trained {v['measure']} {v['trained']:.4f} vs "
            f"{name} {v['other']:.4f} ({v['difference']:+.4f}; better on {_queries(v['wins'])}, "
            f"worse on {v['losses']}), paired randomization test p = {v['p_value']:.3g}: {outcome} "
            f"(alpha {v['alpha']:g}).")


def _queries(n: int) -> str:
    return f"{n} query" if n == 1 else f"{n} queries"


def summary_table(summary: dict[str, dict[str, dict[str, float]]], measures=SUMMARY_MEASURES) -> str:
    """Markdown: one row per (system, collection)."""
    header = ["system", "collection", *measures]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system, by_collection in summary.items():
        for collection, metrics in by_collection.items():
            values = [f"{metrics[m]:.4f}" if m in metrics else "-" for m in measures]
            lines.append("| " + " | ".join([system, collection, *values]) + " |")
    return "\n".join(lines)


def run_pipeline(cfg: SynrankConfig, stop_after: str | None = None) -> PipelineResult:
    result = Pipeline(cfg, stop_after=stop_after).run()
    ran = ", ".join(f"{s.name} ({s.status}{f', {s.seconds:.0f} s' if s.status == 'ran' else ''})" for s in result.stages)
    print(f"\nsynrank pipeline: {ran}")
    print(f"run directory: {result.run_dir}")
    if result.table:
        print("\n" + result.table)
    return result

