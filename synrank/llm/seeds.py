"""Seeds that are the same in every process and run, for reproducible sampling and pairing."""

from __future__ import annotations

import hashlib


def stable_int(*parts: object) -> int:
    """A 63-bit integer from `parts`, the same in every process and run (unlike hash())."""
    blob = "\x1f".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") >> 1
