"""The study's search space: configurations (loss, levels, source, tunables) crossed with seeds.

``expand(study)`` lists every trial of a grid or random study, in a stable order, each a
:class:`TrialSpec` whose ``trial_id`` names its directory. A searcher study (optuna, hyperopt) has
no list: ``tune_param_space`` gives Tune the distributions and ``TrialSpec.from_tune`` turns the
point a searcher proposes into a spec.

A configuration is everything but the seed; its id (``config_id``) is readable, e.g.
``wasserstein_L3_human_lr=2e-05``, and the trial id adds ``_s<seed>``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synrank.config import ConfigError, SynrankConfig, apply_overrides, build
from synrank.study.config import LossSpec, StudyConfig, Tunable, _fmt

_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def short_key(key: str) -> str:
    """`train.lr` -> `lr`, `train.loss_params.temperature` -> `temperature`, `groups.group_size` -> `group_size`."""
    return key.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class TrialSpec:
    loss: LossSpec
    n_levels: int
    source: str
    seed: int
    tunables: dict[str, Any] = field(default_factory=dict)

    # ---- identity

    @property
    def axes(self) -> dict[str, Any]:
        """The configuration as named axes (no seed): what tables group by."""
        return {"loss": self.loss.display, "n_levels": self.n_levels, "source": self.source, **self.tunables}

    @property
    def config_id(self) -> str:
        parts = [self.loss.display, f"L{self.n_levels}", self.source]
        parts += [f"{short_key(k)}={_fmt(v)}" for k, v in sorted(self.tunables.items())]
        text = _SAFE.sub("-", "_".join(parts)).strip("-")
        if len(text) > 80:
            digest = hashlib.sha1(json.dumps(self.axes, sort_keys=True, default=str).encode()).hexdigest()[:8]
            text = f"{text[:70]}-{digest}"
        return text

    @property
    def trial_id(self) -> str:
        return f"{self.config_id}_s{self.seed}"

    # ---- (de)serialisation: what Tune carries as a trial's config

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.model_dump(mode="json"), "n_levels": self.n_levels, "source": self.source,
                "seed": self.seed, "tunables": dict(self.tunables)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialSpec":
        return cls(LossSpec.model_validate(d["loss"]), int(d["n_levels"]), str(d["source"]), int(d["seed"]),
                   dict(d.get("tunables") or {}))

    @classmethod
    def from_tune(cls, study: StudyConfig, config: dict[str, Any]) -> "TrialSpec":
        """A spec from a Tune trial config: ``{"trial": spec dict}`` (grid/random) or the flat point a
        searcher proposed (``loss`` is the loss's display name)."""
        if "trial" in config:
            return cls.from_dict(config["trial"])
        by_name = {spec.display: spec for spec in study.space.losses}
        tunables = {k: _plain(v) for k, v in (config.get("tunables") or {}).items()}
        return cls(by_name[config["loss"]], int(config["n_levels"]), str(config["source"]),
                   int(config.get("seed", study.space.seeds[0])), tunables)

    # ---- the run it makes

    def run_config(self, base: SynrankConfig) -> SynrankConfig:
        """``base`` with this trial's loss, levels, source, seed and tunables applied."""
        data = base.model_dump(mode="json")
        data["groups"]["source"] = self.source
        data["groups"]["n_levels"] = self.n_levels
        data["groups"]["seed"] = self.seed
        data["train"]["loss"] = self.loss.name
        data["train"]["loss_params"] = {**data["train"].get("loss_params", {}), **self.loss.params}
        data["train"]["seed"] = self.seed
        data = apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in self.tunables.items()])
        return build(SynrankConfig, data, where=f"trial {self.trial_id}")


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _check_source(study: StudyConfig, source: str) -> None:
    g = study.base.groups
    if source in ("human", "llm", "mixed") and not g.collection:
        raise ValueError(f"source {source!r} needs base.groups.collection (the BEIR folder with qrels and corpus)")
    if source == "llm" and not g.llm_qrels:
        raise ValueError("source 'llm' needs base.groups.llm_qrels: the annotation stage's output (synrank annotate)")
    if source in ("synthetic", "mixed") and not g.synthetic:
        raise ValueError(f"source {source!r} needs base.groups.synthetic: where the generated passages are "
                         "(made once by the study when synthetic.generate is on)")


def _draw(tunable: Tunable, rng: np.random.Generator) -> Any:
    kind = tunable.kind
    if kind in ("grid", "choice"):
        values = tunable.values or []
        return values[int(rng.integers(len(values)))]
    lo, hi = getattr(tunable, kind)
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "loguniform":
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return int(rng.integers(lo, hi))


def tunable_points(study: StudyConfig, tunables: dict[str, Tunable] | None = None, grid_index: int = 0
                   ) -> list[dict[str, Any]]:
    """The tunable assignments of a grid or random study (of the main grid, or the given tunables),
    in a stable order."""
    tunables = study.space.tunables if tunables is None else tunables
    if not tunables:
        return [{}]
    if study.search.algorithm == "grid":
        ranges = [k for k, t in tunables.items() if t.values is None]
        if ranges:
            raise ValueError(f"grid search cannot enumerate the range(s) of {ranges}; give grid: [...] values or "
                             "use search.algorithm=random")
        keys = list(tunables)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(tunables[k].values for k in keys))]
    # random: grid values are crossed, everything else drawn num_samples times
    grid_keys = [k for k, t in tunables.items() if t.grid is not None]
    drawn = [k for k in tunables if k not in grid_keys]
    grid = [dict(zip(grid_keys, combo)) for combo in itertools.product(*(tunables[k].grid for k in grid_keys))]
    points = []
    for s in range(study.search.num_samples if drawn else 1):
        rng = np.random.default_rng([study.search.seed, grid_index, s])
        sample = {k: _draw(tunables[k], rng) for k in drawn}
        points.extend({**g, **sample} for g in grid)
    return points


def expand(study: StudyConfig) -> list[TrialSpec]:
    """Every trial of a grid/random study (configurations × seeds, over the main grid and the
    grids in ``space.also``; a trial in two grids runs once), validated against the base config.

    Searcher studies return one corner of the space (for validation only)."""
    for source in study.all_sources:
        _check_source(study, source)
    specs: list[TrialSpec] = []
    seen: dict[str, TrialSpec] = {}
    for index, (losses, levels, sources, tunables) in enumerate(study.space.grids()):
        if study.search.algorithm in ("grid", "random"):
            points = tunable_points(study, tunables, index)
        else:
            rng = np.random.default_rng(study.search.seed)
            points = [{k: _draw(t, rng) for k, t in tunables.items()}]
        for loss, n_levels, source, point in itertools.product(losses, levels, sources, points):
            for seed in study.space.seeds:
                spec = TrialSpec(loss, n_levels, source, seed, dict(point))
                if spec.trial_id in seen:
                    if seen[spec.trial_id].to_dict() != spec.to_dict():
                        raise ValueError(f"two different trials have the id {spec.trial_id}: "
                                         f"{seen[spec.trial_id].to_dict()} and {spec.to_dict()}")
                    continue
                try:
                    spec.run_config(study.base)
                except ConfigError as exc:
                    raise ValueError(f"configuration {spec.config_id}: {exc}") from None
                seen[spec.trial_id] = spec
                specs.append(spec)
    return specs


def tune_param_space(study: StudyConfig) -> dict[str, Any]:
    """Tune's ``param_space``: one grid over the explicit trial list, or a searcher's distributions."""
    from ray import tune

    if study.search.algorithm in ("grid", "random"):
        return {"trial": tune.grid_search([spec.to_dict() for spec in expand(study)])}

    def dist(t: Tunable):
        kind = t.kind
        if kind in ("grid", "choice"):
            return tune.choice(t.values)
        lo, hi = getattr(t, kind)
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](lo, hi)

    space: dict[str, Any] = {
        "loss": tune.choice([spec.display for spec in study.space.losses]),
        "n_levels": tune.choice(study.space.n_levels),
        "source": tune.choice(study.space.sources),
        "seed": study.space.seeds[0],
    }
    if study.space.tunables:
        space["tunables"] = {k: dist(t) for k, t in study.space.tunables.items()}
    return space
