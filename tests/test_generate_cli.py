"""`synrank generate` and `synrank engines` argument handling (no Ray, no model)."""

from __future__ import annotations

import pytest

from synrank.cli import build_parser, main
from synrank.config import ConfigError
from synrank.generate.cli import load_config


def _args(argv):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.overrides = [a for a in extra if "=" in a]
    return args


def test_options_overrides_and_a_run_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("runtime:\n  num_cpus: 2\ngenerate:\n  max_tokens: 99\n  model: some/model\n  limit: 7\n")
    args = _args(["generate", "--queries", "q.jsonl", "--out", "o", "--config", str(config), "--limit", "3",
                  "generate.temperature=0.5", "max_retries=4", "runtime.num_cpus=1"])
    cfg, runtime = load_config(args)
    assert (cfg.queries, cfg.out, cfg.limit) == ("q.jsonl", "o", 3)  # options win over the file
    assert (cfg.max_tokens, cfg.model, cfg.temperature, cfg.max_retries) == (99, "some/model", 0.5, 4)
    assert runtime.num_cpus == 1


def test_a_generate_section_alone_and_the_address(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text("n_levels: 3\nlevel0_strategy: prompt\n")
    cfg, runtime = load_config(_args(["generate", "--config", str(config), "--address", "10.0.0.1:6379"]))
    assert cfg.n_levels == 3 and cfg.level0_strategy == "prompt"
    assert runtime.address == "10.0.0.1:6379"


def test_a_misspelt_key_names_the_valid_ones():
    with pytest.raises(ConfigError, match="max_token.*did you mean 'max_tokens'"):
        load_config(_args(["generate", "generate.max_token=5"]))


def test_missing_inputs_are_a_clean_error(capsys, tmp_path):
    assert main(["generate", "--out", str(tmp_path / "o")]) == 2
    assert "generate.queries is required" in capsys.readouterr().err


def test_engine_pools_need_a_cluster(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["engines", "list"]) == 2
    assert "need a running Ray cluster" in capsys.readouterr().err
