"""Model files on this node: the cache directory, and GGUF checkpoints converted once into
Hugging Face directories (vLLM and transformers read those; vLLM cannot read GGUF).

`synrank.models` (resolving model arguments) and `synrank.recipes` (named models installed on
demand) both use these; neither imports the other's module for them.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


class ModelNotFound(ValueError):
    pass


def cache_dir() -> Path:
    root = os.environ.get("SYNRANK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "synrank"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def convert_once(gguf: Path, out: Path, convert=None) -> Path:
    """`out`, converted from `gguf` by `convert` (default `convert_gguf`) unless it is already there.

    Several processes (Ray actors, test workers) may ask at once: they convert under a file lock
    beside `out`, and `convert_gguf` writes `out` atomically, so a crash leaves no half directory.
    """
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").exists():
            (convert or convert_gguf)(gguf, out)
    return out


def gguf_cache_name(gguf: Path) -> str:
    """The cache directory name of a GGUF file's conversion: its name, size, modification time and
    a hash of its first and last MiB, so that another file under the same name (a re-download, a
    different fine-tune of the same size) never reuses a stale conversion."""
    st = gguf.stat()
    digest = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(gguf, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return f"{gguf.stem}-{st.st_size}-{digest.hexdigest()[:16]}-hf"
