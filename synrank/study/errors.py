"""A failed trial's error in one line, for ``status.json``, ``error.txt`` and the report.

The driver records what Tune says a trial failed with and the report shows it; both read the
same summary of the (often Ray-wrapped) traceback: the innermost exception, ``Type: message``.
"""

from __future__ import annotations

import re

_EXC_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Fault|Exit|Interrupt)): ?(.*)$")


def summarize_error(text: str) -> str:
    """The innermost exception line of a (Ray-wrapped) traceback: ``Type: message`` (with the next
    line when the message continues there)."""
    lines = [ln.rstrip() for ln in (text or "").splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        m = _EXC_LINE.match(lines[i])
        if m and not m.group(1).startswith("RayTaskError"):
            msg = m.group(2).strip()
            if (not msg or msg.endswith(":")) and i + 1 < len(lines) and lines[i + 1].strip():
                msg = f"{msg} {lines[i + 1].strip()}".strip()
            return f"{m.group(1).rsplit('.', 1)[-1]}: {msg}" if msg else m.group(1).rsplit(".", 1)[-1]
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    return first[:300]
