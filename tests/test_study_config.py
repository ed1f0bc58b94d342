"""StudyConfig, the search space and the evaluation views: fast, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from synrank.config import ConfigError
from synrank.study.config import StudyConfig, absolutize
from synrank.study.load import load_study
from synrank.study.space import TrialSpec, expand, tunable_points

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"


def _study(tmp_path: Path, shared_data: Path, *overrides: str) -> StudyConfig:
    base = [f"study_dir={tmp_path / 'study'}", f"base.groups.collection={shared_data / 'cranfield'}",
            f"test=[{{path: {shared_data / 'cranfield'}, queries: held_out}}]"]
    return load_study(CONFIGS / "study-tiny.yaml", base + list(overrides))


@pytest.mark.parametrize("name", ["study-tiny.yaml", "study-cranfield.yaml", "study-cranfield-smollm2.yaml", "study-msmarco-gpu.yaml"])
def test_shipped_configs_load_and_expand(name: str, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    study = load_study(CONFIGS / name)
    specs = expand(study)
    assert specs, name
    assert len({s.trial_id for s in specs}) == len(specs)
    if name == "study-tiny.yaml":
        assert len({s.config_id for s in specs}) == 4  # 2 losses x 2 level counts
        assert {s.loss.name for s in specs} == {"infonce", "wasserstein"}
        assert {s.n_levels for s in specs} == {2, 4}


def test_trial_run_config_applies_axes(tmp_path, shared_data) -> None:
    study = _study(tmp_path, shared_data, "space.tunables={train.lr: {grid: [1.0e-5, 3.0e-5]}, loss.temperature: {grid: [0.05]}}",
                   "space.seeds=[0,1]")
    specs = expand(study)
    assert len(specs) == 2 * 2 * 2 * 2  # losses x levels x lr x seeds
    spec = next(s for s in specs if s.loss.name == "wasserstein" and s.n_levels == 2 and s.seed == 1
                and s.tunables["train.lr"] == 3e-5)
    run = spec.run_config(study.base)
    assert run.train.loss == "wasserstein"
    assert run.train.loss_params == {"target_temperature": 0.5, "temperature": 0.05}
    assert run.train.lr == 3e-5 and run.train.seed == 1
    assert run.groups.n_levels == 2 and run.groups.seed == 1 and run.groups.source == "human"
    assert spec.trial_id == "wasserstein_L2_human_temperature=0.05_lr=3e-5_s1"
    assert TrialSpec.from_dict(spec.to_dict()) == spec
    assert TrialSpec.from_tune(study, {"trial": spec.to_dict()}).trial_id == spec.trial_id


@pytest.mark.parametrize("override, message", [
    ("space.losses=[nosuchloss]", "unknown loss 'nosuchloss'"),
    ("space.losses=[{name: infonce, params: {bogus: 1}}]", "unknown parameter(s) 'bogus'"),
    ("space.losses=[infonce, infonce]", "duplicate"),
    ("space.n_levels=[2, 6]", "levels must be in 2..5"),
    ("space.tunables={train.loss: {grid: [kl]}}", "study axis"),
    ("space.tunables={train.seed: {grid: [1]}}", "study axis"),
    ("space.tunables={lr: {grid: [1]}}", "dotted key"),
    ("space.tunables={train.lr: {loguniform: [1.0e-5, 1.0e-4]}}", "grid search cannot enumerate"),
    ("space.tunables={train.lr: {grid: [1.0e-5], uniform: [0, 1]}}", "exactly one of"),
    ("space.tunables={train.nosuchkey: {grid: [1]}}", "nosuchkey"),
    ("space.sources=[synthetic]", "base.groups.synthetic"),
    ("space.sources=[llm]", "llm_qrels"),
    ("search.algorithm=optuna", "needs a dev collection"),
    ("asha.enabled=true", "asha needs a dev collection"),
    ("report.baseline={optimizer: adam}", "not one of the study axes"),
    ("report.baseline={train.lr: 1.0e-5}", "not study axes"),
    ("test=[]", "at least one evaluation collection"),
    ("name=bad/name", "names a directory"),
    ("space.bogus=1", "unknown key 'space.bogus'"),
])
def test_bad_study_configs_name_the_problem(tmp_path, shared_data, override, message) -> None:
    with pytest.raises(ConfigError) as err:
        _study(tmp_path, shared_data, override)
    assert message in str(err.value)


def test_levels_finer_than_the_labels_are_rejected(tmp_path, shared_data) -> None:
    with pytest.raises(ConfigError, match="configuration infonce_L5_human.*n_levels=5 is finer than qrels_levels=4"):
        _study(tmp_path, shared_data, "base.groups.qrels_levels=4", "space.n_levels=[2, 5]")


def test_random_search_is_seeded_and_pairs_seeds(tmp_path, shared_data) -> None:
    over = ["search.algorithm=random", "search.num_samples=3", "search.seed=5", "space.seeds=[0,1]",
            "space.tunables={train.lr: {loguniform: [1.0e-6, 1.0e-3]}, train.batch_size: {grid: [4, 8]}}"]
    a = _study(tmp_path, shared_data, *over)
    b = _study(tmp_path, shared_data, *over)
    assert tunable_points(a) == tunable_points(b)
    points = tunable_points(a)
    assert len(points) == 3 * 2 and all(1e-6 <= p["train.lr"] <= 1e-3 for p in points)
    specs = expand(a)
    assert len(specs) == 2 * 2 * 6 * 2
    # every configuration runs with every seed and the same tunables
    by_config: dict[str, set[int]] = {}
    for s in specs:
        by_config.setdefault(s.config_id, set()).add(s.seed)
    assert all(seeds == {0, 1} for seeds in by_config.values())
    other = _study(tmp_path, shared_data, *over[:-3], "search.seed=6", *over[-2:])
    assert tunable_points(other) != points


def test_max_concurrent_trials_follows_resources(tmp_path, shared_data) -> None:
    from synrank.study.driver import max_concurrent

    study = _study(tmp_path, shared_data)
    assert max_concurrent(study, cpus=2, gpus=0) == 2
    assert max_concurrent(study, cpus=1, gpus=0) == 1
    s2 = _study(tmp_path, shared_data, "base.train.num_workers=2", "base.train.cpus_per_worker=2")
    assert max_concurrent(s2, cpus=16, gpus=0) == 4
    gpu = _study(tmp_path, shared_data, "base.train.use_gpu=true", "base.train.num_workers=2")
    assert max_concurrent(gpu, cpus=64, gpus=8) == 4
    assert max_concurrent(_study(tmp_path, shared_data, "max_concurrent_trials=3"), cpus=2, gpus=0) == 3


def test_held_out_views_never_contain_training_queries(tmp_path, shared_data) -> None:
    from synrank.data.groups import human_split
    from synrank.study.collections import resolve_views

    cran = shared_data / "cranfield"
    study = _study(tmp_path, shared_data,
                   f"dev=[{{path: {cran}, queries: held_out, part: dev}}]",
                   f"test=[{{path: {cran}, queries: held_out, part: test}}, {{path: {shared_data / 'med'}}}]")
    views = resolve_views(study)
    dev, = views["dev"]
    test, med = views["test"]
    assert (dev.key, test.key, med.key) == ("cranfield-dev", "cranfield", "med")
    split = human_split(str(cran), "train", study.base.groups.query_split)
    train = set(split.train_ids)
    assert not train & set(dev.query_ids) and not train & set(test.query_ids)
    assert not set(dev.query_ids) & set(test.query_ids)
    assert set(dev.query_ids) | set(test.query_ids) == set(split.test_ids)
    assert abs(len(dev.query_ids) - round(0.3 * len(split.test_ids))) <= 1
    assert med.query_ids is None and med.split == "test"


def test_absolutize_makes_local_paths_absolute(monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    study = absolutize(load_study(CONFIGS / "study-tiny.yaml"))
    assert Path(study.study_dir).is_absolute()
    assert Path(study.base.groups.collection).is_absolute() and Path(study.base.groups.collection).is_dir()
    assert all(Path(c.path).is_absolute() for c in study.test)


def _mini_collection(root: Path, shared_data: Path, n_queries: int = 6) -> Path:
    """A small BEIR folder cut from Cranfield: a few queries, their judged documents and some others."""
    import json

    src = shared_data / "cranfield"
    qrels = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    qids = sorted({q for q, _, _ in qrels}, key=int)[:n_queries]
    rows = [(q, d, g) for q, d, g in qrels if q in qids]
    docs = {d for _, d, _ in rows} | {str(i) for i in range(1, 41)}
    (root / "qrels").mkdir(parents=True)
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join("\t".join(r) for r in rows) + "\n")
    with (root / "corpus.jsonl").open("w") as out:
        for line in (src / "corpus.jsonl").read_text().splitlines():
            if json.loads(line)["_id"] in docs:
                out.write(line + "\n")
    with (root / "queries.jsonl").open("w") as out:
        for line in (src / "queries.jsonl").read_text().splitlines():
            if json.loads(line)["_id"] in qids:
                out.write(line + "\n")
    return root


def test_dev_score_of_a_train_checkpoint(tmp_path, shared_data) -> None:
    """The dev metric reported during training (early stopping): a Train checkpoint's encoder scored
    on the dev views, equal to the evaluation measures of the same weights."""
    import torch
    from ray.train import Checkpoint

    from synrank.config import TrainConfig
    from synrank.encoder import BiEncoder
    from synrank.evaluate.metrics import evaluate_run
    from synrank.study.collections import View, view_qrels
    from synrank.study.trial import dev_score
    from synrank.train.loop import MODEL_FILE

    coll = _mini_collection(tmp_path / "mini", shared_data)
    train = TrainConfig(encoder={"max_query_length": 32, "max_passage_length": 48})
    encoder = BiEncoder(train.encoder)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(encoder.state_dict(), ckpt / MODEL_FILE)
    view = View("mini", str(coll), "test", None)
    got = dev_score(Checkpoint.from_directory(str(ckpt)), train, [view], "ndcg@10")
    assert set(got) == {"dev/mini/ndcg@10", "dev/ndcg@10"}

    # by hand: every passage scored against every query
    import json

    docs = [json.loads(line) for line in (coll / "corpus.jsonl").read_text().splitlines()]
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (coll / "queries.jsonl").read_text().splitlines()}
    from synrank.text import format_passage

    p = encoder.encode([format_passage(d["title"], d["text"]) for d in docs], "passage")
    qids = list(queries)
    q = encoder.encode([queries[x] for x in qids], "query")
    scores = q @ p.T
    run = {qid: {d["_id"]: float(scores[i, j]) for j, d in enumerate(docs)} for i, qid in enumerate(qids)}
    per_query = evaluate_run(view_qrels(view), run, ["ndcg@10"])
    expected = sum(v["ndcg@10"] for v in per_query.values()) / len(per_query)
    assert got["dev/ndcg@10"] == pytest.approx(expected, abs=1e-6) and got["dev/mini/ndcg@10"] == got["dev/ndcg@10"]


def test_searcher_space_and_its_trials(tmp_path, shared_data) -> None:
    from ray import tune

    from synrank.study.space import tune_param_space

    cran = shared_data / "cranfield"
    study = _study(tmp_path, shared_data, "search.algorithm=hyperopt", "search.num_samples=5",
                   f"dev=[{{path: {cran}, queries: held_out, part: dev}}]",
                   "space.tunables={train.lr: {loguniform: [1.0e-6, 1.0e-4]}, loss.temperature: {choice: [0.02, 0.05]}}")
    space = tune_param_space(study)
    assert isinstance(space["loss"], tune.search.sample.Categorical)
    assert space["loss"].categories == ["infonce", "wasserstein"]
    assert isinstance(space["tunables"]["train.lr"], tune.search.sample.Float)
    point = {"loss": "wasserstein", "n_levels": 4, "source": "human", "seed": 0,
             "tunables": {"train.lr": 2e-5, "train.loss_params.temperature": 0.02}}
    spec = TrialSpec.from_tune(study, point)
    run = spec.run_config(study.base)
    assert run.train.loss == "wasserstein" and run.train.lr == 2e-5
    assert run.train.loss_params == {"target_temperature": 0.5, "temperature": 0.02}
    with pytest.raises(ConfigError, match="not with a searcher"):
        _study(tmp_path, shared_data, "search.algorithm=hyperopt", f"dev=[{{path: {cran}, name: d}}]",
               "space.also=[{n_levels: [3]}]")


def test_further_grids_inherit_and_deduplicate(tmp_path, shared_data) -> None:
    study = _study(tmp_path, shared_data, "space.n_levels=[4]",
                   "space.also=[{losses: [kl, infonce], n_levels: [2, 4]}, {n_levels: [3]}]")
    ids = [s.config_id for s in expand(study)]
    assert ids == ["infonce_L4_human", "wasserstein_L4_human", "kl_L2_human", "kl_L4_human", "infonce_L2_human",
                   "infonce_L3_human", "wasserstein_L3_human"]  # infonce_L4 once


def test_synthetic_passages_are_generated_for_the_queries_every_source_trains_on(tmp_path, shared_data) -> None:
    """With groups.limit the study generates for exactly the N training queries that the human (and
    mixed) source keeps, so label sources are compared on the same training queries."""
    from synrank.data.groups import human_split, limit_queries
    from synrank.study.synthetic import training_queries

    study = _study(tmp_path, shared_data, "base.groups.limit=17")
    g = study.base.groups
    train = human_split(g.collection, g.qrels_split, g.query_split).train_ids
    ids = training_queries(study).column("query_id").to_pylist()
    assert set(ids) == set(limit_queries(train, 17)) and len(ids) == 17
