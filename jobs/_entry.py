"""Shared body of the job entrypoints: `python jobs/<stage>.py ARGS` runs `synrank <stage> ARGS`.

Under `ray job submit --working-dir .` the uploaded directory is the job's cwd and the driver joins
the cluster through RAY_ADDRESS; the uploaded synrank is put first on the path so the job runs the
code that was submitted, not whatever is installed on the head node.
"""

import sys
from pathlib import Path


def run(stage: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from synrank.cli import main

    raise SystemExit(main([stage, *sys.argv[1:]]))
