"""The shard-and-resume helper both LLM stages write through (`synrank.llm.shards`): file names and
digests stay what existing output folders hold, a rerun skips exactly the finished shards - by
presence (annotation) or by digest (generation) - and files of shards beyond the plan are found."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synrank.llm import shards


def _write(folder, index, digest=None, rows=1):
    table = pa.table({"x": list(range(rows))})
    if digest is not None:
        table = shards.with_digest(table, digest)
    path = shards.shard_path(str(folder), index)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_names_and_indices_are_those_of_existing_folders():
    assert shards.shard_name(12) == "part-00012.parquet"
    assert shards.shard_name(3, ".json") == "part-00003.json"
    assert shards.shard_index("part-00012.parquet") == 12 and shards.shard_index("part-00007.json") == 7
    assert shards.shard_index("_manifest.json") is None and shards.shard_index("part-x.parquet") is None
    assert shards.DIGEST_KEY == b"synrank.shard_digest"


def test_split_keeps_order_and_cuts_consecutive_runs():
    assert shards.split(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert shards.split(range(3), 5) == [[0, 1, 2]] and shards.split([], 3) == []
    with pytest.raises(ValueError):
        shards.split([1], 0)


def test_by_presence_a_rerun_skips_the_shards_whose_file_exists(tmp_path):
    folder = tmp_path / "_shards"
    assert shards.pending_shards(str(folder), 3) == [0, 1, 2]  # no folder yet
    _write(folder, 1)
    (folder / "notes.txt").write_text("not a shard")
    assert shards.pending_shards(str(folder), 3) == [0, 2]
    assert shards.shard_files(str(folder)) == {"part-00001.parquet"}


def test_by_digest_only_a_file_with_the_digest_this_run_would_write_counts(tmp_path):
    _write(tmp_path, 0, digest="aaa")
    _write(tmp_path, 1, digest="old")  # its queries changed
    _write(tmp_path, 2)  # no digest
    (tmp_path / shards.shard_name(3)).write_bytes(b"PAR1 truncated")
    assert shards.read_digest(shards.shard_path(str(tmp_path), 0)) == "aaa"
    assert shards.read_digest(shards.shard_path(str(tmp_path), 3)) is None
    assert shards.read_digest(shards.shard_path(str(tmp_path), 9)) is None
    assert shards.pending_shards(str(tmp_path), 5, ["aaa", "bbb", "ccc", "ddd", "eee"]) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        shards.pending_shards(str(tmp_path), 5, ["aaa"])


def test_stale_files_are_those_of_shards_beyond_the_plan(tmp_path):
    for i in range(4):
        _write(tmp_path, i)
    (tmp_path / "part-00003.json").write_text("{}")
    (tmp_path / "_fidelity.parquet").write_text("")
    assert sorted(shards.stale_shard_files(str(tmp_path), 2)) == [
        "part-00002.parquet", "part-00003.json", "part-00003.parquet"]
    assert shards.stale_shard_files(str(tmp_path / "missing"), 0) == []


def test_generation_writes_and_resumes_through_the_helper(tmp_path):
    from synrank.config import GenerateConfig
    from synrank.generate.layout import errors_path, part_path, stats_path
    from synrank.generate.pipeline import ShardTask, build_requests, run_shard, settings_from_config
    from synrank.llm.engine import Completion

    out = str(tmp_path)
    assert part_path(out, 4) == str(tmp_path / "part-00004.parquet")
    assert errors_path(out, 4) == str(tmp_path / "_errors" / "part-00004.parquet")
    assert stats_path(out, 4) == str(tmp_path / "_stats" / "part-00004.json")
    settings = settings_from_config(GenerateConfig(out=out, level0_strategy="prompt", max_retries=0), out)
    tasks = [ShardTask(i, 0, [f"q{i}"], [f"how do fish {i} breathe"], [None], [None]) for i in range(2)]

    def answer(index, prompts, sampling, seeds=None):
        return [Completion(text=f"Fish number {k} breathe through gills that take oxygen from water.",
                           n_tokens=12, finish_reason="stop") for k in range(len(prompts))]

    run_shard(tasks[1], build_requests(tasks[1], settings), settings, answer)
    assert shards.read_digest(part_path(out, 1)) == tasks[1].digest
    assert shards.pending_shards(out, 2, [t.digest for t in tasks]) == [0]


def test_a_caller_can_tell_whether_a_run_has_shards_left_before_starting_engines(tmp_path):
    """shards_to_generate counts the plan's shards without a finished file: the pipeline's generate
    stage starts its engines only when a part has some (a rerun after a crash may have none)."""
    from synrank.config import GenerateConfig
    from synrank.generate.pipeline import (build_requests, plan_shards, run_shard, settings_from_config,
                                           shards_to_generate)
    from synrank.llm.engine import Completion

    out = str(tmp_path / "gen")
    cfg = GenerateConfig(out=out, level0_strategy="prompt", max_retries=0, shard_size=1)
    queries = pa.table({"query_id": ["q1", "q2"], "text": ["how do fish breathe", "why is the sky blue"]})
    settings = settings_from_config(cfg, out)

    def answer(index, prompts, sampling, seeds=None):
        return [Completion(text=f"Passage {k} answers the question with a clear explanation of it.",
                           n_tokens=12, finish_reason="stop") for k in range(len(prompts))]

    assert shards_to_generate(cfg, queries) == 2
    for task in plan_shards(queries, cfg).tasks:
        run_shard(task, build_requests(task, settings), settings, answer)
    assert shards_to_generate(cfg, queries) == 0
    changed = queries.set_column(1, "text", pa.array(["how do fish breathe", "why is the sea blue"]))
    assert shards_to_generate(cfg, changed) == 1  # a shard whose queries changed is generated again


def test_annotation_plans_only_the_shards_without_a_file(tmp_path):
    from synrank.annotate.pipeline import SHARDS_DIR, _Plan, _plan_judging

    pairs = pa.table({"query_id": ["q1", "q1", "q2", "q3"], "doc_id": ["d1", "d2", "d1", "d3"],
                      "query": ["a", "a", "b", "c"], "passage": ["p1", "p2", "p1", "p3"]})
    out = str(tmp_path)
    base = {"model": "m", "prompt_version": "v1"}
    first = list(_plan_judging(pairs, out, base, {}, False, 1))
    assert isinstance(first[0], _Plan) and (first[0].n_shards, first[0].n_pending) == (3, 3)
    _write(tmp_path / SHARDS_DIR, 1)  # shard 1 (q2) finished before a crash
    again = list(_plan_judging(pairs, out, base, {}, False, 1))
    assert again[0].n_pending == 2
    pending = pa.concat_tables(again[1:])
    assert sorted(set(pending.column("_shard").to_pylist())) == [0, 2]
    assert "q2" not in pending.column("query_id").to_pylist()
