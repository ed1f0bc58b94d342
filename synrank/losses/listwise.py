"""List-wise losses: a predicted distribution over each query's candidates against a graded target.

For query :math:`i` with valid candidates :math:`V`: :math:`q = \\mathrm{softmax}_V(s_i / \\tau)`
and :math:`t = \\mathrm{softmax}_V(y_i / \\tau_t)`. Every query with a non-empty :math:`V`
contributes (a query whose labels are all 0 has a uniform target); the loss is the mean over them,
and 0 (attached to the graph) when none contributes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import (
    LossInputs,
    RankingLoss,
    check_at_least,
    masked_log_softmax,
    masked_softmax,
    mean_over_contributing,
)


#: ``wasserstein`` aggregates the mass per distinct grade when the batch has at most this many
#: distinct label values (graded data has a handful); otherwise it transports per candidate.
MAX_AGGREGATED_GRADES = 64


class KLDivergenceLoss(RankingLoss):
    r"""KL divergence from the graded target to the predicted softmax (ListNet-style).

    .. math::

        \ell_i = \mathrm{KL}(t \,\|\, q) = \sum_{j \in V} t_j \,(\log t_j - \log q_j),
        \qquad q = \mathrm{softmax}_V(z),\; t = \mathrm{softmax}_V(y_i / \tau_t)

    Equal, up to the target's entropy (a constant), to ListNet's top-one cross-entropy.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        target_temperature: :math:`\tau_t`, divides the labels before their softmax (default 1.0);
            smaller values sharpen the target towards the highest grade.
        positive_threshold: accepted for a uniform configuration across losses; unused.

    References:
        - Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet),
          ICML 2007.
        - Used as the list-wise baseline to Paper A: "Beyond Contrastive Learning: Synthetic Data
          Enables List-wise Training with Multiple Levels of Relevance", arXiv 2503.23239.

    Requirements:
        1. Graded labels (any number of levels); all-zero rows give a uniform target.

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("kl", temperature=0.05, target_temperature=1.0)
        loss = loss_fn(scores, labels)
    """

    name = "kl"

    def compute(self, batch: LossInputs) -> Tensor:
        log_q = masked_log_softmax(batch.z, batch.valid)
        log_t = masked_log_softmax(batch.labels / self.target_temperature, batch.valid)
        t = torch.where(batch.valid, log_t.exp(), torch.zeros_like(log_t))
        per_query = (t * (log_t - log_q)).sum(dim=1)
        return mean_over_contributing(per_query, batch.nonempty, batch)


class WassersteinLoss(RankingLoss):
    r"""Per-query optimal transport between the predicted and the target distribution on the grades.

    :math:`q` and :math:`t` are two distributions over the candidates of query :math:`i`; moving
    mass from candidate :math:`a` to candidate :math:`b` costs :math:`|y_{ia} - y_{ib}|^p`. The loss
    is the optimal transport cost

    .. math::

        \ell_i = W_p^p(q, t) = \min_{\pi \in \Pi(q, t)} \sum_{a, b \in V} \pi_{ab}\,|y_{ia} - y_{ib}|^p

    which equals the 1-D Wasserstein distance (to the power :math:`p`) between the two
    distributions pushed onto the grade axis, :math:`\int_0^1 |F_q^{-1}(u) - F_t^{-1}(u)|^p du`.
    It is computed with POT's ``ot.wasserstein_1d`` on the torch backend, so gradients flow to
    the scores through :math:`q`: when the batch has at most ``MAX_AGGREGATED_GRADES`` (64)
    distinct label values the support is those grades and the weights are the masses
    :math:`q` and :math:`t` put on each grade (the push-forward itself); otherwise the support is
    the candidates' labels and the weights are :math:`q` and :math:`t`. Both give the same value.
    Moving probability between two candidates of the same grade is free: the loss only asks the
    model to put the right mass on each relevance level, and penalises mass on a far grade more than
    on a near one.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        target_temperature: :math:`\tau_t`, divides the labels before their softmax (default 1.0).
        p: exponent of the ground cost, >= 1 (default 1).
        positive_threshold: accepted for a uniform configuration across losses; unused.

    References:
        - Paper A: "Beyond Contrastive Learning: Synthetic Data Enables List-wise Training with
          Multiple Levels of Relevance", arXiv 2503.23239 (the Wasserstein, graded-target setting;
          its released code uses the batch-level form, see ``sycl_w2``).
        - Flamary et al., "POT: Python Optimal Transport", JMLR 22(78), 2021.

    Requirements:
        1. Graded labels with at least two distinct grades among a query's candidates (otherwise
           the loss is 0 for that query: all mass sits on one grade).

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("wasserstein", temperature=0.05, target_temperature=1.0, p=1)
        loss = loss_fn(scores, labels)
    """

    name = "wasserstein"
    extra_params = ("p",)

    def __init__(self, *, p: float = 1, **shared: float) -> None:
        super().__init__(**shared)
        p_checked = check_at_least("p", p, 1.0)
        self.p = int(p_checked) if p_checked.is_integer() else p_checked

    def compute(self, batch: LossInputs) -> Tensor:
        valid = batch.valid
        q = masked_softmax(batch.z, valid)  # masked candidates: weight 0
        t = masked_softmax(batch.labels / self.target_temperature, valid)
        grades, index = torch.unique(batch.labels, sorted=True, return_inverse=True)
        if grades.numel() <= MAX_AGGREGATED_GRADES:
            # Push both distributions onto the grade axis first: the mass of every distinct grade,
            # [B, G]. Grades absent from a query (or only masked there) get weight 0 in both, which
            # leaves the transport cost unchanged. Same value as the per-candidate route, without
            # sorting N candidates per query.
            n_rows = q.shape[0]
            q = q.new_zeros(n_rows, grades.numel()).scatter_add(1, index, q)
            t = t.new_zeros(n_rows, grades.numel()).scatter_add(1, index, t)
            values = grades.unsqueeze(1).expand(-1, n_rows)
        else:
            # Per-candidate route (many distinct label values, e.g. continuous teacher scores).
            # Masked candidates carry weight 0; their grade is set to the row's highest valid grade
            # so that a rounding overshoot of the last cumulative weight (POT clips the quantile
            # index to the last support point) lands on a valid grade.
            labels = batch.labels
            top = torch.where(valid, labels, torch.zeros_like(labels)).amax(dim=1, keepdim=True)
            values = torch.where(valid, labels, top)
            # u and v share their support: sort it once and let POT skip its two sorts.
            order = values.argsort(dim=1)
            values = values.gather(1, order).T
            q, t = q.gather(1, order), t.gather(1, order)
        import ot  # here, not at the top: POT pulls in scikit-learn, about 2 s in every process that imports the losses

        # POT batches over trailing dimensions: support along dim 0, queries along dim 1.
        per_query = ot.wasserstein_1d(values, values, q.T, t.T, p=self.p, require_sort=False)
        return mean_over_contributing(per_query, batch.nonempty, batch)
