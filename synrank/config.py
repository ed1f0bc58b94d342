"""Typed configuration: one pydantic model per stage, `SynrankConfig` with every section of a run, YAML
files, dotted command-line overrides (`train.loss=lsepair train.lr=2e-5`) and the options a command
reads them with (`add_config_options`).

Every model forbids unknown keys, so a typo is an error that names the key, the file it came from
and the valid choices, instead of a silently ignored setting.
"""

from __future__ import annotations

import argparse
import difflib
import os
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, with the file and the dotted key it concerns."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RuntimeConfig(Section):
    """Where Ray runs: an existing cluster (`address`, or RAY_ADDRESS) or an embedded local one."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs for an embedded Ray (default: all)")
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory: int | None = Field(None, ge=78_643_200)
    stall_warning_s: float = Field(60.0, ge=0.0, description="warn when a stage has finished nothing for this long, "
                                   "naming what it waits for and what the cluster has (0: off)")
    stage_resources: dict[Literal["generate", "encode", "train", "cpu"], dict[str, float]] = Field(
        {}, description="custom resources each kind of work requests, so an autoscaler brings up the node type "
                        "meant for it (cluster.yaml), e.g. {generate: {synrank_generate: 0.001}}")
    resource_wait_s: float = Field(900.0, gt=0.0, description="how long a stage waits for a node that can run its "
                                   "work before failing with the missing resources named")


class EncoderConfig(Section):
    """The bi-encoder shared by training and evaluation."""

    model: str = "default"
    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    similarity: Literal["dot", "cosine"] = "cosine"
    query_prefix: str = ""
    passage_prefix: str = ""
    max_query_length: int = Field(64, ge=4, le=8192)
    max_passage_length: int = Field(256, ge=4, le=8192)
    inference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights when encoding for evaluation (auto: bfloat16 on a GPU that supports it, "
        "float32 on CPUs; bfloat16 is also fast on CPUs with AVX512-BF16 or AMX)")
    backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch", description="what runs the encoder when encoding for evaluation, on CPUs: torch, or ONNX Runtime "
        "(onnx: float32, the same ranking; onnx-int8: dynamically quantised int8, faster, about 0.01 nDCG@10 lower on "
        "Cranfield), the model exported once into the cache "
        "(synrank.encoder_onnx); inference_dtype does not apply to onnx. Training always runs torch")


class EngineSection(Section):
    """The LLM engines of a stage that generates text (generation, annotation): which backend, where
    it runs, and how the engines are pooled. Turned into an `EngineSpec` by
    `synrank.llm.engine.spec_from_config`."""

    engine: Literal["vllm", "transformers"] = "vllm"
    engine_pool: str | None = Field(None, description="use this running named engine pool instead of starting engines")
    num_engines: int | None = Field(None, ge=1, description="engine replicas, the pool's maximum (default: from the "
                                    "cluster as it is; set it on a cluster that scales from zero)")
    min_engines: int | None = Field(None, ge=1, description="engines that must be ready before work starts; the "
                                    "others join as their nodes come up (default: all)")
    engine_cpus: float | None = Field(None, gt=0.0, description="Ray CPUs per CPU engine (default: a node's CPUs "
                                      "less min(1, half of them), left to the Ray Data tasks that feed the engine)")
    engine_retries: int = Field(2, ge=0, description="an engine call that raises: restart the engine and retry the "
                                "batch this many times; then its rows go to the errors with reason engine_error")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(2048, ge=256)
    enforce_eager: bool | None = Field(None, description="default: eager on CPU (compiling costs minutes), compiled on GPU")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    cpu_kv_cache_gib: float | None = Field(None, gt=0.0, description="vLLM CPU KV cache (default: room for batch_size sequences of 512 tokens)")


class GenerateConfig(EngineSection):
    """`synrank generate`: graded synthetic passages for real queries (see synrank/generate/)."""

    queries: str | None = None
    out: str | None = None
    model: str = "default"
    n_levels: int = Field(4, ge=2, le=5)
    samples_per_level: int = Field(1, ge=1)
    level0_strategy: Literal["prompt", "swap"] = Field(
        "swap", description="level 0: ask for an unrelated passage (prompt), or use one written for another query (swap)")
    prompt_version: str = "v1"
    max_tokens: int = Field(160, ge=8)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, gt=0.0)
    seed: int = 0
    max_retries: int = Field(2, ge=0, description="new attempts for a rejected passage")
    min_words: int = Field(8, ge=1, description="shorter passages are rejected")
    limit: int | None = Field(None, ge=1, description="only the first N queries")
    batch_size: int = Field(64, ge=1, description="sequences an engine decodes together (vLLM max_num_seqs)")
    shard_size: int = Field(64, ge=1, description="queries per output shard (the unit of resumption)")
    overwrite: bool = Field(False, description="start over in an output folder written with other settings")
    fidelity_queries: int = Field(500, ge=0, description="queries scored for level fidelity in the report (0: skip)")


class AnnotateConfig(EngineSection):
    """`synrank annotate`: graded LLM labels for real (query, passage) pairs (see synrank/annotate/)."""

    collection: str | None = None
    split: str = "test"
    out: str | None = None
    model: str = "default"
    n_levels: int = Field(4, ge=2, le=5)
    candidates: str = Field("bm25", description="bm25, or an encoder model for dense candidates")
    top_n: int = Field(10, ge=0)
    include_judged: bool = Field(True, description="also judge every passage people judged for the query")
    prompt_version: str = "v1"
    constrained: bool = Field(True, description="first attempt: choice decoding over the grades where the engine has it")
    max_tokens: int = Field(8, ge=1, description="answer length limit of unconstrained attempts")
    max_retries: int = Field(2, ge=0, description="new attempts (sampled, unconstrained) for an unparseable answer")
    retry_temperature: float = Field(0.7, ge=0.0)
    seed: int = 0
    limit: int | None = Field(None, ge=1, description="only the first N queries")
    batch_size: int = Field(64, ge=1, description="sequences an engine decodes together; dense encoder batch")
    shard_size: int = Field(16, ge=1, description="queries per output shard (the unit of resumption)")
    overwrite: bool = Field(False, description="start over in an output folder written with other settings")


class QuerySplitConfig(Section):
    """A deterministic seeded split of a collection's judged query ids into train and test."""

    train_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    seed: int = 13


class GroupsConfig(Section):
    """Training groups: one query, k passages, their grades, from one label source.

    See synrank/data/groups.py for what each source reads and how groups are sampled.
    """

    source: Literal["synthetic", "human", "llm", "mixed"] = "synthetic"
    synthetic: str | None = Field(None, description="synthetic passages (generate's output)")
    collection: str | None = Field(None, description="BEIR folder for human/llm/mixed sources")
    queries: str | None = Field(None, description="query texts (default: the collection's queries)")
    train_queries: str | None = Field(None, description="a queries file: train only on these query ids (the "
                                      "pipeline sets its training split, so no held-out query is trained on)")
    qrels_split: str = "train"
    query_split: QuerySplitConfig | None = Field(
        None, description="split the judged queries into train/test (default for a one-qrels-file collection)")
    llm_qrels: str | None = None
    from_levels: int = Field(4, ge=2, le=5, description="scale of the synthetic levels")
    qrels_levels: int | None = Field(None, ge=2, le=5, description="scale of human/llm grades (default from_levels)")
    n_levels: int = Field(4, ge=2, le=5)
    group_size: int = Field(4, ge=1)
    sampling: Literal["stratified", "uniform"] = "stratified"
    bm25_negatives: int = Field(30, ge=0, description="BM25 top-n to draw negatives from")
    precedence: Literal["human", "llm", "add"] = "human"
    relabel: bool = Field(True, description="mixed: real positives take real_positive_level, negatives negative_level")
    real_positive_level: int | None = Field(None, ge=0, description="mixed: default the top level; must be a "
                                            "positive level (synrank.data.levels.positive_threshold)")
    negative_level: int = Field(0, ge=0, description="mixed: level of BM25 and judged non-relevant real passages; "
                                "must be below every positive level")
    limit: int | None = Field(None, ge=1, description="only N training queries: the N smallest query ids, the same "
                              "for every label source (after test queries are held out)")
    require_positive: bool = Field(False, description="leave out a query none of whose passages is a positive "
                                   "(synrank.data.levels.positive_threshold), so that every objective trains on "
                                   "the queries InfoNCE can use")
    seed: int = 0
    out: str | None = None

    @field_validator("n_levels")
    @classmethod
    def _coarser(cls, v: int, info: Any) -> int:
        start = info.data.get("from_levels", 4)
        key = "from_levels"
        if info.data.get("source") in ("human", "llm") and info.data.get("qrels_levels"):
            start, key = info.data["qrels_levels"], "qrels_levels"
        if v > start:
            raise ValueError(f"n_levels={v} is finer than {key}={start}; levels can only be collapsed")
        return v

    @model_validator(mode="after")
    def _mixed_levels(self) -> "GroupsConfig":
        """Mixed labels with relabelling: every negative strictly below every positive."""
        if self.source == "mixed" and self.relabel:
            check_mixed_levels(self.n_levels, self.real_positive_level, self.negative_level)
        return self


def check_mixed_levels(n_levels: int, real_positive_level: int | None, negative_level: int) -> None:
    """ValueError naming the keys unless, on the n_levels scale, groups.negative_level is below the
    positive threshold (synrank.data.levels.positive_threshold) and groups.real_positive_level (default
    the top level) is at or above it, both on the scale."""
    from synrank.data.levels import positive_threshold

    top = n_levels - 1
    positive = top if real_positive_level is None else real_positive_level
    threshold = positive_threshold(n_levels)
    keys = (f"groups.real_positive_level={real_positive_level}, groups.negative_level={negative_level}, "
            f"groups.n_levels={n_levels}")
    if positive > top or negative_level > top:
        raise ValueError(f"{keys}: levels must be on the {n_levels}-level scale (0..{top})")
    if not negative_level < threshold <= positive:
        raise ValueError(f"{keys}: mixed labels need negative_level < {threshold} <= real_positive_level (the "
                         f"{n_levels}-level scale's positives are the levels >= {threshold}), so that every "
                         "negative stays below every positive")


class TrainConfig(Section):
    """`synrank train`: a bi-encoder on Ray Train with any loss of synrank.losses."""

    groups: str | None = None
    out: str | None = None
    encoder: EncoderConfig = EncoderConfig()
    loss: str = "infonce"
    loss_params: dict[str, Any] = {}
    target_nonrelevant_share: float | None = Field(
        None, gt=0.0, lt=1.0, description="list-wise losses (kl, wasserstein, sycl_w2): set "
        "loss_params.target_temperature so that this share of a query's target falls on non-relevant candidates, "
        "for the run's gathered batch and relevance scale (synrank.losses.targets); other losses ignore it")
    positive_threshold: float | None = Field(
        None, gt=0.0, description="the smallest grade that counts as a positive (default: from the groups' "
        "relevance scale, synrank.data.levels.positive_threshold: level >= 2 of 4, 'partly answers' or better)")
    batch_size: int = Field(16, ge=1, description="queries per worker per step")
    group_size: int | None = Field(None, ge=1, description="passages per query (default: from the groups)")
    in_batch_negatives: bool = True
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(2e-5, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_accumulation: int = Field(1, ge=1)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    amp: bool = Field(True, description="mixed precision on CUDA workers (bf16 where supported, else fp16 with "
                      "a gradient scaler); scores and losses stay fp32")
    cpu_amp: bool = Field(False, description="bf16 autocast on CPU workers: about 2x faster steps on CPUs with "
                          "AVX512-BF16 or AMX, slower on CPUs without (refused there); master weights, scores and "
                          "losses stay fp32")
    prefetch: bool = Field(True, description="collate and tokenize the next batch while this step runs")
    grad_cache_chunk: int | None = Field(
        None, ge=1, description="GradCache: encode at most this many texts at a time with gradients, from "
        "cached embeddings, so activation memory no longer grows with the batch (the loss is unchanged; "
        "about one extra forward pass per step); None: off")
    length_bucketing: bool = Field(
        False, description="batch groups of similar length (sorted within windows of length_bucket_window "
        "batches, the batches shuffled): less padding, but other in-batch negatives than the plain random order")
    length_bucket_window: int = Field(32, ge=1, description="batches per window sorted by length (length_bucketing)")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(0, ge=-1)
    fail_at_step: int | None = Field(None, description="test-only: a worker raises at this step once")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs (and torch threads) per worker")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="gradient clipping (None: off)")
    wise_ft_alpha: float = Field(1.0, gt=0.0, le=1.0, description="WiSE-FT: the exported weights are "
                                 "alpha * fine-tuned + (1 - alpha) * base (1: the fine-tuned weights as trained)")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="override the encoder's dropout")
    report_every: int = Field(1, ge=1, description="report metrics to Ray Train every N steps, and at most once "
                              "per poll of its controller (2 s): a report sooner would stall the step until the "
                              "poll; every step's metrics are in the run's curve either way")

    @field_validator("encoder")
    @classmethod
    def _trains_with_torch(cls, v: EncoderConfig) -> EncoderConfig:
        if v.backend != "torch":
            raise ValueError(f"train.encoder.backend={v.backend!r}: training runs torch; ONNX backends are for "
                             "encoding (evaluate.encoder.backend)")
        return v


class EvaluateConfig(Section):
    """`synrank evaluate`: retrieval on real collections with faiss and pytrec_eval."""

    model: str = "default"
    encoder: EncoderConfig = EncoderConfig()
    collections: list[str] = []
    split: str = "test"
    out: str | None = None
    top_k: int = Field(100, ge=1)
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    batch_size: int = Field(64, ge=1)
    num_encoders: int | None = Field(None, ge=1, description="the encoder pool's maximum size (default: from what "
                                     "is up now; set it on a cluster that scales from zero)")
    encoder_gpus: bool | None = Field(None, description="encoder actors take a GPU each (default: when the cluster "
                                      "has a GPU now; set true when GPU nodes scale from zero)")


class PipelineConfig(Section):
    """`synrank pipeline`: how the stages are chained in one run directory."""

    collection: str | None = Field(
        None, description="BEIR folder whose judged queries are split into train (generated for) and test "
        "(evaluated); default: generate.queries split the same way, evaluated on their generated passages")
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="queries held out for evaluation")
    split_seed: int = 13
    annotate: bool = Field(False, description="run the annotation stage (needs pipeline.collection)")
    baselines: list[str] = Field(["bm25", "default"], description="also evaluated, for the summary table: bm25, an "
                                 "encoder (default: the untrained one), or st-mnrl (sentence-transformers fit with "
                                 "MNRL on the training queries' human labels, train's budget)")


class SynrankConfig(Section):
    """A whole run (`synrank pipeline`): every stage's settings and one run directory.

    Not to be confused with Ray's `ray.train.RunConfig`, which the trainer builds from `train`."""

    run_dir: str = "runs/default"
    runtime: RuntimeConfig = RuntimeConfig()
    pipeline: PipelineConfig = PipelineConfig()
    generate: GenerateConfig = GenerateConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    groups: GroupsConfig = GroupsConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()


M = TypeVar("M", bound=BaseModel)


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    field = model.model_fields.get(key)
    if field is None:
        return None
    ann = field.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _check_keys(model: type[BaseModel], data: Any, prefix: str, where: str) -> None:
    """Unknown keys, reported with the full dotted path and the close valid choices."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in model.model_fields:
            valid = _valid_keys(model)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {dotted!r}{hint}; valid keys here: {', '.join(valid)}")
        sub = _submodel(model, key)
        if sub is not None and isinstance(value, dict):
            _check_keys(sub, value, dotted + ".", where)


def _validation_message(exc: ValidationError, where: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        got = err.get("input")
        lines.append(f"{where}: key {key!r}: {err['msg']} (got {got!r})")
    return "\n".join(lines)


def _parse_value(raw: str) -> Any:
    # int/float first: YAML 1.1 reads 2e-5 (no dot) as a string.
    text = raw.strip()
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        return text


def _split_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=2e-5")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    return key.split("."), raw


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML, so 2e-5, true, [a, b] work)."""
    path, raw = _split_override(item)
    return path, _parse_value(raw)


def _field_annotation(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation of the field a dotted path names, or None where the path leaves the models
    (a key of a dict field such as train.loss_params, or an unknown key: `build` reports those)."""
    for part in path[:-1]:
        sub = _submodel(model, part)
        if sub is None:
            return None
        model = sub
    field = model.model_fields.get(path[-1])
    return None if field is None else field.annotation


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    """`str | None` -> (str, NoneType); any other annotation stands alone."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _typed_value(annotation: Any, raw: str) -> Any:
    """The override value for a field of this annotation: parsed as YAML, except that a field that
    takes text keeps the text as written where YAML would read a number, a boolean or a date
    (`generate.prompt_version=2` is "2", `=1.10` is "1.10", not 1.1); a list of strings likewise."""
    value = _parse_value(raw)
    if annotation is None or value is None or isinstance(value, str):
        return value
    alternatives = _alternatives(annotation)
    if isinstance(value, list):
        if list[str] in alternatives:
            return yaml.load(raw.strip(), Loader=yaml.BaseLoader)  # every item as the text it was
        return value
    if not isinstance(value, dict) and str in alternatives and type(value) not in alternatives:
        return raw.strip()
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """`data` with each dotted override set. With the `model` the data is for, each value is typed
    for its field (`_typed_value`); without it, values are read as YAML alone."""
    data = dict(data)
    for item in overrides:
        path, raw = _split_override(item)
        value = _typed_value(_field_annotation(model, path), raw) if model is not None else _parse_value(raw)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return data


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top, got {type(data).__name__}")
    return data


def build(model: type[M], data: dict[str, Any], where: str = "config") -> M:
    _check_keys(model, data, "", where)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_validation_message(exc, where)) from None


def load(model: type[M], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> M:
    """Load `model` from an optional YAML file, then apply dotted overrides; errors name the source."""
    data = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    if overrides:
        data = apply_overrides(data, overrides, model)
        where = f"{where} + overrides" if path else "overrides"
    return build(model, data, where)


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE and --address on a command, and mark it as taking dotted KEY=VALUE overrides."""
    parser.add_argument("--config", metavar="FILE", help="YAML run config (see jobs/configs/)")
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS or embedded)")
    parser.set_defaults(accepts_overrides=True)


def changed_keys(old: Any, new: Any, defaults: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two dumped configs; a key the old one does not have
    (written by an older synrank) counts only when its new value is not its default: an option added
    later defaults to the behaviour before it."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = f"{path}.{k}" if path else k
            d = defaults.get(k) if isinstance(defaults, dict) else None
            if k not in old:
                if new[k] != d:
                    out.append(sub)
            elif k not in new:
                out.append(sub)
            else:
                out.extend(changed_keys(old[k], new[k], d, sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            d = defaults[i] if isinstance(defaults, list) and i < len(defaults) else None
            if d is None and isinstance(a, dict) and isinstance(b, dict):
                d = b  # a list item has no defaults of its own: a key it gained counts only if set
            out.extend(changed_keys(a, b, d, f"{path}[{i}]"))
        return out
    return [] if old == new else [path]
