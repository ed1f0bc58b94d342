"""Training objectives as pure functions of (scores, labels, mask); the contract is shared/LOSSES.md.

>>> from synrank.losses import build, available
>>> loss_fn = build("lsepair", temperature=0.05)
>>> value = loss_fn(scores, labels, mask=None)          # doctest: +SKIP

``scores`` [B, N] are query-candidate similarities over the (gathered) batch, ``labels`` [B, N]
the graded relevance (>= 0), ``mask`` an optional bool [B, N] of the candidates that count.
Losses: ``infonce``, ``rand1lh``, ``jointlh``, ``summarglh``, ``lsepair`` (positive-based),
``kl``, ``wasserstein`` (per-query list-wise), ``sycl_w2`` (batch-level Fréchet).
"""

from ._common import RankingLoss, validate
from .infonce import InfoNCELoss
from .listwise import KLDivergenceLoss, WassersteinLoss
from .multipositive import JointLHLoss, LSEPairLoss, Rand1LHLoss, SumMargLHLoss
from .registry import available, build, loss_class, params
from .sycl import SyCLW2Loss

__all__ = [
    "InfoNCELoss",
    "JointLHLoss",
    "KLDivergenceLoss",
    "LSEPairLoss",
    "Rand1LHLoss",
    "RankingLoss",
    "SumMargLHLoss",
    "SyCLW2Loss",
    "WassersteinLoss",
    "available",
    "build",
    "loss_class",
    "params",
    "validate",
]
