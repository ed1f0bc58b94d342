"""How queries and passages are formatted for the encoder, below both `synrank.data` and
`synrank.encoder` (no torch here): whatever indexes or encodes a passage sees the same string.

Queries are encoded as written; the encoder adds its query and passage prefixes itself.
"""

from __future__ import annotations


def format_passage(title: str | None, text: str | None) -> str:
    """Title and text as one string, the BEIR convention: "title text" (no title: the text)."""
    title = (title or "").strip()
    text = (text or "").strip()
    return f"{title} {text}" if title else text
