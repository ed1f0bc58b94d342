"""`StudyConfig`: what a `synrank study` compares, on which data, and how it is run and reported.

A study is a set of *configurations* (a loss with its parameters, a number of relevance levels, a
label source, and any tunables), each trained once per seed. Everything not varied comes from
``base``, a full :class:`synrank.config.SynrankConfig` (groups, train, evaluate, runtime sections).

>>> study = load_study("jobs/configs/study-tiny.yaml", ["space.seeds=[0,1]"])   # synrank.study.load; doctest: +SKIP

Keys (all also settable as dotted overrides, e.g. ``search.num_samples=8 base.train.max_steps=20``):

- ``name``, ``study_dir`` (local path or fsspec URL): every output lives under ``study_dir``.
- ``base``: the fixed settings (a SynrankConfig; ``run_dir`` is ignored).
- ``space``: ``losses`` (names, or ``{name, params, label}``), ``n_levels``, ``sources``,
  ``seeds``, ``tunables`` (dotted key -> ``{grid|choice: [...]}`` or ``{uniform|loguniform|randint:
  [lo, hi]}``; ``loss.X`` is short for ``train.loss_params.X``).
- ``search``: ``algorithm`` grid (every combination), random (``num_samples`` configurations drawn
  from the tunables with ``search.seed``, each crossed with every loss/levels/source) or a Tune
  searcher (``optuna``, ``hyperopt``: ``num_samples`` trials guided by the dev metric).
- ``dev`` / ``test``: evaluation collections; ``queries: held_out`` with ``part: dev|test`` takes
  the queries a collection's training split leaves out (``base.groups.query_split``), divided into
  dev and test by ``holdout``.
- ``asha``: optional early stopping on the dev metric, evaluated every ``eval_every`` steps.
- ``report``: the measure, the baseline (a partial assignment such as ``{loss: infonce}``: each
  configuration is compared with the one that differs only there), the paired test, alpha, and
  ``references``: untrained systems (``default``, ``bm25``, encoder paths) shown as reference rows.
- ``synthetic``: generate the synthetic passages for the training queries once, before the trials.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from synrank.config import ConfigError, SynrankConfig, Section

SOURCES = ("synthetic", "human", "llm", "mixed")
MEASURES = ("ndcg@10", "ndcg@100", "recall@100", "mrr@10", "map")

# Trial dimensions a tunable may not set (they are the study's own axes).
_AXES = {
    "train.loss": "space.losses",
    "train.loss_params": "space.losses[].params",
    "groups.source": "space.sources",
    "groups.n_levels": "space.n_levels",
    "train.seed": "space.seeds",
    "groups.seed": "space.seeds",
}


class LossSpec(Section):
    """One objective: a registered loss name, fixed parameters, and an optional display label."""

    name: str
    params: dict[str, Any] = {}
    label: str | None = Field(None, description="name in tables and plots (default: name(param=value, ...))")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from synrank.losses import available

        if v not in available():
            raise ValueError(f"unknown loss {v!r}; available: {', '.join(available())}")
        return v

    @model_validator(mode="after")
    def _params(self) -> "LossSpec":
        from synrank.losses import build

        build(self.name, **self.params)  # ValueError naming the valid parameters
        return self

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        if not self.params:
            return self.name
        inner = ",".join(f"{k}={_fmt(v)}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"


class Tunable(Section):
    """One tuned setting: exactly one of a list of values (``grid`` / ``choice``) or a range."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="integers lo..hi-1")

    @model_validator(mode="after")
    def _one(self) -> "Tunable":
        set_ = [k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(set_) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {set_ or 'none'})")
        kind = set_[0]
        if kind in ("grid", "choice") and not getattr(self, kind):
            raise ValueError(f"{kind}: an empty list")
        if kind in ("uniform", "loguniform", "randint"):
            lo, hi = getattr(self, kind)
            if not lo < hi:
                raise ValueError(f"{kind}: need lo < hi, got [{lo}, {hi}]")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"loguniform: need lo > 0, got {lo}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    @property
    def values(self) -> list[Any] | None:
        """The finite list of values (grid/choice), None for a range."""
        return self.grid if self.grid is not None else self.choice


def _loss_names(v: Any) -> Any:
    if isinstance(v, list):
        return [{"name": x} if isinstance(x, str) else x for x in v]
    return v


def _nonempty_unique(v: list[Any] | None) -> list[Any] | None:
    if v is None:
        return v
    if not v:
        raise ValueError("needs at least one value")
    keys = [x.display if isinstance(x, LossSpec) else x for x in v]
    dup = sorted({str(k) for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"duplicate value(s) {', '.join(dup)} (give a loss a distinct label)")
    return v


def _levels(v: list[int] | None) -> list[int] | None:
    bad = [n for n in v or [] if not 2 <= n <= 5]
    if bad:
        raise ValueError(f"levels must be in 2..5, got {bad}")
    return v


def _tunable_keys(v: dict[str, Any] | None) -> dict[str, Any] | None:
    if v is None:
        return v
    if not isinstance(v, dict):
        raise ValueError(f"expected a mapping of dotted keys to {{grid: [...]}} etc., got {type(v).__name__}")
    out = {}
    for key, tunable in v.items():
        if not isinstance(tunable, Tunable):
            try:
                tunable = Tunable.model_validate(tunable)
            except ValidationError as exc:
                errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"tunable {key!r}: {errs}") from None
        full = canonical_key(key)
        for axis, where in _AXES.items():
            if full == axis:
                raise ValueError(f"tunable {key!r} is a study axis; set it with {where}")
        out[full] = tunable
    return out


Source = Literal["synthetic", "human", "llm", "mixed"]


class GridConfig(Section):
    """A further grid of the study: every axis it leaves out is the main grid's."""

    losses: list[LossSpec] | None = None
    n_levels: list[int] | None = None
    sources: list[Source] | None = None
    tunables: dict[str, Any] | None = None  # {dotted key: Tunable}

    _names = field_validator("losses", mode="before")(classmethod(lambda cls, v: _loss_names(v)))
    _unique = field_validator("losses", "n_levels", "sources")(classmethod(lambda cls, v: _nonempty_unique(v)))
    _lv = field_validator("n_levels")(classmethod(lambda cls, v: _levels(v)))
    _keys = field_validator("tunables")(classmethod(lambda cls, v: _tunable_keys(v)))


class SpaceConfig(Section):
    """The axes of the study: the grid losses × n_levels × sources × tunables (× seeds), plus the
    grids in ``also`` (each inherits the axes it does not set), so a study can cross everything on
    one label source and only some objectives on the others."""

    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="infonce")])
    n_levels: list[int] = [4]
    sources: list[Source] = ["synthetic"]
    seeds: list[int] = [0]
    tunables: dict[str, Any] = {}  # {dotted key: Tunable}; Any keeps the generic key checker off the keys
    also: list[GridConfig] = []

    _names = field_validator("losses", mode="before")(classmethod(lambda cls, v: _loss_names(v)))
    _unique = field_validator("losses", "n_levels", "sources", "seeds")(
        classmethod(lambda cls, v: _nonempty_unique(v)))
    _lv = field_validator("n_levels")(classmethod(lambda cls, v: _levels(v)))
    _keys = field_validator("tunables")(classmethod(lambda cls, v: _tunable_keys(v)))

    def grids(self) -> list[tuple[list[LossSpec], list[int], list[str], dict[str, Tunable]]]:
        """(losses, n_levels, sources, tunables) of the main grid, then of each grid in ``also``."""
        out = [(self.losses, self.n_levels, list(self.sources), self.tunables)]
        for g in self.also:
            out.append((g.losses or self.losses, g.n_levels or self.n_levels, list(g.sources or self.sources),
                        self.tunables if g.tunables is None else g.tunables))
        return out


class SearchConfig(Section):
    algorithm: Literal["grid", "random", "optuna", "hyperopt"] = "grid"
    num_samples: int = Field(1, ge=1, description="random: tunable draws per axis combination; searcher: trials")
    seed: int = 0


class AshaConfig(Section):
    """Asynchronous successive halving on the dev metric, evaluated during training."""

    enabled: bool = False
    eval_every: int = Field(50, ge=1, description="steps between dev evaluations (and checkpoints)")
    grace_period: int = Field(1, ge=1, description="dev evaluations before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)
    brackets: int = Field(1, ge=1)


class HoldoutConfig(Section):
    """How the held-out queries of a split collection divide into dev and test."""

    dev_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    seed: int = 7


class CollectionSpec(Section):
    """One evaluation collection, or one view of it (a query subset)."""

    path: str
    name: str | None = Field(None, description="name in tables (default: the folder name, + -dev for part=dev)")
    split: str | None = Field(None, description="qrels split (default: the groups' split for held_out, else test)")
    queries: Literal["all", "held_out", "train"] = "all"
    part: Literal["all", "dev", "test"] = Field("all", description="held_out only: the dev or the test share")
    limit: int | None = Field(None, ge=1, description="only the first N of the selected queries (sorted ids)")

    @model_validator(mode="after")
    def _part(self) -> "CollectionSpec":
        if self.part != "all" and self.queries != "held_out":
            raise ValueError("part=dev/test divides held-out queries; set queries: held_out")
        return self

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        base = os.path.basename(self.path.rstrip("/")) or self.path
        return f"{base}-dev" if self.part == "dev" else base


class ReportConfig(Section):
    measure: Literal["ndcg@10", "ndcg@100", "recall@100", "mrr@10", "map"] = "ndcg@10"
    measures: list[str] = ["ndcg@10", "recall@100", "mrr@10"]
    baseline: dict[str, Any] = Field(default_factory=lambda: {"loss": "infonce"},
                                     description="partial assignment: loss, n_levels, source, or a tunable key")
    test: Literal["randomization", "ttest"] = "randomization"
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    trials: int = Field(10_000, ge=100, description="randomization test permutations")
    references: list[str] = Field(default_factory=lambda: ["default", "bm25"],
                                  description="untrained systems shown as reference rows: model specs of the "
                                              "evaluation stage ('default', 'bm25', an encoder path or hub name)")

    @field_validator("references")
    @classmethod
    def _references(cls, v: list[str]) -> list[str]:
        bad = [r for r in v if not isinstance(r, str) or not r.strip()]
        if bad:
            raise ValueError(f"references: model specs must be non-empty strings, got {bad}")
        return list(dict.fromkeys(r.strip() for r in v))

    @field_validator("measures")
    @classmethod
    def _measures(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if m not in MEASURES]
        if bad:
            raise ValueError(f"unknown measure(s) {bad}; known: {', '.join(MEASURES)}")
        return v

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, v: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, val in v.items():
            try:
                out[_baseline_key(k)] = val
            except ValueError:
                raise ValueError(f"{k!r} is not one of the study axes (loss, n_levels, source, or a tunable's "
                                 "dotted key such as train.lr)") from None
        return out


class SyntheticConfig(Section):
    """Generate the synthetic passages once (cached at ``base.groups.synthetic``) for the queries
    the groups train on, before any trial. Skipped when the file exists or no source needs it."""

    generate: bool = True
    queries: Literal["train", "all"] = Field("train", description="train: the collection's training queries only")


class StudyConfig(Section):
    name: str = "study"
    study_dir: str = "runs/study"
    base: SynrankConfig = SynrankConfig()
    space: SpaceConfig = Field(default_factory=SpaceConfig)  # built on use: its loss check imports torch
    search: SearchConfig = SearchConfig()
    asha: AshaConfig = AshaConfig()
    dev: list[CollectionSpec] = []
    test: list[CollectionSpec] = []
    holdout: HoldoutConfig = HoldoutConfig()
    report: ReportConfig = ReportConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: cluster CPUs (GPUs) / trial workers")
    trial_retries: int = Field(0, ge=0, description="Tune retries of a failed trial")
    trial_resources: dict[str, float] = Field({}, description="Ray resources of each trial's driver (it waits on "
                                              "its TorchTrainer and evaluates with evaluation=local); default "
                                              "no CPU and 512 MiB of memory")
    worker_resources: dict[str, float] = Field({}, description="extra Ray resources per Train worker, e.g. a "
                                               "custom node resource such as {synrank_train: 0.25}")
    fail_trials: list[str] = Field([], description="test-only: trial ids (fnmatch patterns) whose training raises")
    top_k: int = Field(100, ge=1)
    evaluation: Literal["stage", "local"] = Field(
        "stage", description="stage: the evaluation stage (Ray Data encoders, faiss; for large corpora and GPUs); "
                             "local: in the trial's process with its own CPUs (exact search; small corpora)")
    keep_models: bool = Field(False, description="keep each trial's exported encoder (trials/<id>/model)")
    keep_checkpoints: bool = Field(False, description="keep each finished trial's Ray Train checkpoints")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '_', '-', '.' (it names a directory)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "StudyConfig":
        if not self.test and not self.dev:
            raise ValueError("a study needs at least one evaluation collection (test: or dev:)")
        keys = [c.key for c in self.dev + self.test]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"two evaluation collections are named {dup}; give them distinct names")
        if self.asha.enabled and not self.dev:
            raise ValueError("asha needs a dev collection (dev:) to rank trials on")
        if self.search.algorithm in ("optuna", "hyperopt") and not self.dev:
            raise ValueError(f"search.algorithm={self.search.algorithm} needs a dev collection to optimise")
        if self.space.also and self.search.algorithm in ("optuna", "hyperopt"):
            raise ValueError("space.also (further grids) works with grid and random search, not with a searcher")
        tunables = sorted({k for *_, t in self.space.grids() for k in t})
        unknown = set(self.report.baseline) - {"loss", "n_levels", "source"} - set(tunables)
        if unknown:
            raise ValueError(f"report.baseline: {sorted(unknown)} are not study axes "
                             f"(loss, n_levels, source, {', '.join(tunables) or 'no tunables'})")
        return self

    @property
    def all_sources(self) -> list[str]:
        return list(dict.fromkeys(s for _, _, sources, _ in self.space.grids() for s in sources))

    @property
    def dev_measure_key(self) -> str:
        return f"dev/{self.report.measure}"


def canonical_key(key: str) -> str:
    """`loss.temperature` -> `train.loss_params.temperature`; other keys must name a SynrankConfig section."""
    if key.startswith("loss."):
        return "train.loss_params." + key[len("loss."):]
    section = key.split(".", 1)[0]
    if section not in ("train", "groups", "evaluate") or "." not in key:
        raise ValueError(f"tunable {key!r}: use a dotted key in train., groups. or evaluate. "
                         "(e.g. train.lr), or loss.<param> for a loss parameter")
    return key


def _baseline_key(key: str) -> str:
    if key in ("loss", "n_levels", "source", "levels"):
        return "n_levels" if key == "levels" else key
    return canonical_key(key)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")
        return f"{v:g}"
    return str(v)


def build_study(data: dict[str, Any], where: str) -> StudyConfig:
    """A StudyConfig from parsed YAML (`synrank.config.build` for studies), with whole-study checks
    reported without echoing the whole config; `where` names the source in errors."""
    from synrank.config import _check_keys

    _check_keys(StudyConfig, data, "", where)
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if key:
                lines.append(f"{where}: key {key!r}: {msg} (got {err.get('input')!r})")
            else:
                lines.append(f"{where}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def _abs(path: str | None) -> str | None:
    if path is None or "://" in path and not path.startswith("file://"):
        return path
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def absolutize(study: StudyConfig) -> StudyConfig:
    """The study with every local path made absolute (trials and Train workers run in other
    working directories). Model names that are not existing paths are left alone."""
    data = study.model_dump(mode="json")
    data["study_dir"] = _abs(data["study_dir"])
    g = data["base"]["groups"]
    for key in ("synthetic", "collection", "queries", "llm_qrels", "out"):
        g[key] = _abs(g[key])
    for section in ("train", "evaluate"):
        enc = data["base"][section]["encoder"]
        if enc["model"] != "default" and os.path.exists(os.path.expanduser(enc["model"])):
            enc["model"] = _abs(enc["model"])
    gen = data["base"]["generate"]
    for key in ("queries", "out"):
        gen[key] = _abs(gen[key])
    if gen["model"] != "default" and os.path.exists(os.path.expanduser(gen["model"])):
        gen["model"] = _abs(gen["model"])
    for part in ("dev", "test"):
        for c in data[part]:
            c["path"] = _abs(c["path"])
    return StudyConfig.model_validate(data)
