"""The README's commands are the ones CI and the Makefile run, and its CLI reference is what the
CLI prints (regenerate with `.venv/bin/python scripts/cli_reference.py --write`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _readme_commands() -> list[str]:
    block = README.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_gives_the_two_commands_ci_and_make_use():
    assert _readme_commands() == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), "CI must run exactly the README's test command"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo: install\n\t\$\(PY\) -m synrank pipeline --config jobs/configs/demo.yaml$", makefile, re.M)
    assert re.search(r"^test: install\n\tbash scripts/test.sh$", makefile, re.M)


def test_cli_reference_matches_the_cli():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    assert cli_reference.block() in README, "README's CLI reference is stale: run scripts/cli_reference.py --write"


def test_bench_table_matches_the_results():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import readme_table
    finally:
        sys.path.pop(0)
    assert readme_table.block() in README, "README's speed table is stale: run bench/readme_table.py --write"


def test_every_config_the_readme_names_loads():
    from synrank.config import SynrankConfig, load

    for name in sorted(set(re.findall(r"jobs/configs/([\w-]+)\.yaml", README))):
        if name.startswith("study"):
            continue  # study configs have their own model, tested in tests/test_study*.py
        load(SynrankConfig, REPO / "jobs" / "configs" / f"{name}.yaml")


def test_python_m_synrank_help_runs():
    out = subprocess.run([sys.executable, "-m", "synrank", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "pipeline" in out.stdout
