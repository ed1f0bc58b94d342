"""Level-0 strategy "swap": the unrelated passage of a query is written for another query.

Small generators do not write unrelated text when asked to (SmolLM2-135M's "unrelated" passages
still answer the query), so a level-0 passage that cannot fail is one written - at the top level -
for a different, randomly paired query. The partner is never the query itself: it has another
query id and another text (after case and whitespace normalisation), so duplicate queries under
different ids are not paired either.

The pairing is a pure function of (seed, query id, the queries up to the end of its shard):
reruns pair the same way, and appending queries (a larger `limit`) keeps the pairs of the shards
that were already there.
"""

from __future__ import annotations

import random
from typing import Sequence

from synrank.llm.seeds import stable_int


def _norm(text: str) -> str:
    return " ".join(str(text).casefold().split())


def swap_partners(query_ids: Sequence[str], texts: Sequence[str], seed: int = 0, *,
                  block: int | None = None, window: int = 64) -> list[int | None]:
    """For each query, the index of its partner in the list, or None when no other query qualifies.

    `block` (the shard size): draw partners of a query from the `max(window, block)` queries that end
    with its block, so that appending queries to the list (a larger `limit`) never changes the
    pairing, hence the content, of a block already generated. Without `block`, from the whole list.
    """
    n = len(query_ids)
    if len(texts) != n:
        raise ValueError(f"{n} query ids but {len(texts)} texts")
    norms = [_norm(t) for t in texts]
    partners: list[int | None] = []
    for i, qid in enumerate(query_ids):
        if block is None:
            lo, hi = 0, n
        else:
            hi = min(n, (i // block + 1) * block)
            lo = max(0, hi - max(window, block))
        if block is not None and not any(norms[j] != norms[i] for j in range(lo, hi)):
            # a run of duplicates: the nearest query with another text, earlier first - a choice
            # that appending queries does not change
            def other(j: int) -> bool:
                return norms[j] != norms[i] and query_ids[j] != qid

            near = next((j for j in range(lo - 1, -1, -1) if other(j)), None)
            if near is None:
                near = next((j for j in range(hi, n) if other(j)), None)
            partners.append(near)
            continue
        partners.append(_draw(query_ids, norms, i, lo, hi, random.Random(stable_int("swap", seed, qid))))
    return partners


def _draw(query_ids: Sequence[str], norms: Sequence[str], i: int, lo: int, hi: int, rng: random.Random) -> int | None:
    def ok(j: int) -> bool:
        return query_ids[j] != query_ids[i] and norms[j] != norms[i]

    for _ in range(32):  # almost always the first draw
        j = rng.randrange(lo, hi)
        if ok(j):
            return j
    start = rng.randrange(lo, hi)  # many duplicates of this text: scan from a random start
    for step in range(hi - lo):
        j = lo + (start - lo + step) % (hi - lo)
        if ok(j):
            return j
    return None
