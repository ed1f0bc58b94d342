"""jobs/configs/recipe-cpu.yaml and the study built on it: the recipe trains from synthetic passages
only, evaluates on held-out queries nothing trained on, compares with the peer a user would pick,
and shares its split and generated passages with jobs/configs/study-cranfield.yaml."""

from __future__ import annotations

from pathlib import Path

from synrank.config import SynrankConfig, load
from synrank.recipes import RECIPES
from synrank.study.load import load_study

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def test_the_recipe_trains_on_synthetic_passages_of_the_1_5b_generator_only():
    cfg = load(SynrankConfig, CONFIGS / "recipe-cpu.yaml")
    assert cfg.groups.source == "synthetic" and not cfg.pipeline.annotate
    assert cfg.generate.model in RECIPES
    assert cfg.pipeline.collection and cfg.pipeline.test_fraction > 0  # held-out queries of the collection
    assert {"bm25", "default", "st-mnrl"} <= set(cfg.pipeline.baselines)
    assert cfg.evaluate.collections  # zero-shot collections beside the in-domain one


def test_the_study_uses_the_recipes_split_generator_and_training_settings():
    recipe = load(SynrankConfig, CONFIGS / "recipe-cpu.yaml")
    study = load_study(CONFIGS / "study-cranfield.yaml")
    split = study.base.groups.query_split
    assert (split.train_fraction, split.seed) == (1.0 - recipe.pipeline.test_fraction, recipe.pipeline.split_seed)
    assert study.base.groups.synthetic == recipe.run_dir + "/generate/train"
    generation = {"queries", "out", "limit"}
    assert study.base.generate.model_dump(exclude=generation) == recipe.generate.model_dump(exclude=generation)
    schedule = {"loss", "loss_params", "seed", "num_workers", "cpus_per_worker", "groups", "out"}
    assert study.base.train.model_dump(exclude=schedule) == recipe.train.model_dump(exclude=schedule)
    # the study's graded loss is the recipe's, with the recipe's parameters
    graded = [spec for spec in study.space.losses if spec.name == recipe.train.loss]
    assert len(graded) == 1 and graded[0].params == recipe.train.loss_params
    assert len(study.space.seeds) >= 3
