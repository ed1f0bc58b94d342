"""InfoNCE with one positive per query: the conventional contrastive objective."""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import LossInputs, RankingLoss, masked_logsumexp, mean_over_contributing


class InfoNCELoss(RankingLoss):
    r"""InfoNCE (multiple-negatives ranking loss) with a single positive per query.

    For query :math:`i` with valid candidates :math:`V` (``mask`` True) and
    :math:`z_j = s_{ij} / \tau`, the positive :math:`p^*` is the candidate with the highest label
    (the first one on ties), used only if its label is ``>= positive_threshold``. Every other
    candidate, other positives included, is a negative:

    .. math::

        \ell_i = -\log \frac{\exp(z_{p^*})}{\sum_{j \in V} \exp(z_j)}
               = \mathrm{LSE}_{j \in V}(z_j) - z_{p^*}

    The loss is the mean of :math:`\ell_i` over the queries that have a non-empty :math:`V` and a
    :math:`p^*` at or above the threshold; 0 (attached to the graph) when there is none.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05, i.e. sentence-transformers'
            ``scale=20`` for cosine similarities).
        positive_threshold: the smallest label that counts as a positive (default 1.0).
        target_temperature: accepted for a uniform configuration across losses; unused.

    References:
        - van den Oord et al., "Representation Learning with Contrastive Predictive Coding",
          arXiv 1807.03748 (2018).
        - Henderson et al., "Efficient Natural Language Response Suggestion for Smart Reply",
          arXiv 1705.00652 (2017) (in-batch negatives).

    Requirements:
        1. Graded labels in which each query's best candidate is its positive.

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("infonce", temperature=0.05)
        loss = loss_fn(scores, labels)      # scores = q @ p.T over the gathered batch
        loss.backward()
    """

    name = "infonce"

    def compute(self, batch: LossInputs) -> Tensor:
        z, labels, valid = batch.z, batch.labels, batch.valid
        # Labels are >= 0, so -1 ranks masked candidates below every valid one.
        ranked = torch.where(valid, labels, torch.full_like(labels, -1.0))
        best = ranked.argmax(dim=1, keepdim=True)  # first maximal index on ties
        best_label = ranked.gather(1, best).squeeze(1)
        contributes = batch.nonempty & (best_label >= self.positive_threshold)
        lse_v, _ = masked_logsumexp(z, valid)
        per_query = lse_v - z.gather(1, best).squeeze(1)
        return mean_over_contributing(per_query, contributes, batch)
