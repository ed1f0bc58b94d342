"""Multi-positive objectives of Paper B: JointLH, SumMargLH, LSEPair, Rand1LH.

Paper B: "Training Dense Retrievers with Multiple Positive Passages", arXiv 2602.12727.

Notation shared by the classes below, for query :math:`i`: :math:`V` is the set of valid
candidates (``mask`` True), :math:`z_j = s_{ij} / \\tau`, :math:`P = \\{j \\in V :
y_{ij} \\ge \\theta\\}` the positives (:math:`\\theta` = ``positive_threshold``) and
:math:`N = V \\setminus P` the negatives. Queries with an empty :math:`P` (or empty :math:`V`) do
not contribute; the loss is the mean over the contributing queries, and 0 (attached to the graph)
when none contributes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ._common import (
    LossInputs,
    RankingLoss,
    check_bool,
    check_seed,
    masked_logsumexp,
    mean_over_contributing,
)


def _positives(batch: LossInputs, threshold: float) -> tuple[Tensor, Tensor]:
    """(P, N) as bool [B, N]."""
    pos = batch.valid & (batch.labels >= threshold)
    return pos, batch.valid & ~pos


class JointLHLoss(RankingLoss):
    r"""Joint likelihood of all positives (JointLH).

    Every positive is treated as the target of its own softmax over all valid candidates:

    .. math::

        \ell_i = -\sum_{p \in P} \log \frac{\exp(z_p)}{\sum_{j \in V} \exp(z_j)}
               = \sum_{p \in P} \big(\mathrm{LSE}_V(z) - z_p\big)

    divided by :math:`|P|` when ``normalize=True``. The other positives stay in the denominator,
    so positives compete with each other.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        positive_threshold: :math:`\theta`, the smallest label that counts as a positive (default 1.0).
        normalize: divide each query's sum by its number of positives (default False).
        target_temperature: accepted for a uniform configuration across losses; unused.

    References:
        - Paper B: "Training Dense Retrievers with Multiple Positive Passages", arXiv 2602.12727.

    Requirements:
        1. Labels where at least some queries have one or more candidates at or above the threshold.

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("jointlh", temperature=0.05, normalize=True)
        loss = loss_fn(scores, labels, mask)
    """

    name = "jointlh"
    extra_params = ("normalize",)

    def __init__(self, *, normalize: bool = False, **shared: float) -> None:
        super().__init__(**shared)
        self.normalize = check_bool("normalize", normalize)

    def compute(self, batch: LossInputs) -> Tensor:
        pos, _ = _positives(batch, self.positive_threshold)
        lse_v, _ = masked_logsumexp(batch.z, batch.valid)
        terms = torch.where(pos, lse_v.unsqueeze(1) - batch.z, torch.zeros_like(batch.z))
        per_query = terms.sum(dim=1)
        n_pos = pos.sum(dim=1)
        if self.normalize:
            per_query = per_query / n_pos.clamp(min=1).to(per_query.dtype)
        return mean_over_contributing(per_query, n_pos > 0, batch)


class SumMargLHLoss(RankingLoss):
    r"""Summed marginal likelihood of the positives (SumMargLH).

    The probability mass the softmax over :math:`V` puts on the positive set, as one event:

    .. math::

        \ell_i = -\log \sum_{p \in P} \frac{\exp(z_p)}{\sum_{j \in V} \exp(z_j)}
               = \mathrm{LSE}_V(z) - \mathrm{LSE}_P(z)

    It is satisfied as soon as the positives together dominate, without pushing positives apart.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        positive_threshold: :math:`\theta`, the smallest label that counts as a positive (default 1.0).
        target_temperature: accepted for a uniform configuration across losses; unused.

    References:
        - Paper B: "Training Dense Retrievers with Multiple Positive Passages", arXiv 2602.12727.

    Requirements:
        1. Labels where at least some queries have one or more candidates at or above the threshold.

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("summarglh", temperature=0.05)
        loss = loss_fn(scores, labels)
    """

    name = "summarglh"

    def compute(self, batch: LossInputs) -> Tensor:
        pos, _ = _positives(batch, self.positive_threshold)
        lse_v, _ = masked_logsumexp(batch.z, batch.valid)
        lse_p, has_pos = masked_logsumexp(batch.z, pos)
        return mean_over_contributing(lse_v - lse_p, has_pos, batch)


class LSEPairLoss(RankingLoss):
    r"""Log-sum-exp pairwise loss (LSEPair): every negative against every positive.

    .. math::

        \ell_i = \log\Big(1 + \sum_{p \in P} \sum_{n \in N} \exp(z_n - z_p)\Big)
               = \mathrm{softplus}\big(\mathrm{LSE}_N(z) + \mathrm{LSE}_P(-z)\big)

    and :math:`\ell_i = 0` when :math:`N` is empty (such a query still counts in the mean). Only
    positive-negative pairs enter, so positives do not compete with each other; the loss tends to
    0 as every positive outscores every negative by a growing margin.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        positive_threshold: :math:`\theta`, the smallest label that counts as a positive (default 1.0).
        target_temperature: accepted for a uniform configuration across losses; unused.

    References:
        - Paper B: "Training Dense Retrievers with Multiple Positive Passages", arXiv 2602.12727.
        - Li et al., "Improving Pairwise Ranking for Multi-label Image Classification" (LSEP),
          CVPR 2017.

    Requirements:
        1. Labels where at least some queries have one or more candidates at or above the threshold.

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("lsepair", temperature=0.05)
        loss = loss_fn(scores, labels)
    """

    name = "lsepair"

    def compute(self, batch: LossInputs) -> Tensor:
        pos, neg = _positives(batch, self.positive_threshold)
        lse_n, has_neg = masked_logsumexp(batch.z, neg)
        lse_p_neg, has_pos = masked_logsumexp(-batch.z, pos)
        inner = torch.where(has_neg, lse_n + lse_p_neg, torch.zeros_like(lse_n))
        per_query = torch.where(has_neg, F.softplus(inner), torch.zeros_like(inner))
        return mean_over_contributing(per_query, has_pos, batch)


class Rand1LHLoss(RankingLoss):
    r"""One random positive per query (Rand1LH).

    For each query one positive :math:`r` is drawn uniformly from :math:`P`; the other positives
    are left out of the softmax, which runs over :math:`V \setminus (P \setminus \{r\})`:

    .. math::

        \ell_i = -\log \frac{\exp(z_r)}{\exp(z_r) + \sum_{n \in N} \exp(z_n)}
               = \mathrm{LSE}_{N \cup \{r\}}(z) - z_r

    The draw uses a ``torch.Generator`` seeded with ``seed`` that advances on every call (one
    uniform number per query row, drawn for every row, on the CPU), so the same seed and the same
    sequence of batch sizes give the same positives. With ``seed=None`` the draw uses torch's
    global generator (set by ``torch.manual_seed``). The generator's state is part of the module's
    ``state_dict`` (as extra state), so a resumed run continues the sequence. After a call,
    ``last_positive`` holds the drawn column per query (-1 where the query did not contribute).

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        positive_threshold: :math:`\theta`, the smallest label that counts as a positive (default 1.0).
        seed: seed of the private generator, or None for torch's global generator (default None).
        target_temperature: accepted for a uniform configuration across losses; unused.

    References:
        - Paper B: "Training Dense Retrievers with Multiple Positive Passages", arXiv 2602.12727.

    Requirements:
        1. Labels where at least some queries have one or more candidates at or above the threshold.

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("rand1lh", temperature=0.05, seed=13)
        loss = loss_fn(scores, labels)
        loss_fn.last_positive          # the positives drawn for this batch
    """

    name = "rand1lh"
    extra_params = ("seed",)

    def __init__(self, *, seed: int | None = None, **shared: float) -> None:
        super().__init__(**shared)
        self.seed = check_seed("seed", seed)
        self._generator: torch.Generator | None = None
        if self.seed is not None:
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(self.seed)
        self.last_positive: Tensor | None = None

    def get_extra_state(self) -> dict[str, object]:
        state = None if self._generator is None else self._generator.get_state()
        return {"seed": self.seed, "generator_state": state}

    def set_extra_state(self, state: dict[str, object]) -> None:
        gen_state = state.get("generator_state")
        if gen_state is not None:
            if self._generator is None:
                self._generator = torch.Generator(device="cpu")
            self._generator.set_state(gen_state)

    def draw(self, pos: Tensor) -> Tensor:
        """Column of one uniformly drawn positive per row of the bool matrix ``pos`` [B, N]
        (0 for rows without a positive). Advances the generator by one number per row."""
        u = torch.rand(pos.shape[0], generator=self._generator, dtype=torch.float64)
        u = u.to(pos.device)
        count = pos.sum(dim=1)
        # k-th positive (0-based) in column order, k uniform in {0, ..., |P| - 1}.
        k = torch.minimum((u * count).floor().long(), (count - 1).clamp(min=0))
        rank = pos.long().cumsum(dim=1)
        hit = pos & (rank == (k + 1).unsqueeze(1))
        return hit.to(torch.uint8).argmax(dim=1)

    def compute(self, batch: LossInputs) -> Tensor:
        pos, neg = _positives(batch, self.positive_threshold)
        r = self.draw(pos).unsqueeze(1)
        has_pos = pos.any(dim=1)
        chosen = torch.zeros_like(pos).scatter_(1, r, True) & pos
        lse, _ = masked_logsumexp(batch.z, neg | chosen)
        per_query = lse - batch.z.gather(1, r).squeeze(1)
        self.last_positive = torch.where(has_pos, r.squeeze(1), torch.full_like(r.squeeze(1), -1))
        return mean_over_contributing(per_query, has_pos, batch)
