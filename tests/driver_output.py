"""Reading what a driver script printed: Ray writes its own lines (autoscaler notices, worker logs)
to the same stdout, before or after the driver's result, so the result is found by its shape."""
from __future__ import annotations

import json


def last_json_object(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"the driver printed no JSON object:\n{stdout[-3000:]}")
