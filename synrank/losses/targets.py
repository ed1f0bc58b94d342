"""How much of a graded target falls on non-relevant candidates.

The list-wise losses (``kl``, ``wasserstein``, ``sycl_w2``) aim at t = softmax(labels / τ_t) over
every candidate of the gathered batch (shared/LOSSES.md). Another query's passages are grade 0, so
with B queries of k passages a query has B·k − k of them besides its own group, and each gets
weight exp(0) = 1 against exp(grade / τ_t) for its own passages. At τ_t = 1, 16 queries of 4
passages and grades 3/2/1/0, two thirds of the target sits on grade 0: the loss then asks the model
to give non-relevant candidates two thirds of its softmax, pulling them towards the query. The
share depends on the batch shape, so it is checked for the run's own before training.
"""

from __future__ import annotations

import math
from typing import Sequence

#: losses whose target is softmax(labels / target_temperature) over the candidates
GRADED_TARGET_LOSSES = ("kl", "wasserstein", "sycl_w2")


def target_mass_on_nonrelevant(group_grades: Sequence[float], n_candidates: int, target_temperature: float) -> float:
    """The share of softmax(labels / `target_temperature`) on grade-0 candidates, for a query whose
    own passages have `group_grades` among `n_candidates` candidates (the rest grade 0)."""
    if n_candidates < len(group_grades):
        raise ValueError(f"n_candidates={n_candidates} is smaller than the group ({len(group_grades)} passages)")
    grades = [float(g) for g in group_grades] + [0.0] * (n_candidates - len(group_grades))
    top = max(grades)
    weights = [math.exp((g - top) / target_temperature) for g in grades]
    return sum(w for g, w in zip(grades, weights) if g == 0.0) / sum(weights)
