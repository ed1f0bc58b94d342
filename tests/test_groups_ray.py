"""Groups building as a Ray job: the driver reads no input, input errors still name the file and
row, a failed build leaves the previous output as it was, the work asks for the stage resources
(so that an autoscaler brings up the node type meant for it), and without a connected Ray an
embedded one serves the build only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from driver_output import last_json_object

from synrank.config import GroupsConfig
from synrank.data import readers
from synrank.data.groups import GroupsError, build_groups_to, read_groups

# Building groups runs in Ray: one embedded Ray for the session, not one per build.
pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def driver_reads_nothing(monkeypatch):
    """Every reader of input data fails in this process (Ray's workers are other processes)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"input read in the driver: {args}")

    for name in ("read_corpus", "iter_corpus", "read_queries", "read_qrels", "read_table", "load_collection"):
        monkeypatch.setattr(readers, name, refuse)


def _human(collection: Path, **kw) -> GroupsConfig:
    return GroupsConfig(**{"source": "human", "collection": str(collection), "qrels_levels": 5, "n_levels": 3,
                           "group_size": 4, "bm25_negatives": 5, **kw})


def test_the_driver_reads_no_input(shared_data, tmp_path, driver_reads_nothing):
    out = tmp_path / "groups.parquet"
    stats = build_groups_to(_human(shared_data / "cranfield"), str(out), queries_per_part=50)
    assert stats.n_groups == 112 and pq.ParquetFile(out).num_row_groups == 3


def test_input_errors_name_the_file_and_row_and_keep_the_previous_output(shared_data, tmp_path):
    out = tmp_path / "groups.parquet"
    build_groups_to(_human(shared_data / "cranfield", limit=5), str(out))
    before = (out.read_bytes(), Path(f"{out}.stats.json").read_text())
    with pytest.raises(GroupsError, match=r"qrels/test: row 129: grade 4 is not on the 4-level scale") as bad_grade:
        build_groups_to(_human(shared_data / "cranfield", qrels_levels=4), str(out))
    assert bad_grade.type is GroupsError  # the planning task's own error, not Ray's wrapper
    empty = tmp_path / "empty"
    (empty / "qrels").mkdir(parents=True)
    (empty / "queries.jsonl").write_text('{"_id": "q1", "text": "lift"}\n')
    (empty / "corpus.jsonl").write_text("")
    (empty / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(GroupsError, match="the corpus is empty"):  # raised in the corpus actor
        build_groups_to(_human(empty, qrels_levels=2, n_levels=2), str(out))
    assert (out.read_bytes(), Path(f"{out}.stats.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "groups.parquet", "groups.parquet.stats.json"]
    assert read_groups(str(out)).num_rows == 5


WAITS_FOR_STAGE_RESOURCES = textwrap.dedent('''
    import json, sys, threading, time
    from synrank.config import GroupsConfig
    from synrank.data.groups import build_groups_to
    from synrank.runtime import init_ray, stall_report

    init_ray(num_cpus=2, stage_resources={"cpu": {"synrank_cpu": 0.001}})  # no node has synrank_cpu
    cfg = GroupsConfig(source="human", collection=sys.argv[1], qrels_levels=5, n_levels=3)
    threading.Thread(target=build_groups_to, args=(cfg, sys.argv[2]), daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = stall_report("groups", 0)
        if "synrank_cpu" in report:
            break
        time.sleep(1)
    print(json.dumps({"stall_report": report}), flush=True)
''')


def test_the_work_waits_for_the_cpu_stage_resources(shared_data, tmp_path):
    proc = subprocess.run([sys.executable, "-c", WAITS_FOR_STAGE_RESOURCES, str(shared_data / "cranfield"),
                           str(tmp_path / "groups.parquet")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = last_json_object(proc.stdout)["stall_report"]
    assert "synrank_cpu: 0.001" in report, proc.stdout
    assert not (tmp_path / "groups.parquet").exists()


EMBEDDED_FOR_THE_BUILD = textwrap.dedent('''
    import sys
    import ray
    from synrank.config import GroupsConfig
    from synrank.data.groups import build_groups

    table, stats = build_groups(GroupsConfig(source="human", collection=sys.argv[1], qrels_levels=5, n_levels=3,
                                             limit=4))
    print(table.num_rows, ray.is_initialized())
''')


def test_without_a_connected_ray_an_embedded_one_serves_the_build_only(shared_data):
    """So that a caller connecting to its cluster afterwards (`synrank train --address`) still can."""
    proc = subprocess.run([sys.executable, "-c", EMBEDDED_FOR_THE_BUILD, str(shared_data / "cranfield")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["4", "False"]
