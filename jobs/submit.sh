#!/usr/bin/env bash
# `ray job submit` with jobs/runtime_env.yaml and, when set in this shell, HF_TOKEN (for gated
# models; it reaches the driver and, through the job's runtime environment, every worker).
#   jobs/submit.sh --address http://HEAD:8265 -- python -m synrank pipeline --config jobs/configs/msmarco-gpu.yaml
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_json="$(python - "$here/runtime_env.yaml" <<'PY'
import json, os, sys
import yaml
env = yaml.safe_load(open(sys.argv[1])) or {}
for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
    if os.environ.get(name):
        env.setdefault("env_vars", {})[name] = os.environ[name]
print(json.dumps(env))
PY
)"
exec ray job submit --runtime-env-json "$env_json" "$@"
