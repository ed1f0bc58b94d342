#!/usr/bin/env bash
# The GPU device check (bench/gpu_check.py says what it measures).
#
#   bash bench/gpu_check.sh prepare     # on a machine with the project installed (make install)
#   bash bench/gpu_check.sh [ARGS...]   # on the GPU machine, repository root; ARGS go to gpu_check.py
#
# `prepare` writes .gpucheck/ (git-ignored, about 37 MB): the wheels a bare GPU image lacks for
# synrank's loop (pydantic, POT; datasets for the sentence-transformers trainer), Cranfield's human
# training groups, and all-MiniLM-L6-v2's config and tokenizer without its weights. The run installs
# those wheels into a temporary directory (no network needed) and uses the machine's own torch,
# transformers and sentence-transformers. SYNRANK_SRC points at another synrank source tree (default:
# this one); GPU_CHECK_TIMEOUT bounds the run (default 480 s).
set -euo pipefail
cd "$(dirname "$0")/.."
prepared=${GPU_CHECK_PREPARED:-.gpucheck}

if [[ "${1:-}" == prepare ]]; then
    python=${PYTHON:-.venv/bin/python}
    mkdir -p "$prepared/wheels"
    for spec in pydantic pydantic_core annotated-types typing-inspection POT datasets dill multiprocess; do
        version=$("$python" -m pip show "$spec" 2>/dev/null | sed -n 's/^Version: //p')
        [[ -n "$version" ]] || { echo "gpu_check prepare: $spec is not installed in $python" >&2; exit 2; }
        "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d "$prepared/wheels" "$spec==$version" 2>&1 | grep -v '^WARNING: Location' || true
    done
    "$python" - "$prepared" <<'EOF'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
from synrank.models import resolve_encoder
from train import build_groups  # bench/train.py: the same Cranfield groups as the CPU benchmark

out = Path(sys.argv[1])
source = Path(resolve_encoder("default"))
encoder = out / "encoder"
shutil.rmtree(encoder, ignore_errors=True)
shutil.copytree(source, encoder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "*.h5", "onnx", "openvino"))
n = build_groups(Path("../shared/data"), 4, str(out / "groups.parquet"))
print(f"gpu_check prepare: {n} groups, encoder config from {source}, wheels in {out / 'wheels'}")
EOF
    du -sh "$prepared"
    exit 0
fi

[[ -f "$prepared/groups.parquet" ]] || { echo "gpu_check: run 'bash bench/gpu_check.sh prepare' first" >&2; exit 2; }
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$prepared"/wheels/*.whl
export PYTHONPATH="${SYNRANK_SRC:-$PWD}:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout "${GPU_CHECK_TIMEOUT:-480}" python3 bench/gpu_check.py --prepared "$prepared" "$@"
