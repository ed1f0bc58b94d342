"""The command line behaves as users expect.

- bad input is one line; an error from inside a library also shows its traceback; `-v` always does;
- a string field takes a value that looks like a number (`generate.prompt_version=2`), while number
  fields keep their numbers;
- resolving the packaged default model by its hub name leaves the process environment alone;
- no stage's command module imports the top-level `synrank.cli` (which assembles them).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synrank.cli import main
from synrank.config import ConfigError, GenerateConfig, SynrankConfig, apply_overrides, build, load

PACKAGE = Path(__file__).resolve().parents[1] / "synrank"
TRACEBACK = "Traceback (most recent call last)"


def _library_value_error(*args, **kwargs):
    np.arange(3).reshape(2, 2)  # numpy raises the ValueError, not synrank


@pytest.fixture
def missing(tmp_path: Path) -> str:
    return str(tmp_path / "no-such-collection")


def test_input_error_is_one_line(missing, capsys):
    assert main(["data", "inspect", missing]) == 2
    err = capsys.readouterr().err
    assert TRACEBACK not in err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("synrank data: error: ")
    assert missing in err


@pytest.mark.parametrize("where", ["before the command", "after its options"])
def test_verbose_shows_the_traceback_of_an_input_error(where, missing, capsys):
    argv = ["-v", "data", "inspect", missing] if where == "before the command" else ["data", "inspect", missing, "-v"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert TRACEBACK in err and "synrank data: error: " in err


def test_a_synrank_value_error_is_one_line(tmp_path, capsys):
    # a plain ValueError raised by synrank's own code (no --collection) is bad input, not a crash
    assert main(["evaluate", "--model", "bm25", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert TRACEBACK not in err and "no collection given" in err


def test_a_library_value_error_is_not_flattened(monkeypatch, missing, capsys):
    monkeypatch.setattr("synrank.data.inspect.inspect_path", _library_value_error)
    assert main(["data", "inspect", missing]) == 2  # the exit status of bad input stays
    err = capsys.readouterr().err
    assert TRACEBACK in err and "numpy" in err and "cannot reshape" in err


def test_command_line_verbose_traceback_in_a_subprocess(tmp_path):
    cmd = [sys.executable, "-m", "synrank", "-v", "data", "inspect", str(tmp_path / "nope")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and TRACEBACK in done.stderr, done.stderr[-2000:]
    quiet = subprocess.run([c for c in cmd if c != "-v"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and TRACEBACK not in quiet.stderr, quiet.stderr[-2000:]


# --- string fields and numbers -------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [("2", "2"), ("1.10", "1.10"), ("2e-5", "2e-5"), ("true", "true"),
                                           ("v2", "v2"), ("'3'", "3")])
def test_a_string_field_takes_a_number_as_written(raw, expected):
    cfg = load(SynrankConfig, None, [f"generate.prompt_version={raw}", f"annotate.prompt_version={raw}"])
    assert cfg.generate.prompt_version == expected and cfg.annotate.prompt_version == expected


def test_number_fields_keep_their_types():
    cfg = load(SynrankConfig, None, ["generate.max_tokens=64", "train.lr=2e-5", "generate.temperature=1",
                                     "generate.enforce_eager=true", "train.max_steps=null"])
    assert cfg.generate.max_tokens == 64 and isinstance(cfg.generate.max_tokens, int)
    assert cfg.train.lr == 2e-5 and cfg.generate.temperature == 1.0
    assert cfg.generate.enforce_eager is True and cfg.train.max_steps is None
    with pytest.raises(ConfigError, match="generate.max_tokens"):
        load(SynrankConfig, None, ["generate.max_tokens=many"])


def test_optional_and_list_string_fields():
    cfg = load(SynrankConfig, None, ["generate.engine_pool=7", "runtime.address=null",
                                     "pipeline.baselines=[bm25, 1.10, 3]", "train.loss_params.temperature=0.02"])
    assert cfg.generate.engine_pool == "7" and cfg.runtime.address is None
    assert cfg.pipeline.baselines == ["bm25", "1.10", "3"]
    assert cfg.train.loss_params == {"temperature": 0.02}  # a dict of Any: values stay as YAML reads them


def test_section_commands_type_their_overrides():
    # generate/evaluate/annotate build one section from overrides without its prefix
    data = apply_overrides({}, ["prompt_version=2", "max_tokens=32"], GenerateConfig)
    cfg = build(GenerateConfig, data)
    assert cfg.prompt_version == "2" and cfg.max_tokens == 32


# --- the packaged default model ------------------------------------------------------------------


def test_default_encoder_by_hub_name_leaves_the_environment_alone(monkeypatch):
    from synrank.models import DEFAULT_ENCODER_NAME, resolve_encoder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    path = Path(resolve_encoder(DEFAULT_ENCODER_NAME))
    assert (path / "config.json").is_file()
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ


def test_default_encoder_loads_without_a_hub_or_offline_mode():
    # a fresh process with no offline setting and a hub that cannot be reached
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    code = (
        "import os\n"
        "from synrank.config import EncoderConfig\n"
        "from synrank.encoder import BiEncoder\n"
        "from synrank.models import DEFAULT_ENCODER_NAME\n"
        "enc = BiEncoder(EncoderConfig(model=DEFAULT_ENCODER_NAME))\n"
        "assert 'HF_HUB_OFFLINE' not in os.environ and 'TRANSFORMERS_OFFLINE' not in os.environ\n"
        "print('loaded', type(enc.model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]


# --- layering ------------------------------------------------------------------------------------


def _imports_top_level_cli(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "synrank.cli":
            found.append(f"from synrank.cli import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.ImportFrom) and node.module == "synrank" and any(a.name == "cli" for a in node.names):
            found.append("from synrank import cli")
        elif isinstance(node, ast.Import) and any(a.name == "synrank.cli" for a in node.names):
            found.append("import synrank.cli")
    return found


def test_the_check_sees_each_form_of_import():
    for line in ("from synrank.cli import add_config_options", "from synrank import cli", "import synrank.cli",
                 "def f():\n    from synrank.cli import main\n"):
        assert _imports_top_level_cli(line), line
    assert not _imports_top_level_cli("from synrank.config import add_config_options\nimport synrank.data.cli\n")


def test_no_command_module_imports_the_top_level_cli():
    modules = sorted({*PACKAGE.glob("*_cli.py"), *PACKAGE.glob("*/cli.py")})
    assert len(modules) >= 8
    offenders = {str(p.relative_to(PACKAGE)): found for p in modules if (found := _imports_top_level_cli(p.read_text()))}
    assert not offenders, offenders


def test_the_command_line_starts_without_torch():
    """Building every subcommand's parser (what `synrank --help` and every error message need) no
    longer imports torch: the study config's default loss used to be checked at import, and that
    check builds the loss. About 0.6 s instead of 2.3 s here."""
    code = ("import sys; from synrank.cli import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
