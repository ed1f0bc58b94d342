"""The label matrix of an in-batch score matrix: which candidate is which grade for which query.

Every query of a batch scores every passage slot of the batch: ``N = Q * K`` slots, query-major,
then position in the query's group. Label of query ``i`` for slot ``j``: the grade when ``j`` is one
of ``i``'s own passages, else 0 (an in-batch negative). The mask removes padding slots, copies of
``i``'s own passages that sit in another query's group (the same document must not count as its
negative; copies are found by document key), passages of another group that were written for ``i``
(by origin key) or are judged relevant to ``i`` (by known-positive keys), and, with ``in_batch_negatives=False``, every slot outside ``i``'s own group.

Used by synrank's training loop (`synrank.train.collate` describes its batches) and by the
sentence-transformers adapter (`synrank.st`), so both train on the same labels.
"""

from __future__ import annotations

import torch


def label_matrices(grades: torch.Tensor, valid: torch.Tensor, doc_keys: torch.Tensor, *,
                   in_batch_negatives: bool = True, query_keys: torch.Tensor | None = None,
                   origin_keys: torch.Tensor | None = None, known_keys: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (float) and mask (bool), each ``[Q, Q*K]``, from the ``[Q, K]`` grades, valid slots,
    document keys and (optional) origin keys, the ``[Q]`` query keys and the ``[Q, M]`` keys of
    each query's known positives (0-padded), of the global batch (see the module doc); on the
    device of the inputs."""
    q, k = grades.shape
    own = torch.eye(q, dtype=torch.bool, device=grades.device).repeat_interleave(k, dim=1)
    labels = own * grades.reshape(1, q * k)
    slot_valid = valid.reshape(1, q * k)
    if not in_batch_negatives:
        return labels, own & slot_valid
    # [Q, K, N]: own passage j of query i has the key of slot n; any j makes slot n a copy of i's own
    same_key = doc_keys.reshape(q, k, 1) == doc_keys.reshape(1, 1, q * k)
    copy_of_own = (same_key & valid.reshape(q, k, 1)).any(dim=1)
    if query_keys is not None and origin_keys is not None:
        # a passage written for query i in another query's group (a swap passage): never i's negative
        slot_origins = origin_keys.reshape(1, q * k)
        copy_of_own |= (slot_origins == query_keys.reshape(q, 1)) & (slot_origins != 0)
    if known_keys is not None:
        # a passage judged relevant to query i that was not sampled into i's group
        slot_keys = doc_keys.reshape(1, 1, q * k)
        copy_of_own |= ((known_keys.unsqueeze(-1) == slot_keys) & (known_keys != 0).unsqueeze(-1)).any(dim=1)
    return labels, slot_valid & (own | ~copy_of_own)
