"""`synrank generate`: graded synthetic passages for real queries, on Ray Data with engine actors.

    result = generate(GenerateConfig(queries="queries.jsonl", out="runs/syn"))
    result.report["per_level"]      # also printed, and written to runs/syn/_report.json

Pipeline (one Ray Dataset whose rows are shards of `shard_size` queries, one Ray Data stage):

    shard tasks --map(generate_shard), tasks, `shards_per_engine` per engine-->
        requests (query x level x sample, with their chats and doc ids) -> engine pool (vLLM actors):
        one `generate_until_valid` call, where the parser (`PassageCheck`) judges each finished
        passage and a rejected row's next attempt joins the engine's running batch at once (at most
        `max_retries`) -> duplicates resolved in request order (`_resolve`; a row that loses is
        retried in a further call) -> the shard's files, written atomically
    --> one summary row per shard back to the driver (progress, report)

Each shard is sent whole to one engine of the pool (`shard % num_engines`), so vLLM batches all
its prompts at once and prefix caching serves the levels of a query from one prefix; its retries
run in that same batch, not as small calls afterwards with the engine nearly idle. Several shards run
on an engine at once and share its batch (`shards_per_engine`: enough to fill it twice, and one more), so
the last retries of one shard decode beside the other shards' prompts (`synrank.llm.engine`,
several calls on one engine). Validation
needs the engine again (retries), which is why generation, parsing and writing of a shard happen in
one Ray Data stage; it is a stage of tasks, which start in workers that are already up (an actor
pool would be started and stopped with every run, seconds during which the engines wait).

Output folder (local path or fsspec URL):

- ``part-NNNNN.parquet``: the passages of shard N, the SYNTHETIC_PASSAGES schema and then
  ``for_query_id`` (`schemas.WRITTEN_FOR`: the query the passage was written for; a swap level-0
  passage's partner), which the training groups carry so that training never uses a swap passage
  as a negative for the query it was written for (a
  Parquet folder: pyarrow, Ray Data and `synrank.data.readers.read_table(out, "synthetic")` read
  it whole; the underscore-prefixed entries below are skipped by those readers);
- ``_errors/part-NNNNN.parquet``: every rejected attempt with its reason and raw text; rows of an
  engine call that still raised after the pool restarted the engine and retried it
  (`engine_retries`) are final errors with reason ``engine_error`` (the exception in ``detail``),
  and the shard and the run go on; such a shard is not marked done, so a rerun generates it again
  (an engine failure is transient, a rejected passage is not);
- ``_stats/part-NNNNN.json``: counts, tokens and timings of the shard;
- ``_manifest.json``: the settings that determine the content (model, prompts and their
  fingerprint, scale, sampling, validation, shard size, seed);
- ``_report.json`` and ``_fidelity.parquet``: the report (see `synrank.generate.report`).

Resumption (`synrank.llm.shards`, by digest): a shard's passage file is written last, by atomic
rename, and carries the digest of its queries (and swap partners) in its Parquet metadata; a rerun
skips every shard whose file exists with the digest it would write, and redoes the others. Doc ids
are a stable hash of (query_id, level, sample, model, prompt_version), so a killed and rerun job
ends with exactly one row per (query, level, sample) - or that row's final rejection in
``_errors`` - never a duplicate. A rerun with different content settings is refused
(`overwrite=true` starts over); a different query list (e.g. a larger `limit`) keeps the shards
whose queries did not change.

Generated text is not reproducible on CPU (vLLM seeds the engine, not requests, and batch
composition changes the random stream); on GPU each request gets its own seed (the `seed`
column) and reruns of a shard reproduce its text. Ids are stable everywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

import pyarrow as pa

from synrank.config import GenerateConfig, RuntimeConfig
from synrank.data import schemas
from synrank import storage
from synrank.storage import write_json, write_parquet
from synrank.generate.layout import (ERRORS, ERRORS_DIR, FIDELITY, MANIFEST, REPORT, STATS_DIR, errors_path,
                                     part_path, stats_path)
from synrank.generate.parse import DuplicateFilter, ParseSettings, parse_passage, parse_passages
from synrank.generate.prompts import get_template, level_prompt
from synrank.generate.swap import swap_partners
from synrank.llm import shards
from synrank.llm.engine import SamplingSpec, generator_label, retry_by_calls, spec_from_config
from synrank.llm.pool import MAX_CALLS_PER_ENGINE, EngineError, PoolHandle
from synrank.llm.seeds import stable_int

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Appended to the digest of a shard that lost rows to engine errors: it never matches, so a rerun
# redoes the shard.
ENGINE_ERROR_MARK = "+engine_error"
# How long generation waits, once its engines are up, for the warm-up to finish (`start_warm_up`):
# on an autoscaling cluster its tasks wait for a generation node like the engines, and then finish
# just after them; a warm-up that is stuck must not hold the run.
WARM_UP_GRACE_S = 10.0


class GenerateError(ValueError):
    """A problem with the generation run's inputs or output folder."""


def doc_id(query_id: str, level: int, sample: int, model: str, prompt_version: str) -> str:
    """Stable id of a synthetic passage (the same in every run and process)."""
    key = json.dumps([str(query_id), int(level), int(sample), str(model), str(prompt_version)])
    return "syn-" + hashlib.sha256(key.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# Settings that travel to the workers


@dataclass(frozen=True)
class RunSettings:
    out: str
    model: str  # label
    prompt_version: str
    n_levels: int
    samples_per_level: int
    level0_strategy: str
    sampling: SamplingSpec
    retry_sampling: SamplingSpec
    max_retries: int
    seed: int
    parse: ParseSettings
    per_request_seed: bool = False

    def identity(self) -> dict[str, Any]:
        """What determines the content of the output: a rerun must match it."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "prompt_fingerprint": get_template(self.prompt_version).fingerprint(),
            "n_levels": self.n_levels,
            "samples_per_level": self.samples_per_level,
            "level0_strategy": self.level0_strategy,
            "sampling": asdict(self.sampling),
            "retry_sampling": asdict(self.retry_sampling),
            "max_retries": self.max_retries,
            "seed": self.seed,
            "parse": asdict(self.parse),
        }


def settings_from_config(cfg: GenerateConfig, out: str) -> RunSettings:
    get_template(cfg.prompt_version)  # unknown versions fail before anything starts
    sampling = SamplingSpec(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            repetition_penalty=cfg.repetition_penalty)
    # A retry must be able to come out differently: greedy decoding would repeat itself.
    retry = SamplingSpec(max_tokens=cfg.max_tokens, temperature=max(cfg.temperature, 0.7), top_p=cfg.top_p,
                         repetition_penalty=cfg.repetition_penalty)
    return RunSettings(
        out=out.rstrip("/"),
        model=generator_label(cfg.model),
        prompt_version=cfg.prompt_version,
        n_levels=cfg.n_levels,
        samples_per_level=cfg.samples_per_level,
        level0_strategy=cfg.level0_strategy,
        sampling=sampling,
        retry_sampling=retry,
        max_retries=cfg.max_retries,
        seed=cfg.seed,
        parse=ParseSettings(min_words=cfg.min_words),
    )


# --------------------------------------------------------------------------------------------
# Paths (the files of a shard: `synrank.generate.layout`)


def _list(out: str, sub: str = "") -> list[str]:
    """File names directly under out/sub (empty if missing)."""
    return storage.listdir(storage.join(out, sub) if sub else out)


def _remove(path: str) -> None:
    storage.remove(path)


# --------------------------------------------------------------------------------------------
# Planning (driver)


@dataclass
class ShardTask:
    shard: int
    engine: int
    query_ids: list[str]
    queries: list[str]
    partner_ids: list[str | None]
    partner_texts: list[str | None]

    @property
    def digest(self) -> str:
        blob = json.dumps([self.query_ids, self.queries, self.partner_ids, self.partner_texts])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ShardTask":
        return cls(**json.loads(text))


@dataclass
class Plan:
    tasks: list[ShardTask]
    n_queries: int
    skipped_queries: list[str]  # empty texts
    swap_fallbacks: list[str]  # queries without a partner: level 0 by prompt


def plan_shards(queries: pa.Table, cfg: GenerateConfig, num_engines: int = 1) -> Plan:
    ids = [str(x) for x in queries.column("query_id").to_pylist()]
    texts = ["" if t is None else str(t) for t in queries.column("text").to_pylist()]
    skipped = [q for q, t in zip(ids, texts) if not t.strip()]
    if skipped:
        log.warning("%d queries have an empty text and are skipped: %s", len(skipped), skipped[:5])
        keep = [i for i, t in enumerate(texts) if t.strip()]
        ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
    if cfg.limit is not None:
        ids, texts = ids[: cfg.limit], texts[: cfg.limit]
    if not ids:
        raise GenerateError("no queries to generate for")
    partners: list[int | None] = [None] * len(ids)
    if cfg.level0_strategy == "swap":
        partners = swap_partners(ids, texts, cfg.seed, block=cfg.shard_size)
    fallbacks = [ids[i] for i, p in enumerate(partners) if p is None] if cfg.level0_strategy == "swap" else []
    if fallbacks:
        log.warning("level0_strategy=swap: %d queries have no other query to pair with; their level 0 is prompted",
                    len(fallbacks))
    tasks = []
    for s, idx in enumerate(shards.split(range(len(ids)), cfg.shard_size)):
        tasks.append(ShardTask(
            shard=s,
            engine=s % max(1, num_engines),
            query_ids=[ids[i] for i in idx],
            queries=[texts[i] for i in idx],
            partner_ids=[None if partners[i] is None else ids[partners[i]] for i in idx],
            partner_texts=[None if partners[i] is None else texts[partners[i]] for i in idx],
        ))
    return Plan(tasks, len(ids), skipped, fallbacks)


# --------------------------------------------------------------------------------------------
# Workers


def build_requests(task: ShardTask, settings: RunSettings) -> list[dict[str, Any]]:
    """One request per (query, level, sample), levels of a query adjacent (shared prompt prefix)."""
    top = settings.n_levels - 1
    requests = []
    for qid, query, pid, ptext in zip(task.query_ids, task.queries, task.partner_ids, task.partner_texts):
        for level in range(top, -1, -1):
            swapped = level == 0 and settings.level0_strategy == "swap" and pid is not None
            for_id, for_text, ask = (pid, ptext, top) if swapped else (qid, query, level)
            chat = level_prompt(for_text, ask, settings.n_levels, settings.prompt_version)
            for sample in range(settings.samples_per_level):
                requests.append({
                    "doc_id": doc_id(qid, level, sample, settings.model, settings.prompt_version),
                    "query_id": qid,
                    "level": level,
                    "sample": sample,
                    "for_query_id": for_id,
                    "chat": chat,
                })
    return requests


def generate_shard(row: dict[str, Any], settings: RunSettings, pool: Any) -> dict[str, Any]:
    """The engine stage of the Ray Data pipeline: one shard in (its task), its files written, a
    summary out. `pool`: a picklable handle with `generate_on` (`synrank.llm.pool.PoolHandle`).

    A plain task, not an actor pool: Ray Data starts and stops an actor pool for every run (seconds
    of a run's wall time spent with the engines idle), while tasks run in workers that are already
    up; the requests are built here rather than in a stage of their own for the same reason."""
    task = ShardTask.from_json(row["task"])
    return run_shard(task, build_requests(task, settings), settings, pool.generate_on,
                     getattr(pool, "generate_until_valid_on", None))


def _row_seed(settings: RunSettings, request: dict[str, Any], attempt: int) -> int:
    return stable_int(settings.seed, request["doc_id"], attempt)


def _engine_error_row(r: dict[str, Any], attempt: int, detail: str, settings: RunSettings) -> dict[str, Any]:
    return {
        "query_id": r["query_id"], "doc_id": r["doc_id"], "level": r["level"], "sample": r["sample"],
        "attempt": attempt, "final": True, "reason": "engine_error", "detail": detail[:2000], "text": "",
        "n_tokens": 0, "finish_reason": "error", "for_query_id": r["for_query_id"],
        "model": settings.model, "prompt_version": settings.prompt_version,
    }


def _resolve(requests: list[dict[str, Any]], tries: dict[str, list[tuple[int, Any]]], order: dict[str, int],
             settings: RunSettings) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Accepted passages and rejected attempts of every row from all its attempts so far. Each
    attempt is parsed; among those that pass, the first of equal passages of a query (by attempt,
    then request order, whatever order the engine finished them in) wins, the others are duplicates."""
    by_id = {r["doc_id"]: r for r in requests}
    flat = sorted(((a, order[d], d, c) for d, attempts in tries.items() for a, c in attempts), key=lambda t: t[:2])
    validated = parse_passages([c.text for *_, c in flat], [c.finish_reason for *_, c in flat], settings.parse)
    dedup = DuplicateFilter()
    accepted: dict[str, dict[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    for (attempt, _, d, c), parsed in zip(flat, validated):
        r = by_id[d]
        reason, detail = parsed.reason, parsed.detail
        if parsed.ok and dedup.seen(r["query_id"], parsed.text):
            reason, detail = "duplicate", "the same text as another passage of this query"
        if reason is None:
            accepted[d] = {
                "query_id": r["query_id"],
                "doc_id": d,
                "level": r["level"],
                "text": parsed.text,
                "model": settings.model,
                "prompt_version": settings.prompt_version,
                "seed": c.seed if c.seed is not None else settings.seed,
                "n_tokens": c.n_tokens,
                "finish_reason": c.finish_reason,
                "for_query_id": r["for_query_id"],
                "_trimmed": parsed.trimmed,
            }
            continue
        errors.append({
            "query_id": r["query_id"], "doc_id": d, "level": r["level"], "sample": r["sample"],
            "attempt": attempt, "final": attempt == settings.max_retries, "reason": reason, "detail": detail,
            "text": c.text, "n_tokens": c.n_tokens, "finish_reason": c.finish_reason,
            "for_query_id": r["for_query_id"], "model": settings.model, "prompt_version": settings.prompt_version,
        })
    return accepted, errors


@dataclass(frozen=True)
class PassageCheck:
    """The validator the engine runs on each finished attempt (`Engine.generate_until_valid`):
    what `parse_passage` accepts. Duplicates are not its business: which of two equal passages
    wins depends on the order of the rows, not of their finishing (`_resolve`)."""

    parse: ParseSettings

    def __call__(self, index: int, attempt: int, completion: Any) -> bool:
        return parse_passage(completion.text, completion.finish_reason, self.parse).ok


def _until_valid_by_calls(generate_on, engine: int, stats: dict[str, Any]):
    """`generate_until_valid_on` for a handle with `generate_on` only: one call per attempt (each
    counted, those after the shard's first as retries)."""

    def generate(prompts, sampling, seeds):
        t0 = time.perf_counter()
        try:
            return generate_on(engine, prompts, sampling, seeds)
        finally:
            stats["engine_call_s"] += time.perf_counter() - t0
            if stats["engine_calls"]:
                stats["retry_call_s"] += time.perf_counter() - t0
            stats["engine_calls"] += 1

    def until_valid(index, prompts, seeds, validate, **kwargs):
        return retry_by_calls(generate, prompts, seeds, validate, **kwargs)

    return until_valid


def run_shard(task: ShardTask, requests: list[dict[str, Any]], settings: RunSettings, generate_on,
              generate_until_valid_on=None) -> dict[str, Any]:
    """Generate, validate (with retries) and write one shard; returns its stats.

    With `generate_until_valid_on` (`PoolHandle`) the shard is one engine call: rejected rows are
    retried inside the engine's running batch. A row that passed the parser there but duplicates a
    passage of its query that comes first (by attempt, then request order: the order the retries of
    separate calls had) is retried in a further call. Without it, one `generate_on` call per attempt."""
    started = time.perf_counter()
    stats = {"attempt_tokens": 0, "prompt_tokens": 0, "engine_call_s": 0.0, "retry_call_s": 0.0, "engine_calls": 0,
             "trimmed": 0}
    by_calls = generate_until_valid_on is None
    until_valid = _until_valid_by_calls(generate_on, task.engine, stats) if by_calls else generate_until_valid_on
    check = PassageCheck(settings.parse)
    order = {r["doc_id"]: k for k, r in enumerate(requests)}
    tries: dict[str, list[tuple[int, Any]]] = {r["doc_id"]: [] for r in requests}  # doc id -> (attempt, completion)
    lost: list[dict[str, Any]] = []
    pending = [(r, 0) for r in requests]  # rows to generate, from this attempt on
    while pending:
        seeds = [[_row_seed(settings, r, a) for a in range(settings.max_retries + 1)] for r, _ in pending]
        t0 = time.perf_counter()
        try:
            out = until_valid(task.engine, [r["chat"] for r, _ in pending], seeds, check,
                              sampling=settings.sampling, retry_sampling=settings.retry_sampling,
                              max_retries=settings.max_retries, start=[a for _, a in pending])
        except EngineError as exc:  # restarted and retried by the pool already: the rows are lost
            log.warning("shard %d: %d row(s) lost to an engine error: %s", task.shard, len(pending), exc)
            lost = [_engine_error_row(r, a, str(exc), settings) for r, a in pending]
            break
        finally:
            if not by_calls:
                stats["engine_call_s"] += time.perf_counter() - t0
                if stats["engine_calls"]:  # a further call for duplicates: the shard's tail
                    stats["retry_call_s"] += time.perf_counter() - t0
                stats["engine_calls"] += 1
        for (r, first), attempts in zip(pending, out):
            tries[r["doc_id"]].extend((first + k, c) for k, c in enumerate(attempts))
            stats["attempt_tokens"] += sum(c.n_tokens for c in attempts)
            stats["prompt_tokens"] += sum(c.prompt_tokens for c in attempts)
        accepted, errors = _resolve(requests, tries, order, settings)
        pending = [(r, a + 1) for r in requests if r["doc_id"] not in accepted
                   for a, _ in tries[r["doc_id"]][-1:] if a < settings.max_retries]
    accepted, errors = _resolve(requests, tries, order, settings)
    errors.extend(lost)
    errors.sort(key=lambda e: (e["attempt"], order[e["doc_id"]]))
    stats["trimmed"] = sum(int(a.pop("_trimmed")) for a in accepted.values())
    # Rows in request order: deterministic files whatever the order of acceptance.
    rows = [accepted[r["doc_id"]] for r in requests if r["doc_id"] in accepted]
    passages = pa.Table.from_pylist(rows, schema=schemas.SYNTHETIC_PASSAGES.append(schemas.WRITTEN_FOR))
    reasons: dict[str, int] = {}
    for e in errors:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    digest = task.digest + (ENGINE_ERROR_MARK if reasons.get("engine_error") else "")
    passages = shards.with_digest(passages, digest)
    summary = {
        "shard": task.shard,
        "digest": task.digest,
        "n_queries": len(task.query_ids),
        "expected": len(requests),
        "rows": passages.num_rows,
        "final_failures": sum(1 for e in errors if e["final"]),
        "rejections": reasons,
        "generated_tokens": int(sum(r["n_tokens"] for r in rows)),
        "attempt_tokens": stats["attempt_tokens"],
        "prompt_tokens": stats["prompt_tokens"],
        "engine_calls": stats["engine_calls"],
        "engine_call_s": round(stats["engine_call_s"], 3),
        "retry_call_s": round(stats["retry_call_s"], 3),
        "trimmed": stats["trimmed"],
        "wall_s": 0.0,
        "finished_at": 0.0,
    }
    # errors and stats first, the passage file last: its presence marks the shard as done.
    write_parquet(pa.Table.from_pylist(errors, schema=ERRORS), errors_path(settings.out, task.shard))
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    summary["finished_at"] = time.time()
    write_json(summary, stats_path(settings.out, task.shard))
    write_parquet(passages, part_path(settings.out, task.shard))
    return summary


# --------------------------------------------------------------------------------------------
# Resumption


def shard_digest_on_disk(out: str, shard: int) -> str | None:
    """The digest a finished shard file carries, or None if there is none (or it is unreadable)."""
    return shards.read_digest(part_path(out, shard))


def _check_manifest(out: str, settings: RunSettings, overwrite: bool) -> None:
    path = storage.join(out, MANIFEST)
    identity = json.loads(json.dumps(settings.identity()))  # as it reads back (tuples become lists)
    if storage.exists(path):
        with storage.open(path, "r", encoding="utf-8") as handle:
            try:
                old = json.load(handle)
            except json.JSONDecodeError:
                old = {}
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff and not overwrite:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {identity.get(k)!r}" for k in diff[:6])
            raise GenerateError(
                f"{out} holds passages generated with other settings ({details}); "
                "use another --out, or generate.overwrite=true to start over"
            )
        if diff:
            log.warning("overwrite: removing the passages of %s generated with other settings", out)
            clear_output(out)
    elif _list(out) and any(n.startswith("part-") for n in _list(out)) and not overwrite:
        raise GenerateError(f"{out} has part files but no {MANIFEST}: not a synrank generate folder; use another --out")
    write_json(identity, path)


def clear_output(out: str) -> None:
    """Remove what synrank generate writes (and nothing else) from `out`."""
    for name in _list(out):
        if (name.startswith("part-") and name.endswith(".parquet")) or name in (
                ERRORS_DIR, STATS_DIR, MANIFEST, REPORT, FIDELITY):
            _remove(storage.join(out, name))


def _remove_stale(out: str, n_shards: int) -> None:
    """Shard files beyond the plan (a smaller query list than last time) would add foreign rows."""
    for sub in ("", ERRORS_DIR, STATS_DIR):
        folder = storage.join(out, sub) if sub else out
        for name in shards.stale_shard_files(folder, n_shards):
            log.warning("removing %s: its queries are not in this run", storage.join(folder, name))
            _remove(storage.join(folder, name))


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class GenerateResult:
    out: str
    report: dict[str, Any]
    shards_done_now: int
    shards_skipped: int
    summaries: list[dict[str, Any]] = field(default_factory=list)


def _read_queries(path: str) -> pa.Table:
    from synrank.data.readers import read_queries

    return read_queries(path)


def shards_to_generate(cfg: GenerateConfig, queries: pa.Table) -> int:
    """How many of the run's shards have no finished file in ``cfg.out`` yet (read only). A caller
    that starts engines for several runs starts them only when this is above 0 for one of them."""
    return len(_pending_shards(cfg.out.rstrip("/"), plan_shards(queries, cfg)))


def _pending_shards(out: str, plan: Plan) -> set[int]:
    """The plan's shards without a file in `out` that carries their digest."""
    return set(shards.pending_shards(out, len(plan.tasks), [t.digest for t in plan.tasks]))


def generate(
    cfg: GenerateConfig,
    *,
    runtime: RuntimeConfig | None = None,
    pool: Any | None = None,
    queries: pa.Table | None = None,
    report: bool = True,
) -> GenerateResult:
    """Run generation as configured. `pool`: an `EnginePool` to use (else `cfg.engine_pool`, else
    engines started for this run and stopped at its end). `queries`: a QUERIES table instead of
    reading `cfg.queries`."""
    import ray
    import ray.data  # imported before the engines start: a second or more, not to be paid in the run

    from synrank.llm.pool import EnginePool
    from synrank.runtime import init_ray_for, stage_options, watch_progress, with_progress_bars

    if not cfg.out:
        raise GenerateError("generate.out is required (--out DIR)")
    if queries is None:
        if not cfg.queries:
            raise GenerateError("generate.queries is required (--queries PATH)")
        queries = _read_queries(cfg.queries)
    out = cfg.out.rstrip("/")
    settings = settings_from_config(cfg, out)
    spec = spec_from_config(cfg)
    plan = plan_shards(queries, cfg)  # input problems surface before Ray or engines start
    rt = runtime or RuntimeConfig()
    init_ray_for(rt)

    own_pool = None
    if pool is None and cfg.engine_pool:
        pool = EnginePool.attach(cfg.engine_pool, spec)
    if pool is not None and pool.spec.label != spec.label:
        raise GenerateError(f"the engine pool runs {pool.spec.label}, the config asks for {spec.label}")

    _check_manifest(out, settings, cfg.overwrite)
    _remove_stale(out, len(plan.tasks))
    pending = _pending_shards(out, plan)
    todo = [t for t in plan.tasks if t.shard in pending]
    skipped = len(plan.tasks) - len(todo)
    log.info("%d queries in %d shards: %d done before, %d to generate", plan.n_queries, len(plan.tasks), skipped, len(todo))

    summaries: list[dict[str, Any]] = []
    run = {"shards": 0, "rows": 0, "wall_s": 0.0, "engine_startup_s": 0.0, "attempt_tokens": 0, "generated_tokens": 0}
    if todo:
        feeders = shards_per_engine(cfg)  # shard tasks per engine at once
        startup = time.perf_counter()
        if pool is None:
            warm_up = start_warm_up(min(len(todo), feeders * (cfg.num_engines or 1)))
            own_pool = pool = EnginePool.start(spec, cfg.num_engines, min_engines=cfg.min_engines,
                                               cpus_per_engine=cfg.engine_cpus, engine_retries=cfg.engine_retries)
            warm_up.join(timeout=WARM_UP_GRACE_S)
            run["engine_startup_s"] = round(time.perf_counter() - startup, 2)
        for task in todo:
            task.engine = task.shard % pool.num_engines
        try:
            settings = _with_seed_mode(settings, pool)
            began = time.perf_counter()
            ds = ray.data.from_items([{"task": t.to_json()} for t in todo], override_num_blocks=len(todo))
            handle = pool.handle()
            if isinstance(handle, PoolHandle):
                handle = replace(handle, retries=cfg.engine_retries)
            # The feeders run beside the engines (on an autoscaling cluster, on the generation nodes):
            # several shards per engine (`shards_per_engine`), which the engine serves from one batch:
            # one shard's last retries decode beside the others' prompts, and it is written while they run.
            # They ask for no CPU: they mostly wait on the engines, which hold the node's CPUs. A feeder
            # that needed CPU could starve for good once a lost engine is restarted on a surviving node
            # and takes the CPU that the feeders had used between tasks.
            ds = ds.map(generate_shard, fn_kwargs={"settings": settings, "pool": handle},
                        compute=ray.data.TaskPoolStrategy(
                            size=max(1, min(len(todo), feeders * pool.num_engines))),
                        num_cpus=0, **stage_options("generate"))
            with watch_progress(f"generation: {len(todo)} shard(s) of {out}", rt.stall_warning_s) as watch:
                for summary in with_progress_bars(ds, False).iter_rows():
                    watch.tick()
                    summary = dict(summary)
                    summaries.append(summary)
                    log.info("shard %d: %d/%d passages, %d tokens in %.1f s (%d of %d shards)",
                             summary["shard"], summary["rows"], summary["expected"], summary["attempt_tokens"],
                             summary["wall_s"], len(summaries), len(todo))
            run["wall_s"] = round(time.perf_counter() - began, 3)
        finally:
            if own_pool is not None:
                own_pool.shutdown()
        run["shards"] = len(summaries)
        run["rows"] = int(sum(s["rows"] for s in summaries))
        run["attempt_tokens"] = int(sum(s["attempt_tokens"] for s in summaries))
        run["generated_tokens"] = int(sum(s["generated_tokens"] for s in summaries))
    rep: dict[str, Any] = {}
    if report:
        from synrank.generate.report import build_report, print_report, write_report

        rep = build_report(out, plan, settings, run, fidelity_queries=cfg.fidelity_queries, config=cfg)
        write_report(out, rep)
        print_report(rep)
    return GenerateResult(out, rep, len(summaries), skipped, summaries)


def _warm_stage_worker(row: dict[str, Any]) -> dict[str, Any]:
    import ray.data._internal.execution.operators.map_transformer  # noqa: F401 - what a map task runs

    import synrank.generate.pipeline  # noqa: F401

    return row


def start_warm_up(n: int) -> threading.Thread:
    """Ready, while the engines start, what the generation stage needs besides them: `n` Ray
    workers that have imported the stage's code, and the helper actors Ray Data starts for the
    first dataset a driver runs (its stats actor and autoscaling coordinator). Otherwise the run's
    first seconds go to starting those processes, on the CPUs the engines generate on (about 3 CPU
    seconds here). A tiny dataset of the stage's own kind does both; it runs in a thread, and a
    warm-up that fails or is not done when the engines are costs nothing but the time it saves."""
    import ray.data

    from synrank.runtime import stage_options, with_progress_bars

    def run() -> None:
        try:
            ds = ray.data.from_items([{"i": i} for i in range(max(1, n))], override_num_blocks=max(1, n))
            ds = ds.map(_warm_stage_worker, compute=ray.data.TaskPoolStrategy(size=max(1, n)), num_cpus=0,
                        **stage_options("generate"))
            with_progress_bars(ds, False).materialize()
        except Exception as exc:  # pragma: no cover - an optimisation only
            log.debug("no generation warm-up: %s", exc)

    thread = threading.Thread(target=run, name="synrank-generation-warm-up", daemon=True)
    thread.start()
    return thread


def _with_seed_mode(settings: RunSettings, pool: Any) -> RunSettings:
    from dataclasses import replace

    return replace(settings, per_request_seed=pool.per_request_seed)


def expected_doc_ids(queries: Iterable[str], n_levels: int, samples_per_level: int, model: str,
                     prompt_version: str) -> set[str]:
    """Every doc id a complete run produces (a row, or that row's final rejection)."""
    return {doc_id(q, level, s, model, prompt_version)
            for q in queries for level in range(n_levels) for s in range(samples_per_level)}


def shards_per_engine(cfg: GenerateConfig) -> int:
    """Shards an engine serves at once: enough that their prompts fill its batch (`batch_size`
    sequences) twice, one batch decoding and one queued so that every sequence that finishes is
    replaced at once, and one more, whose prompts keep the batch full while the others' last retries
    decode. With prompts for one batch and one more shard in flight (the earlier rule) the pipeline
    ran at 0.92x the bare engine's tokens/s, with two batches and one more at 0.95x
    (bench/generate.py --long: shards of 64 prompts, a batch of 64)."""
    per_shard = cfg.shard_size * cfg.n_levels * cfg.samples_per_level
    return min(MAX_CALLS_PER_ENGINE, math.ceil(2 * cfg.batch_size / per_shard) + 1)


def n_shards(n_queries: int, shard_size: int) -> int:
    return math.ceil(n_queries / shard_size)
