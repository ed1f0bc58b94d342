"""Benchmark of synrank as the work grows (not a test): memory flatness from 1x to 10x input, and
encoding throughput on 2 nodes against 1.

    .venv/bin/python bench/scale.py [--docs 5000] [--queries 200] [--scale 10] [--nodes 1 2]
                                    [--stages evaluate groups train] [--train-steps 5]
                                    [--out bench/results/scale.json]

Input. A synthetic BEIR collection built from Cranfield (../shared/data/cranfield): its documents
and queries replicated under new ids until there are `docs` documents and `queries` queries at 1x
(`scale` times as many at the large size), the qrels remapped to the copies (query copy r judges
document copy r, or the last copy there is); the same qrels are written as the `train` split (for
the groups) and the `test` split (for the evaluation). The encoder is a tiny randomly initialised
BERT (hidden 128, 2 layers, 2 heads) with the packaged MiniLM's tokenizer.

Cluster. For each input size and node count, a fresh LocalCluster (tests/fixtures_cluster.py):
`ray start` processes on loopback, a head of 1 CPU plus, for 2 nodes, a worker node of 1 CPU. Each
stage runs as a `python -m synrank ...` driver process that joins the cluster (RAY_ADDRESS):

- evaluate: `synrank evaluate --model TINY --collection C --out O` (encoding, index, search, metrics);
- groups:   `synrank groups groups.source=human groups.collection=C groups.qrels_split=train ...`
            (human labels plus BM25 negatives);
- train:    `synrank train train.groups=G train.encoder.model=TINY train.max_steps=N
            train.num_workers=<nodes>` (a few Ray Train steps, one 1-CPU worker per node).

Measured per (stage, size, nodes), sampling every `--interval` s (0.15) with psutil:
- wall time of the driver command;
- peak RSS of the driver (its own process tree; Ray's processes are not in it);
- peak RSS of every Ray worker process under the cluster's node processes that ran work (a
  `ray::<name>` process title other than `ray::IDLE` and Ray's agents), by role: the title without
  its method and with counts as N (e.g. `MapWorker(MapBatches(_EncodeBatch))`, `RayTrainWorker`,
  `ReadGroups->SplitBlocks(N)`, a read, index or search task; a path in a name: its last part).
  Ray Data's detached actors (`_StatsActor`, ...) outlive a job and are counted in every later
  stage on the same cluster;
- evaluate: encoding throughput, documents / the encoding phase's seconds in
  <out>/<collection>/metrics.json (actor start and model load included; the command's wall time
  when the metrics carry no encoding time), and documents / the busiest encoder actor's time.

Targets (issue 13): driver and per-worker peak RSS flat from 1x to 10x (within +-20 %), and
encoding throughput on 2 nodes >= 1.7x that on 1 node. A Markdown table is printed and the results
(with the load averages before and after, and the CPU count: a busy machine shows there) are written
as JSON. A stage that fails is reported with its error; the other measurements are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import psutil  # noqa: E402

STAGES = ("evaluate", "groups", "train")
FLAT = 0.20  # peak memory is flat when the large run's peak is within 20 % of the small one's
SPEEDUP_TARGET = 1.7
MB = 2**20


# ---------------------------------------------------------------------------------------------
# inputs


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _qrels(path: Path) -> list[tuple[str, str, int]]:
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    return [(q, d, int(s)) for q, d, s in rows]


def make_collection(source: Path, n_docs: int, n_queries: int, out: Path) -> Path:
    """A BEIR folder of `n_docs` documents and `n_queries` queries copied from `source`.

    Copy r of document i is `d<r>_<i>`, copy r of query j is `q<r>_<j>`; query copy r judges the
    copy r of each of its documents (or, past the corpus' last full copy, the last copy there is).
    """
    docs, queries = _jsonl(source / "corpus.jsonl"), _jsonl(source / "queries.jsonl")
    qrels = _qrels(source / "qrels" / "test.tsv")
    doc_index = {str(d["_id"]): i for i, d in enumerate(docs)}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for n in range(n_docs):
            r, i = divmod(n, len(docs))
            d = docs[i]
            handle.write(json.dumps({"_id": f"d{r}_{d['_id']}", "title": d.get("title", ""),
                                     "text": d.get("text", "")}) + "\n")
    with open(out / "queries.jsonl", "w", encoding="utf-8") as handle:
        for n in range(n_queries):
            r, j = divmod(n, len(queries))
            handle.write(json.dumps({"_id": f"q{r}_{queries[j]['_id']}", "text": queries[j]["text"]}) + "\n")
    by_query: dict[str, list[tuple[str, int]]] = {}
    for q, d, s in qrels:
        by_query.setdefault(q, []).append((d, s))
    lines = ["query-id\tcorpus-id\tscore"]
    for n in range(n_queries):
        r, j = divmod(n, len(queries))
        qid = str(queries[j]["_id"])
        for d, s in by_query.get(qid, []):
            i = doc_index[d]
            copies = (n_docs - i + len(docs) - 1) // len(docs)  # copies of document i in the corpus
            if copies > 0:
                lines.append(f"q{r}_{qid}\td{min(r, copies - 1)}_{d}\t{s}")
    (out / "qrels").mkdir(exist_ok=True)
    for split in ("train", "test"):
        (out / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def make_tiny_encoder(out: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT (hidden 128) with the packaged MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from synrank.models import resolve_encoder

    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("default"))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=512)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------
# memory sampling

# Ray's own per-node processes that carry a `ray::` title but run no stage work.
NOT_WORK = {"IDLE", "DashboardAgent", "RuntimeEnvAgent"}
# Ray Data's detached actors: they outlive the job that started them (counted, never waited for).
DETACHED = {"_StatsActor", "_AutoscalingCoordinatorActor", "ActorLocationTracker"}


def worker_role(cmdline: list[str]) -> str | None:
    """`ray::MapWorker(MapBatches(_EncodeBatch)).submit` -> `MapWorker(MapBatches(_EncodeBatch))`,
    `ray::ReadGroups->SplitBlocks(4)` -> `ReadGroups->SplitBlocks(N)`; None for a process that is
    not a Ray worker running work."""
    title = " ".join(cmdline).strip()
    if not title.startswith("ray::"):
        return None
    name = re.sub(r"\.[A-Za-z_]\w*$", "", title[len("ray::"):].split(" ")[0])
    name = re.sub(r"\(\d+\)", "(N)", name)
    name = re.sub(r"/(?:[^/\s]+/)*", "", name)  # a path in a task name: its last part
    if name.rpartition(":")[2] in DETACHED:  # `datasets_stats_actor:_StatsActor`: a named actor
        name = name.rpartition(":")[2]
    if not name or name in NOT_WORK or name.startswith("IDLE"):
        return None
    return name


def _descendants(roots: dict[int, str]) -> dict[int, str]:
    """Every live process under `roots` (pid -> label), labelled with its root's label."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info["ppid"], []).append(proc.pid)
    found, stack = {}, list(roots.items())
    while stack:
        pid, label = stack.pop()
        found[pid] = label
        stack += [(c, label) for c in children.get(pid, ()) if c not in found]
    return found


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


class PeakSampler(threading.Thread):
    """Peak RSS of a driver's process tree and of the Ray workers under the cluster's nodes."""

    def __init__(self, driver_pid: int, nodes: dict[int, str], interval: float) -> None:
        super().__init__(daemon=True)
        self.driver_pid, self.nodes, self.interval = driver_pid, nodes, interval
        self.driver_peak = 0
        self.workers: dict[int, dict] = {}  # pid -> {node, roles: {role: peak rss}}
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)
        self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def sample(self) -> None:
        tree = _descendants({self.driver_pid: "driver", **self.nodes})
        driver = sum(_rss(pid) for pid, label in tree.items() if label == "driver")
        self.driver_peak = max(self.driver_peak, driver)
        for pid, node in tree.items():
            if node == "driver":
                continue
            try:
                role = worker_role(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            if role is None:
                continue
            entry = self.workers.setdefault(pid, {"node": node, "roles": {}})
            entry["roles"][role] = max(entry["roles"].get(role, 0), _rss(pid))
        self.samples += 1

    def result(self) -> dict:
        roles: dict[str, float] = {}
        for entry in self.workers.values():
            for role, rss in entry["roles"].items():
                roles[role] = max(roles.get(role, 0.0), rss / MB)
        return {
            "driver_peak_rss_mb": self.driver_peak / MB,
            "worker_peak_rss_mb": max(roles.values(), default=0.0),
            "worker_peak_rss_mb_by_role": dict(sorted(roles.items())),
            "workers": [{"pid": pid, "node": e["node"], "peak_rss_mb": {r: v / MB for r, v in e["roles"].items()}}
                        for pid, e in sorted(self.workers.items())],
            "samples": self.samples,
        }


# ---------------------------------------------------------------------------------------------
# stages


def stage_args(stage: str, collection: Path, encoder: Path, work: Path, nodes: int, train_steps: int) -> list[str]:
    if stage == "evaluate":
        return ["evaluate", "--model", str(encoder), "--collection", str(collection), "--out", str(work / "evaluate"),
                "--no-progress"]
    if stage == "groups":
        return ["groups", f"run_dir={work}", "groups.source=human", f"groups.collection={collection}",
                "groups.qrels_split=train", "groups.qrels_levels=5", "groups.n_levels=4",
                f"groups.out={work / 'groups.parquet'}"]
    if stage == "train":
        return ["train", f"run_dir={work}", f"train.groups={work / 'groups.parquet'}", f"train.out={work / 'train'}",
                f"train.encoder.model={encoder}", f"train.max_steps={train_steps}", f"train.num_workers={nodes}",
                "train.cpus_per_worker=1", "train.batch_size=8", "train.encoder.max_passage_length=128",
                f"train.checkpoint_every={max(train_steps, 1)}"]
    raise ValueError(f"unknown stage {stage!r}")


def encoding_rate(out: Path, wall_s: float) -> dict:
    """Documents per encoding second from the evaluation's metrics.json (its wall time as a fallback)."""
    for path in sorted(out.glob("*/metrics.json")):
        metrics = json.loads(path.read_text())
        docs, timings = metrics.get("num_docs"), metrics.get("timings") or {}
        keys = ["encode_s_all_collections", "encode_s",
                *sorted(k for k in timings if "encod" in k and k.endswith("_s"))]
        for key in keys:
            if isinstance(timings.get(key), (int, float)) and timings[key] > 0 and docs:
                actors = timings.get("encoder_actors") or {}
                busiest = actors.get("busiest_s")
                return {"docs_per_s": docs / timings[key], "encode_s": timings[key], "docs": docs,
                        "source": f"metrics.json timings.{key}", "encoder_actors": actors.get("actors"),
                        "busiest_actor_s": busiest, "rows_per_actor": actors.get("rows"),
                        "docs_per_busiest_actor_s": docs / busiest if busiest else None}
        if docs:
            return {"docs_per_s": docs / wall_s, "encode_s": None, "docs": docs, "source": "evaluate wall time"}
    return {}


def run_stage(cluster, args: list[str], log: Path, timeout: float, interval: float) -> dict:
    """One `synrank` driver joining `cluster`, sampled until it exits (or is stopped at `timeout`)."""
    from fixtures_cluster import start_synrank, stop_process

    nodes = {node.proc.pid: node.name for node in cluster.alive()}
    started = time.perf_counter()
    proc = start_synrank(cluster, args, log)
    sampler = PeakSampler(proc.pid, nodes, interval)
    sampler.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        stop_process(proc)
        rc = None
    wall = time.perf_counter() - started
    sampler.stop()
    result = {"wall_s": wall, "returncode": rc, "log": str(log), **sampler.result()}
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        result["error"] = f"timed out after {timeout:.0f} s" if rc is None else f"exit status {rc}"
        result["log_tail"] = tail
    return result


def wait_for_idle(cluster, timeout: float = 30) -> None:
    """Until the previous job's workers are gone, so they are not counted in the next stage."""
    deadline = time.time() + timeout
    roots = {node.proc.pid: node.name for node in cluster.alive()}
    while time.time() < deadline:
        busy = [pid for pid in _descendants(roots) if _role_of(pid) not in (None, *DETACHED)]
        if not busy:
            return
        time.sleep(0.5)


def _role_of(pid: int) -> str | None:
    try:
        return worker_role(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def run_setting(collection: Path, encoder: Path, work: Path, n_docs: int, n_queries: int, nodes: int,
                args) -> dict:
    """Every stage on `collection` on a fresh cluster of `nodes` 1-CPU nodes; outputs under `work`."""
    from fixtures_cluster import LocalCluster

    work.mkdir(parents=True)
    results: dict[str, dict] = {}
    with LocalCluster(head_cpus=1) as cluster:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        for stage in args.stages:
            if stage == "train" and results.get("groups", {}).get("returncode", 0) != 0:
                results[stage] = {"error": "skipped: the groups stage failed"}
                continue
            if stage == "train" and not (work / "groups.parquet").exists():
                results[stage] = {"error": f"skipped: no groups at {work / 'groups.parquet'} (run the groups stage)"}
                continue
            wait_for_idle(cluster)
            print(f"  {stage}: {n_docs} docs, {n_queries} queries, {nodes} node(s) ...", flush=True)
            cmd = stage_args(stage, collection, encoder, work, nodes, args.train_steps)
            r = run_stage(cluster, cmd, work / f"{stage}.log", args.timeout, args.interval)
            r["command"] = "python -m synrank " + " ".join(cmd)
            if stage == "evaluate" and r["returncode"] == 0:
                r["encoding"] = encoding_rate(work / "evaluate", r["wall_s"])
            results[stage] = r
            status = "ok" if r["returncode"] == 0 else f"FAILED ({r['error']})"
            print(f"    {status}: {r['wall_s']:.1f} s, driver {r['driver_peak_rss_mb']:.0f} MB, "
                  f"workers {r['worker_peak_rss_mb']:.0f} MB", flush=True)
            if r["returncode"] != 0:
                print("    " + r["log_tail"][-1500:].replace("\n", "\n    "), flush=True)
    return {"docs": n_docs, "queries": n_queries, "nodes": nodes, "stages": results}


# ---------------------------------------------------------------------------------------------
# report


def _growth(small: float | None, big: float | None) -> float | None:
    return big / small - 1 if small and big is not None else None


def summarise(runs: list[dict], scale: int) -> dict:
    """Memory growth from 1x to `scale`x per (stage, nodes), and throughput 2 nodes vs 1 per size."""
    ok = {(r["label"], r["nodes"], s): m for r in runs for s, m in r["stages"].items() if m.get("returncode") == 0}
    big = f"{scale}x"
    memory = []
    for (label, nodes, stage), small in ok.items():
        large = ok.get((big, nodes, stage)) if label == "1x" else None
        if large is None:
            continue
        roles = {role: _growth(mb, large["worker_peak_rss_mb_by_role"].get(role))
                 for role, mb in small["worker_peak_rss_mb_by_role"].items()
                 if role in large["worker_peak_rss_mb_by_role"]}
        driver = _growth(small["driver_peak_rss_mb"], large["driver_peak_rss_mb"])
        worker = _growth(small["worker_peak_rss_mb"], large["worker_peak_rss_mb"])
        checked = [g for g in (driver, worker, *roles.values()) if g is not None]
        memory.append({"stage": stage, "nodes": nodes, "driver_growth": driver, "worker_growth": worker,
                       "worker_growth_by_role": roles, "flat": all(abs(g) <= FLAT for g in checked)})
    throughput = []
    for label in ("1x", big):
        one, two = ok.get((label, 1, "evaluate")), ok.get((label, 2, "evaluate"))
        if one and two and one.get("encoding") and two.get("encoding"):
            a, b = one["encoding"]["docs_per_s"], two["encoding"]["docs_per_s"]
            busy_a, busy_b = (r["encoding"].get("docs_per_busiest_actor_s") for r in (one, two))
            throughput.append({"size": label, "docs_per_s_1_node": a, "docs_per_s_2_nodes": b, "speedup": b / a,
                               "meets_target": b / a >= SPEEDUP_TARGET,
                               "encoder_actors_1_node": one["encoding"].get("encoder_actors"),
                               "encoder_actors_2_nodes": two["encoding"].get("encoder_actors"),
                               "speedup_busiest_actor_time": busy_b / busy_a if busy_a and busy_b else None})
    return {"memory": memory, "throughput": throughput,
            "targets": {"memory_growth": f"within +-{FLAT:.0%}", "speedup_2_nodes": f">= {SPEEDUP_TARGET}"}}


def _fmt(value, spec: str = ".0f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(runs: list[dict], summary: dict, scale: int) -> str:
    lines = ["| stage | size | nodes | docs | queries | wall s | driver peak MB | worker peak MB (role) | docs/s "
             "| status |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |"]
    for r in runs:
        for stage, m in r["stages"].items():
            roles = m.get("worker_peak_rss_mb_by_role") or {}
            top = max(roles, key=roles.get) if roles else None
            worker = f"{roles[top]:.0f} ({top})" if top else "-"
            rate = (m.get("encoding") or {}).get("docs_per_s")
            status = "ok" if m.get("returncode") == 0 else m.get("error", "failed")
            lines.append(f"| {stage} | {r['label']} | {r['nodes']} | {r['docs']} | {r['queries']} | "
                         f"{_fmt(m.get('wall_s'), '.1f')} | {_fmt(m.get('driver_peak_rss_mb'))} | {worker} | "
                         f"{_fmt(rate, '.1f')} | {status} |")
    lines += ["", f"Peak RSS growth 1x -> {scale}x (flat: within +-{FLAT:.0%})", "",
              "| stage | nodes | driver | worker (max) | worst role | flat |",
              "| --- | ---: | ---: | ---: | --- | --- |"]
    for m in summary["memory"]:
        roles = {k: v for k, v in m["worker_growth_by_role"].items() if v is not None}
        worst = max(roles, key=lambda k: abs(roles[k])) if roles else None
        worst_text = f"{roles[worst]:+.0%} ({worst})" if worst else "-"
        lines.append(f"| {m['stage']} | {m['nodes']} | {_fmt(m['driver_growth'], '+.0%')} | "
                     f"{_fmt(m['worker_growth'], '+.0%')} | {worst_text} | {'yes' if m['flat'] else 'NO'} |")
    lines += ["", f"Encoding throughput, 2 nodes vs 1 (target >= {SPEEDUP_TARGET}x)", "",
              "| size | 1 node docs/s | 2 nodes docs/s | speedup | encoder actors 1 / 2 nodes | "
              "speedup, busiest actor's time |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for t in summary["throughput"]:
        lines.append(f"| {t['size']} | {t['docs_per_s_1_node']:.1f} | {t['docs_per_s_2_nodes']:.1f} | "
                     f"{t['speedup']:.2f}x | {t['encoder_actors_1_node']} / {t['encoder_actors_2_nodes']} | "
                     f"{_fmt(t['speedup_busiest_actor_time'], '.2f')}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--collection", default=str(REPO.parent / "shared" / "data" / "cranfield"),
                        help="BEIR folder the synthetic collection is copied from")
    parser.add_argument("--docs", type=int, default=5000, help="documents at 1x")
    parser.add_argument("--queries", type=int, default=200, help="queries at 1x")
    parser.add_argument("--scale", type=int, default=10, help="the large size, as a multiple of 1x")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], choices=[1, 2, 3, 4],
                        help="node counts (1-CPU nodes)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.15, help="memory sampling period (s)")
    parser.add_argument("--timeout", type=float, default=1800, help="per stage (s)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (collections, logs, outputs)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "scale.json"))
    args = parser.parse_args()

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "memory_gib": psutil.virtual_memory().total / 2**30, "load_average_at_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
    }
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    runs = []
    try:
        encoder = make_tiny_encoder(work / "tiny-encoder")
        for factor in (1, args.scale):
            n_docs, n_queries = args.docs * factor, args.queries * factor
            # One path for every size: task names that carry it (the search task's) stay comparable.
            shutil.rmtree(work / "collection", ignore_errors=True)
            collection = make_collection(Path(args.collection), n_docs, n_queries, work / "collection")
            for nodes in args.nodes:
                label = f"{factor}x"
                print(f"{label}, {nodes} node(s):", flush=True)
                run = run_setting(collection, encoder, work / f"{label}-{nodes}n", n_docs, n_queries, nodes, args)
                runs.append({"label": label, **run})
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    import ray
    import torch
    import transformers

    summary = summarise(runs, args.scale)
    results.update(runs=runs, summary=summary, seconds=time.perf_counter() - started,
                   versions={"ray": ray.__version__, "torch": torch.__version__,
                             "transformers": transformers.__version__})
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print()
    print(markdown(runs, summary, args.scale))
    load = results["machine"]
    print(f"\n{load['cpus']} CPUs; load average {load['load_average_at_start'][0]:.2f} at start, "
          f"{load['load_average_at_end'][0]:.2f} at end")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
