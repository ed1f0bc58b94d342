"""Judging (query, passage) pairs with an LLM: resumable, sharded, atomic; failures are recorded.

>>> result = annotate(AnnotateConfig(collection="../shared/data/cranfield", out="runs/ann", limit=5))
>>> result.qrels_path          # runs/ann/qrels.parquet: source=llm labels (read_qrels("runs/ann") too)
>>> result.failures_path       # runs/ann/_failures.parquet: pairs the judge never graded

The lower-level `judge_pairs(pairs, out, judge, ...)` takes any table of pairs (query_id, doc_id,
query, passage, plus columns passed through, e.g. a synthetic passage's intended `level`); the
annotation run and the consistency check of synthetic data both use it.

Requests: one (query, passage) pair per request, with the versioned prompt of
`synrank.annotate.prompts`. The first attempt decodes greedily; when the judge supports choice
decoding (vLLM structured outputs) the answer is constrained to one of the grades. An answer the
strict parser (`synrank.annotate.parse`) rejects is asked again, up to `max_retries` more times,
with sampling (temperature > 0, so that the answer can change); a pair still without a grade is
recorded as a failure with every raw answer it got, never given a guessed grade.

Where it runs: the pairs never pass through the calling process. A Ray task (`cpu` stage
resources, memory sized to its input) reads the collection, searches the candidates, attaches the
texts, writes or checks the pair list and finds the shards left to judge; the pending pairs come
out of it as blocks of whole shards in Ray's object store, judged by a Ray Data map whose workers
call the engines (a plain function judge: in this process, one block at a time); a last task
checks the shards and writes the outputs.

Output folder layout (local path or fsspec URL). Everything but the labels is underscore-prefixed,
which Parquet readers skip: the folder itself reads as the LLM qrels (``read_qrels(out)``,
``groups.llm_qrels=out``), like a ``synrank generate`` folder reads as its passages.

- ``qrels.parquet``: QRELS columns (query_id, doc_id, grade, source=llm), then model,
  prompt_version, raw_answer, attempts and the pass-through columns (candidates: rank, score,
  retriever, judged);
- ``_failures.parquet``: the pairs the judge never graded, with every raw answer and the reason;
- ``_summary.json``: counts, grade histogram, the run's identity; written last, so its presence
  means the run completed;
- ``_manifest.json``: what this folder is (model, prompt version and fingerprint, scale, shard
  size, candidate settings, hash of the pair list). A rerun with a different identity refuses to
  mix labels (``overwrite`` starts over);
- ``_pairs.parquet``: the pairs to judge (keys and pass-through columns, no texts), written once;
  a rerun judges exactly these, even if candidate selection would now give others;
- ``_shards/part-NNNNN.parquet``: judgments of the queries of shard N (`shard_size` queries each),
  every pair of the shard, graded or failed. A shard file appears by atomic rename once complete;
  a rerun skips complete shards and redoes the rest (`synrank.llm.shards`, by presence: the
  manifest pins the pair list). A crash loses at most the shards in flight, and a pair is in
  exactly one shard, so nothing is duplicated. ``qrels.parquet``,
  ``_failures.parquet`` and ``_summary.json`` are rebuilt from the shards at the end of every run,
  each atomically.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from synrank.annotate.parse import parse_answer
from synrank.annotate.prompts import JudgePrompt, build_prompt, check_version, fingerprint
from synrank.data import schemas
from synrank import storage
from synrank.llm.shards import pending_shards, shard_files, shard_name, shard_path, split
from synrank.storage import exists, write_json, write_parquet

log = logging.getLogger(__name__)

# Columns of a judgment (one per pair) in the shard files, before pass-through columns.
JUDGMENT_FIELDS = [
    pa.field("query_id", pa.string()),
    pa.field("doc_id", pa.string()),
    pa.field("grade", pa.int32()),  # null when the pair failed
    pa.field("source", pa.string()),
    pa.field("model", pa.string()),
    pa.field("prompt_version", pa.string()),
    pa.field("raw_answer", pa.string()),  # the answer the grade came from, or the last one
    pa.field("status", pa.string()),  # ok | failed
    pa.field("attempts", pa.int32()),
    pa.field("reason", pa.string()),  # the parser's verdict on raw_answer
    pa.field("answers", pa.list_(pa.string())),  # every raw answer, in order
]
JUDGMENT_NAMES = [f.name for f in JUDGMENT_FIELDS]
TEXT_COLUMNS = ("query", "passage")
# The output folder: the labels, and underscore-prefixed bookkeeping that Parquet readers skip, so
# that the folder itself reads as the LLM qrels (`read_qrels(out)`, `groups.llm_qrels=out`).
QRELS_FILE = "qrels.parquet"
FAILURES_FILE = "_failures.parquet"
SUMMARY_FILE = "_summary.json"
MANIFEST_FILE = "_manifest.json"
PAIRS_FILE = "_pairs.parquet"
SHARDS_DIR = "_shards"
RETRY_TEMPERATURE = 0.7
MANIFEST_VERSION = 1


class AnnotateError(ValueError):
    """A problem with the annotation run's inputs or output folder."""


# --------------------------------------------------------------------------------------------
# judges


class Judge(Protocol):
    """Anything that answers judging prompts: `model` names it in the output, `choice` says whether
    it constrains answers to the prompt's choices."""

    model: str

    def __call__(self, prompts: Sequence[JudgePrompt], attempt: int) -> list[str]:
        """One raw answer per prompt, in order. `attempt` 0 is the first try (greedy), >0 retries."""
        ...


@dataclass
class FunctionJudge:
    """A judge from a plain function `fn(prompts, attempt) -> answers`: rule-based judges, API
    clients, tests."""

    fn: Callable[[Sequence[JudgePrompt], int], list[str]]
    model: str = "function"

    def __call__(self, prompts: Sequence[JudgePrompt], attempt: int) -> list[str]:
        return list(self.fn(prompts, attempt))


# --------------------------------------------------------------------------------------------
# judging one batch


@dataclass
class _Pending:
    index: int
    prompt: JudgePrompt
    answers: list[str] = field(default_factory=list)
    grade: int | None = None
    reason: str = "not judged"


def _is_failure(answer: object) -> bool:
    from synrank.annotate.engine import EngineFailure

    return isinstance(answer, EngineFailure)


def judge_prompts(prompts: Sequence[JudgePrompt], judge: Judge, n_levels: int, max_retries: int
                  ) -> list[_Pending]:
    """Judge every prompt: first attempt for all, then retries for the unparseable ones only."""
    items = [_Pending(i, p) for i, p in enumerate(prompts)]
    todo = items
    for attempt in range(max_retries + 1):
        if not todo:
            break
        answers = judge([it.prompt for it in todo], attempt)
        if len(answers) != len(todo):
            raise RuntimeError(f"judge {judge.model!r} returned {len(answers)} answers for {len(todo)} prompts")
        for it, answer in zip(todo, answers):
            if _is_failure(answer):  # the engine gave no answer: its message is kept, never parsed
                it.answers.append(str(answer))
                it.grade, it.reason = None, f"engine {answer}"[:300]
                continue
            text = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
            it.answers.append(text)
            parsed = parse_answer(text, n_levels)
            it.grade, it.reason = parsed.grade, parsed.reason
        todo = [it for it in todo if it.grade is None]
        if todo and attempt < max_retries:
            log.info("%d answer(s) unparseable, retry %d of %d", len(todo), attempt + 1, max_retries)
    return items


# --------------------------------------------------------------------------------------------
# output folder


def _read_json(path: str) -> dict[str, Any]:
    return storage.read_json(path)


def _list_shards(out: str) -> set[str]:
    return shard_files(storage.join(out, SHARDS_DIR))


def _remove_tree(path: str) -> None:
    storage.remove(path)


def _pairs_hash(keys: Sequence[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for q, d in keys:
        h.update(q.encode())
        h.update(b"\x1f")
        h.update(d.encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def _shards(query_ids: Sequence[str], shard_size: int) -> list[list[str]]:
    """The queries of each shard: `shard_size` distinct queries, in their first-seen order."""
    return split(list(dict.fromkeys(query_ids)), shard_size)


@dataclass
class JudgeResult:
    out: str
    qrels_path: str
    failures_path: str
    summary_path: str
    summary: dict[str, Any]

    @property
    def qrels(self) -> pa.Table:
        return storage.read_parquet(self.qrels_path) if exists(self.qrels_path) else pa.table({})


def _check_pairs(pairs: pa.Table) -> None:
    needed = ["query_id", "doc_id", *TEXT_COLUMNS]
    missing = [c for c in needed if c not in pairs.column_names]
    if missing:
        raise AnnotateError(f"pairs table lacks column(s) {missing}; expected {needed} (+ pass-through columns)")
    clash = [c for c in pairs.column_names
             if (c in JUDGMENT_NAMES and c not in ("query_id", "doc_id")) or c == SHARD_COLUMN]
    if clash:
        raise AnnotateError(f"pairs table column(s) {clash} clash with the judgment columns")
    keys = list(zip(pairs.column("query_id").to_pylist(), pairs.column("doc_id").to_pylist()))
    if any(q is None or d is None for q, d in keys):
        raise AnnotateError("pairs table has a null query_id or doc_id")
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise AnnotateError(f"pairs table has the pair {dup} more than once")


def _prepare(out: str, pairs: pa.Table, identity: dict[str, Any], overwrite: bool) -> pa.Table:
    """Write or check the manifest and the pair list; return the pairs (without texts) to judge."""
    manifest_path = storage.join(out, MANIFEST_FILE)
    pairs_path = storage.join(out, PAIRS_FILE)
    keys_only = pairs.drop_columns(list(TEXT_COLUMNS))
    if overwrite:
        for name in (SHARDS_DIR, QRELS_FILE, FAILURES_FILE, SUMMARY_FILE, PAIRS_FILE, MANIFEST_FILE):
            _remove_tree(storage.join(out, name))
    if exists(manifest_path):
        old = _read_json(manifest_path)
        changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise AnnotateError(f"{out} holds judgments of a different run ({detail}); "
                                "use another output folder, or overwrite to start over")
        if not exists(pairs_path):
            raise AnnotateError(f"{out}: {MANIFEST_FILE} without {PAIRS_FILE}; overwrite to start over")
        return _read_parquet(pairs_path)
    if _list_shards(out):
        raise AnnotateError(f"{out}/{SHARDS_DIR} has files but no {MANIFEST_FILE}; overwrite to start over")
    write_parquet(keys_only, pairs_path)
    write_json({**identity, "manifest_version": MANIFEST_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
               manifest_path)
    return keys_only


def _read_parquet(path: str) -> pa.Table:
    return storage.read_parquet(path)


def _judgment_schema(passthrough: pa.Schema) -> pa.Schema:
    return pa.schema(JUDGMENT_FIELDS + [f for f in passthrough if f.name not in JUDGMENT_NAMES])


@dataclass(frozen=True)
class ShardSettings:
    """What judging one shard needs besides its pairs and the judge (picklable, for Ray workers)."""

    out: str
    n_levels: int
    prompt_version: str
    max_retries: int
    schema: pa.Schema


def judge_shard(shard: int, part: pa.Table, judge: Judge, settings: ShardSettings) -> dict[str, Any]:
    """Judge the pairs of shard `shard` (`part`: its pairs, texts included) with retries, and write
    them as that shard, atomically."""
    started = time.perf_counter()
    prompts = [build_prompt(q, p, settings.n_levels, settings.prompt_version)
               for q, p in zip(part.column("query").to_pylist(), part.column("passage").to_pylist())]
    results = judge_prompts(prompts, judge, settings.n_levels, settings.max_retries)
    keys = list(zip(part.column("query_id").to_pylist(), part.column("doc_id").to_pylist()))
    passthrough = part.drop_columns(["query_id", "doc_id", *TEXT_COLUMNS])
    table = _judgment_table(results, keys, passthrough, settings.schema, judge.model, settings.prompt_version)
    write_parquet(table, shard_path(storage.join(settings.out, SHARDS_DIR), shard))
    graded = sum(1 for it in results if it.grade is not None)
    return {"shard": int(shard), "pairs": part.num_rows, "graded": graded, "failed": part.num_rows - graded,
            "requests": sum(len(it.answers) for it in results), "wall_s": round(time.perf_counter() - started, 3)}


def _shards_of(block: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """The (shard, pairs) of a block of pending pairs: runs of equal `_shard`, whole shards."""
    shard_ids = block.column(SHARD_COLUMN).to_pylist()
    pairs = block.drop_columns([SHARD_COLUMN])
    start = 0
    for end in range(1, len(shard_ids) + 1):
        if end == len(shard_ids) or shard_ids[end] != shard_ids[start]:
            yield shard_ids[start], pairs.slice(start, end - start)
            start = end


def _judge_block(block: pa.Table, judge: Any, settings: ShardSettings) -> list[dict[str, Any]]:
    """Judge the shards of a block, each on engine `shard % num_engines` for an engine judge."""
    summaries = []
    for shard, part in _shards_of(block):
        on_engine = judge.on_engine(shard) if hasattr(judge, "on_engine") else judge
        summaries.append(judge_shard(shard, part, on_engine, settings))
    return summaries


class _ShardWorker:
    """The Ray Data stage: a block of whole shards in, judged and written; a summary per shard out."""

    def __init__(self, judge: Any, settings: ShardSettings) -> None:
        self.judge = judge
        self.settings = settings

    def __call__(self, block: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(_judge_block(block, self.judge, self.settings))


def _judge_ray_data(blocks: list, judge: Any, settings: ShardSettings, on_summary: Callable[[dict[str, Any]], None]
                    ) -> None:
    import ray

    from synrank.runtime import stage_options, watch_progress

    ds = ray.data.from_arrow_refs(blocks)
    # Two workers per engine: one shard is being judged while the next one's prompts are sent.
    workers = ray.data.ActorPoolStrategy(size=max(1, min(len(blocks), 2 * int(getattr(judge, "num_engines", 1)))))
    # batch_size=None: one batch per block, so that a shard is never cut between two batches.
    ds = ds.map_batches(_ShardWorker, batch_size=None, batch_format="pyarrow", compute=workers, num_cpus=0.1,
                        **stage_options("generate"),  # beside the engines they feed
                        fn_constructor_kwargs={"judge": judge, "settings": settings})
    with watch_progress(f"annotation: {len(blocks)} block(s) of shards of {settings.out}") as watch:
        for summary in ds.iter_rows():
            watch.tick()
            on_summary(dict(summary))


def _judge_here(blocks: list, judge: Judge, settings: ShardSettings, on_summary: Callable[[dict[str, Any]], None]
                ) -> None:
    """Judge in this process (a plain function judge), one block of pairs fetched at a time."""
    import ray

    for ref in blocks:
        for summary in _judge_block(ray.get(ref), judge, settings):
            on_summary(summary)


# --------------------------------------------------------------------------------------------
# planning: the pairs stay in Ray


SHARD_COLUMN = "_shard"  # the shard of each pending pair, in the blocks handed to the judging
# Pending pairs go to the judging in blocks of whole shards of at least this size: over Ray's
# 100 KiB limit for objects kept in their owner's memory, so blocks stay out of the driver.
BLOCK_BYTES = 2**20


@dataclass(frozen=True)
class _Plan:
    """What the driver learns of a run's pairs before judging them."""

    identity: dict[str, Any]  # the manifest's
    schema: pa.Schema  # of the shard files
    n_shards: int
    n_pending: int  # shards left to judge


def _plan_judging(pairs: pa.Table, out: str, base: dict[str, Any], identity: dict[str, Any], overwrite: bool,
                  shard_size: int) -> Iterator[_Plan | pa.Table]:
    """Check `pairs`, write or check the manifest and the pair list; yield the _Plan, then the
    pairs of the shards left to judge, with their shard in SHARD_COLUMN, in blocks of whole shards."""
    _check_pairs(pairs)
    keys = list(zip(pairs.column("query_id").to_pylist(), pairs.column("doc_id").to_pylist()))
    ident = {**base, "n_pairs": len(keys), "pairs_hash": _pairs_hash(keys), **identity}
    stored = _prepare(out, pairs, ident, overwrite)
    stored_keys = list(zip(stored.column("query_id").to_pylist(), stored.column("doc_id").to_pylist()))
    if stored_keys != keys:  # the hash matched, so this only guards against a hand-edited folder
        raise AnnotateError(f"{out}/{PAIRS_FILE} does not hold the pairs of this run; overwrite to start over")
    shards = _shards([q for q, _ in keys], shard_size)
    pending = pending_shards(storage.join(out, SHARDS_DIR), len(shards))
    unknown = _list_shards(out) - {shard_name(i) for i in range(len(shards))}
    if unknown:
        raise AnnotateError(f"{out}/{SHARDS_DIR} has files this run does not make: {sorted(unknown)[:3]}")
    passthrough = pairs.drop_columns(["query_id", "doc_id", *TEXT_COLUMNS])
    yield _Plan(ident, _judgment_schema(passthrough.schema), len(shards), len(pending))
    rows_of: dict[str, list[int]] = {}
    for i, (q, _) in enumerate(keys):
        rows_of.setdefault(q, []).append(i)
    pairs_per_block = max(1, BLOCK_BYTES * pairs.num_rows // max(1, pairs.nbytes))
    rows: list[int] = []
    shard_ids: list[int] = []
    for s in pending:
        shard_rows = [r for q in shards[s] for r in rows_of[q]]
        rows += shard_rows
        shard_ids += [s] * len(shard_rows)
        if len(rows) >= pairs_per_block or s == pending[-1]:
            yield pairs.take(pa.array(rows, pa.int64())).append_column(SHARD_COLUMN, pa.array(shard_ids, pa.int64()))
            rows, shard_ids = [], []


def _plan_task(pairs: pa.Table | None, annotate_cfg: Any, out: str, base: dict[str, Any], identity: dict[str, Any],
               overwrite: bool, shard_size: int) -> Iterator[_Plan | pa.Table]:
    """A Ray generator task: `_plan_judging` of `pairs`, or (None) of the annotation pairs of
    `annotate_cfg`, made here: candidate search and texts on this worker."""
    if pairs is None:
        pairs = _annotation_pairs(annotate_cfg, overwrite)
    yield from _plan_judging(pairs, out, base, identity, overwrite, shard_size)


# Ray `memory=` requests: peak bytes per byte of input (a collection folder, a table of pairs, an
# output folder); a JSONL corpus with its BM25 index takes ~9 (Cranfield x10). Below the floor no
# request is made: any worker has that much to spare.
_BYTES_PER_INPUT_BYTE = 12
_MEMORY_REQUEST_FLOOR = 256 * 2**20


def _memory(input_bytes: int) -> dict[str, int]:
    need = _BYTES_PER_INPUT_BYTE * input_bytes
    return {"memory": need} if need >= _MEMORY_REQUEST_FLOOR else {}






def _nothing() -> None:
    pass


def _run_judging(pairs: pa.Table | None, annotate_cfg: Any, out: str, model: str,
                 make_judge: Callable[[], tuple[Judge, Callable[[], None]]], *, n_levels: int, prompt_version: str,
                 max_retries: int, shard_size: int, overwrite: bool, identity: dict[str, Any] | None,
                 on_shard: Callable[[int, int], None] | None, ray_data: bool | None, address: str | None = None
                 ) -> JudgeResult:
    """Plan in a Ray task (`_plan_task`), judge the pending shards, finalize in a Ray task. The
    judge comes from `make_judge` (with what releases it), only when a shard is left to judge."""
    import ray

    from synrank.runtime import get_result, init_ray, task_options

    check_version(prompt_version)
    init_ray(address)
    cpu = task_options("cpu")
    base = {"model": model, "prompt_version": prompt_version,
            "prompt_fingerprint": fingerprint(prompt_version, n_levels), "n_levels": n_levels,
            "max_retries": max_retries, "shard_size": shard_size}
    source_bytes = pairs.nbytes if pairs is not None else storage.size(annotate_cfg.collection)
    chunks = ray.remote(_plan_task).options(num_returns="streaming", **cpu, **_memory(source_bytes)).remote(
        pairs, annotate_cfg, out, base, identity or {}, overwrite, shard_size)
    plan: _Plan = get_result(next(chunks))
    finished = plan.n_shards - plan.n_pending
    log.info("%s: %d pairs in %d shards, %d already judged, %d to do", out, plan.identity["n_pairs"], plan.n_shards,
             finished, plan.n_pending)

    def summary_done(summary: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        log.info("shard %d: %d pairs, %d graded, %d failed, %d requests in %.1f s (%d of %d shards)",
                 summary["shard"], summary["pairs"], summary["graded"], summary["failed"], summary["requests"],
                 summary["wall_s"], finished, plan.n_shards)
        if on_shard:
            on_shard(finished, plan.n_shards)

    if plan.n_pending:
        judge, release = make_judge()
        settings = ShardSettings(out, n_levels, prompt_version, max_retries, plan.schema)
        use_ray = ray_data if ray_data is not None else hasattr(judge, "handle")
        try:
            (_judge_ray_data if use_ray else _judge_here)(list(chunks), judge, settings, summary_done)
        finally:
            release()
    finalize = ray.remote(_finalize).options(**cpu, **_memory(storage.size(out)))
    return get_result(finalize.remote(out, plan.schema, plan.identity))


def judge_pairs(
    pairs: pa.Table,
    out: str,
    judge: Judge,
    *,
    n_levels: int = 4,
    prompt_version: str = "v1",
    max_retries: int = 2,
    shard_size: int = 16,
    overwrite: bool = False,
    identity: dict[str, Any] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
    ray_data: bool | None = None,
) -> JudgeResult:
    """Judge every pair of `pairs` into `out` (see the module docstring), resuming what is there.

    `pairs`: query_id, doc_id, query, passage (texts), plus pass-through columns (kept in the
    output). `identity`: extra manifest entries a rerun must match (the caller's candidate
    settings). `on_shard(done, total)` is called after each shard is written. `ray_data`: judge
    the shards in a Ray Data pipeline whose workers call the engines (default: for an engine
    judge, `synrank.annotate.engine.EngineJudge`); otherwise shard after shard in this process.
    The pair list is checked and planned in a Ray task (the connected Ray, or an embedded one).
    """
    return _run_judging(pairs, None, out, judge.model, lambda: (judge, _nothing), n_levels=n_levels,
                        prompt_version=prompt_version, max_retries=max_retries, shard_size=shard_size,
                        overwrite=overwrite, identity=identity, on_shard=on_shard, ray_data=ray_data)


def _judgment_table(results: list[_Pending], keys: list[tuple[str, str]], passthrough: pa.Table,
                    schema: pa.Schema, model: str, prompt_version: str) -> pa.Table:
    n = len(results)
    raw = []
    for it in results:
        if it.grade is not None:
            raw.append(it.answers[-1])  # the grade always comes from the last answer
        else:
            raw.append(it.answers[-1] if it.answers else None)
    cols: dict[str, Any] = {
        "query_id": [k[0] for k in keys],
        "doc_id": [k[1] for k in keys],
        "grade": [it.grade for it in results],
        "source": ["llm"] * n,
        "model": [model] * n,
        "prompt_version": [prompt_version] * n,
        "raw_answer": raw,
        "status": ["ok" if it.grade is not None else "failed" for it in results],
        "attempts": [len(it.answers) for it in results],
        "reason": [it.reason for it in results],
        "answers": [it.answers for it in results],
    }
    for name in passthrough.column_names:
        cols[name] = passthrough.column(name)
    return pa.table(cols, schema=schema)


def read_judgments(out: str) -> pa.Table:
    """Every shard of an output folder, in shard order (one row per judged pair)."""
    names = sorted(_list_shards(out))
    tables = [_read_parquet(storage.join(out, SHARDS_DIR, n)) for n in names]
    if not tables:
        return pa.schema(JUDGMENT_FIELDS).empty_table()
    return pa.concat_tables(tables, promote_options="default")


def _finalize(out: str, schema: pa.Schema, identity: dict[str, Any]) -> JudgeResult:
    """(A Ray task.) `finalize` against the folder's pair list."""
    stored = _read_parquet(storage.join(out, PAIRS_FILE))
    return finalize(out, list(zip(stored.column("query_id").to_pylist(), stored.column("doc_id").to_pylist())),
                    schema, identity)


def finalize(out: str, keys: Sequence[tuple[str, str]], schema: pa.Schema, identity: dict[str, Any]) -> JudgeResult:
    """Check that the shards hold every pair exactly once; write qrels, failures and summary."""
    table = read_judgments(out)
    got = list(zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()))
    if len(set(got)) != len(got):
        raise AnnotateError(f"{out}: a pair appears in more than one shard; the folder was edited by hand")
    if set(got) != set(keys):
        missing = len(set(keys) - set(got))
        extra = len(set(got) - set(keys))
        raise AnnotateError(f"{out}: the shards hold {extra} unexpected pair(s) and miss {missing}")
    ok_mask = pc.equal(table.column("status"), "ok")
    ok = table.filter(ok_mask)
    failed = table.filter(pc.invert(ok_mask))
    qrels = schemas.conform(ok.drop_columns(["status", "reason", "answers"]), schemas.QRELS, f"{out}/qrels")
    failures = failed.drop_columns(["grade", "source"])
    qrels_path = storage.join(out, QRELS_FILE)
    failures_path = storage.join(out, FAILURES_FILE)
    summary_path = storage.join(out, SUMMARY_FILE)
    write_parquet(qrels, qrels_path)
    write_parquet(failures, failures_path)
    grades = pc.value_counts(ok.column("grade")).to_pylist() if ok.num_rows else []
    attempts = table.column("attempts").to_pylist()
    summary = {
        **identity,
        "pairs": table.num_rows,
        "graded": ok.num_rows,
        "failed": failed.num_rows,
        "queries": len({q for q, _ in got}),
        "grade_histogram": {str(g["values"]): g["counts"] for g in sorted(grades, key=lambda g: g["values"])},
        "retried_pairs": sum(1 for a in attempts if a > 1),
        "requests": sum(attempts),
        "qrels": qrels_path,
        "failures": failures_path,
    }
    write_json(summary, summary_path)
    return JudgeResult(out, qrels_path, failures_path, summary_path, summary)


# --------------------------------------------------------------------------------------------
# the annotation run


def candidate_pairs(cfg, collection) -> pa.Table:
    """Candidates of `cfg` for the collection's queries (the first `cfg.limit`, in collection
    order), with query and passage texts attached."""
    from synrank.annotate.candidates import select_candidates

    query_ids = collection.queries.column("query_id").to_pylist()
    if cfg.limit:
        query_ids = query_ids[: cfg.limit]
    cands = select_candidates(collection, retriever=cfg.candidates, top_n=cfg.top_n,
                              include_judged=cfg.include_judged, query_ids=query_ids, batch_size=cfg.batch_size)
    return _attach_texts(cands, collection)


def _annotation_pairs(cfg, overwrite: bool) -> pa.Table:
    """The pairs an annotation run judges, with texts: the stored pair list when resuming (a rerun
    judges exactly these, even if candidate selection would now give others), else the candidates."""
    from synrank.data.readers import load_collection

    collection = load_collection(cfg.collection, cfg.split)
    if collection.corpus is None:
        raise AnnotateError(f"{cfg.collection}: has no corpus; annotation judges passages of a corpus")
    pairs_path = storage.join(cfg.out, PAIRS_FILE)
    if not overwrite and exists(pairs_path) and exists(storage.join(cfg.out, MANIFEST_FILE)):
        return _attach_texts(_read_parquet(pairs_path), collection)
    return candidate_pairs(cfg, collection)


def annotate(cfg, *, judge: Judge | None = None, pool: Any | None = None, overwrite: bool | None = None,
             address: str | None = None, on_shard: Callable[[int, int], None] | None = None) -> JudgeResult:
    """`synrank annotate`: candidates of a collection's queries, judged by an LLM (see module doc).

    The collection is read, candidates searched and texts attached in a Ray task (on the cluster
    at `address`, or an embedded Ray); the pairs reach the judging as blocks in Ray's object store.
    The judge: `judge` if given (any `Judge`, judged in this process); else an `EngineJudge` on
    `pool` (an `EnginePool`, e.g. a test's shared one), else on the named pool `cfg.engine_pool`,
    else on engines started for this run (and stopped at its end), when there is anything to judge.
    """
    if not cfg.collection:
        raise AnnotateError("annotate needs a collection (annotate.collection or --collection)")
    if not cfg.out:
        raise AnnotateError("annotate needs an output folder (annotate.out or --out)")
    check_version(cfg.prompt_version)
    identity = {"collection": str(cfg.collection), "split": cfg.split, "candidates": cfg.candidates,
                "top_n": cfg.top_n, "include_judged": cfg.include_judged, "limit": cfg.limit}
    return _judge_with(cfg, None, judge=judge, pool=pool, address=address,
                       overwrite=cfg.overwrite if overwrite is None else overwrite, identity=identity,
                       on_shard=on_shard)


def _judge_with(cfg, pairs: pa.Table | None, *, judge: Judge | None, pool: Any | None, address: str | None,
                overwrite: bool, identity: dict[str, Any], on_shard: Callable[[int, int], None] | None
                ) -> JudgeResult:
    """Judge `pairs` (None: the annotation pairs of `cfg`) with `judge`, or with an engine judge on
    `pool` / the configured engines (started only when a shard is left to judge)."""
    kwargs = dict(n_levels=cfg.n_levels, prompt_version=cfg.prompt_version, max_retries=cfg.max_retries,
                  shard_size=cfg.shard_size, overwrite=overwrite, identity=identity, on_shard=on_shard,
                  ray_data=None, address=address)
    if judge is not None:
        return _run_judging(pairs, cfg, cfg.out, judge.model, lambda: (judge, _nothing), **kwargs)
    from synrank.annotate.engine import EngineJudge, start_pool
    from synrank.llm.engine import spec_from_config

    wanted = spec_from_config(cfg).label
    if pool is not None:
        if pool.spec.label != wanted:
            raise AnnotateError(f"the engine pool runs {pool.spec.label}, the config asks for {wanted}")
        return _run_judging(pairs, cfg, cfg.out, wanted, lambda: (EngineJudge.from_pool(pool, cfg), _nothing),
                            **kwargs)

    def engines() -> tuple[Judge, Callable[[], None]]:
        started, owned = start_pool(cfg, address)
        return EngineJudge.from_pool(started, cfg), (started.shutdown if owned else _nothing)

    return _run_judging(pairs, cfg, cfg.out, wanted, engines, **kwargs)


def _attach_texts(pairs: pa.Table, collection) -> pa.Table:
    """`pairs` with the query and passage texts of the collection (only the passages of the pairs
    are formatted)."""
    from synrank.text import format_passage

    query_rows = pc.index_in(pairs.column("query_id"), value_set=collection.queries.column("query_id"))
    doc_rows = pc.index_in(pairs.column("doc_id"), value_set=collection.corpus.column("doc_id"))
    unknown = pc.or_(pc.is_null(query_rows), pc.is_null(doc_rows))
    if pc.any(unknown).as_py():
        i = pc.index(unknown, True).as_py()
        q, d = pairs.column("query_id")[i].as_py(), pairs.column("doc_id")[i].as_py()
        raise AnnotateError(f"stored pair ({q}, {d}) is not in {collection.path} any more; overwrite to start over")
    queries = collection.queries.column("text").take(query_rows)
    titles = collection.corpus.column("title").take(doc_rows).to_pylist()
    texts = collection.corpus.column("text").take(doc_rows).to_pylist()
    passages = pa.array([format_passage(t, x) for t, x in zip(titles, texts)], pa.string())
    return pairs.append_column("query", queries).append_column("passage", passages)
