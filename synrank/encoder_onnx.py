"""ONNX Runtime inference for the bi-encoder on CPUs (`EncoderConfig.backend`: onnx, onnx-int8).

Only the HF transformer runs in ONNX Runtime; tokenisation, prefixes, lengths, length-sorted
batches, pooling and normalisation stay `BiEncoder`'s own, so the backends differ only in how the
token vectors are computed.

Export. The transformer is exported once per model into synrank's cache directory,
``<cache>/onnx/<name>-<key>/model.onnx`` (int8: ``<name>-<key>-int8/``), where `key` hashes the
model's config and weights: a changed model (a new checkpoint under the same path) is exported
anew, an unchanged one never again. Each directory is written atomically under a file lock
(`model_files.convert_once`), so parallel Ray actors on a node export once and a crash leaves no
half export. int8 is `onnxruntime.quantization.quantize_dynamic` of an unfused float32 export (see
`_write_quantized`): int8 weights (a scale per output channel), activations quantised per batch at
run time.

The exporter is torch's TorchScript-based `torch.onnx.export(dynamo=False)`, which needs nothing
beyond torch and onnx (the dynamo exporter would add onnxscript). Three details matter:
  - the example batch is padded, so that the traced graph keeps the attention-mask path whatever
    transformers decides for a batch without padding;
  - tracing leaves the traced module computing wrong attention masks afterwards (transformers
    5.19), so a deep copy is exported and the encoder's own module stays untouched;
  - the copy is traced with eager attention, and ONNX Runtime's transformer optimizer then fuses
    the graph (Attention, SkipLayerNormalization, EmbedLayerNormalization, BiasGelu) for BERT-family
    models (float32 only). ONNX Runtime's own session optimizations do not fuse attention, and
    SDPA's traced graph (transformers' default) matches none of the optimizer's patterns: unfused,
    all-MiniLM-L6-v2 encoded about 1.2x slower than fused on this project's CPU box. Other
    architectures are exported unfused.

Inference only: training always runs the torch encoder; `backend` affects `BiEncoder.encode`.
`inference_dtype` does not apply here (the weights are float32, or int8 for onnx-int8).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from synrank.model_files import cache_dir, convert_once

# The encoder is passed in, never imported: synrank.encoder imports this module when a backend asks
# for it, so an import back would be a cycle. `encoder` is a `synrank.encoder.BiEncoder`.

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "onnx-int8")
OPSET = 17
# Part of the cache key: bump when the exported graph changes (inputs, outputs, exporter options).
EXPORT_FORMAT = 2
MODEL_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"


def require_onnxruntime(backend: str = "onnx"):
    """The onnxruntime module, or an ImportError that names the option that needs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            f"encoder.backend={backend!r} needs the package onnxruntime (pip install onnxruntime, part of the "
            "synrank[cpu] extra); or set encoder.backend=torch") from exc
    return onnxruntime


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"encoder.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


# ---------------------------------------------------------------------------------------------
# export, once per model


def model_key(model: torch.nn.Module) -> str:
    """A hash of the model's config and weights (as loaded: float32 unless the checkpoint says
    otherwise), and of the export format."""
    digest = hashlib.sha256(f"synrank-onnx:{EXPORT_FORMAT}:{OPSET}:".encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:20]


def export_dir(model_path: str, key: str, quantized: bool) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(Path(model_path).parts[-2:])) or "encoder"
    return cache_dir() / "onnx" / f"{name}-{key}{'-int8' if quantized else ''}"


class _Transformer(torch.nn.Module):
    """The HF model as a function of its inputs (in `input_names` order) to its token vectors."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).last_hidden_state


def _example_batch(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Two texts of different lengths: a padded batch (see the module doc).
    features = encoder.tokenizer(["a short example", "a longer example sentence, so that the first one is padded"],
                                 padding=True, return_tensors="pt")
    if bool(features["attention_mask"].all()):  # pragma: no cover - a tokenizer that pads nothing
        raise RuntimeError("ONNX export: the example batch is not padded")
    return features


# HF model types whose graphs ONNX Runtime's transformer optimizer fuses as "bert".
FUSED_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert",
                     "electra": "bert"}


def _fuse_transformer(path: Path, config) -> None:
    """Rewrites the export at `path` (a model type in FUSED_MODEL_TYPES) with ONNX Runtime's fused
    transformer ops."""
    require_onnxruntime("onnx")
    from onnxruntime.transformers.optimizer import optimize_model

    fused = optimize_model(str(path), model_type=FUSED_MODEL_TYPES[config.model_type],
                           num_heads=config.num_attention_heads, hidden_size=config.hidden_size, opt_level=1)
    fused.save_model_to_file(str(path))


def _write_export(encoder: torch.nn.Module, out: Path, fused: bool = True) -> None:
    features = _example_batch(encoder)
    names = [name for name in INPUTS if name in features]
    model = copy.deepcopy(encoder.model).float().eval()
    fused = fused and model.config.model_type in FUSED_MODEL_TYPES
    if fused:
        model.set_attn_implementation("eager")  # the attention pattern the optimizer fuses
    module = _Transformer(model, names)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("exporting %s to ONNX in %s (one time)", encoder.model_path, out)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings, about paths that do not apply
        torch.onnx.export(
            module, tuple(features[name] for name in names), str(tmp / MODEL_FILE), dynamo=False,
            input_names=names, output_names=[OUTPUT], opset_version=OPSET, do_constant_folding=True,
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*names, OUTPUT]},
        )
    if fused:
        _fuse_transformer(tmp / MODEL_FILE, model.config)
    encoder.model.config.to_json_file(str(tmp / "config.json"))  # written last: convert_once's marker
    os.replace(tmp, out)


def _write_quantized(encoder: torch.nn.Module, out: Path) -> None:
    """int8 from an unfused float32 export: quantised after fusion, all-MiniLM-L6-v2 lost 0.006-0.009
    nDCG@10 on CISI and MED against float32 (QAttention, or the MatMuls beside the fused attention),
    where quantising every projection of the unfused graph stays within 0.005."""
    require_onnxruntime("onnx-int8")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = out.with_name(out.name + ".float32")
    _write_export(encoder, source, fused=False)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log.info("quantising %s to int8 in %s (one time)", source, out)
    # Per-channel weight scales: with one scale per tensor, all-MiniLM-L6-v2's passage embeddings
    # fell to cosine 0.93 (mean) of float32's; per channel, 0.995.
    quantize_dynamic(str(source / MODEL_FILE), str(tmp / MODEL_FILE), weight_type=QuantType.QInt8,
                     per_channel=True)
    shutil.copyfile(source / "config.json", tmp / "config.json")
    shutil.rmtree(source, ignore_errors=True)
    os.replace(tmp, out)


def exported_model(encoder: torch.nn.Module, quantized: bool = False) -> Path:
    """The ONNX file of `encoder`'s transformer (int8 weights if `quantized`), exported if needed."""
    key = model_key(encoder.model)
    if quantized:
        target, write = export_dir(encoder.model_path, key, True), _write_quantized
    else:
        target, write = export_dir(encoder.model_path, key, False), _write_export
    return convert_once(Path(encoder.model_path), target, lambda _src, out: write(encoder, out)) / MODEL_FILE


# ---------------------------------------------------------------------------------------------
# inference


class OnnxTransformer:
    """An ONNX Runtime session (CPU) over an exported transformer: features -> token vectors."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, backend: str = "onnx") -> None:
        ort = require_onnxruntime(backend)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Several encoder actors share a node's CPUs: idle threads must sleep, not spin.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    @classmethod
    def for_encoder(cls, encoder: torch.nn.Module) -> "OnnxTransformer":
        backend = encoder.config.backend
        check_backend(backend)
        require_onnxruntime(backend)
        return cls(exported_model(encoder, quantized=backend == "onnx-int8"), backend=backend)

    def __call__(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(features[name].numpy(), dtype=np.int64) for name in self.input_names}
        (hidden,) = self.session.run([OUTPUT], feeds)
        return torch.from_numpy(hidden)
