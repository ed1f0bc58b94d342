#!/usr/bin/env bash
# The test suite: every test runs, GPU-only paths excepted (they are marked and say why).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
# Models converted once (the SmolLM2 GGUF -> safetensors) are cached here between runs.
export SYNRANK_CACHE=${SYNRANK_CACHE:-$HOME/.cache/synrank}
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=1800 --durations=40 "$@"
