"""How much of a graded target falls on non-relevant candidates.

The list-wise losses (``kl``, ``wasserstein``, ``sycl_w2``) aim at t = softmax(labels / τ_t) over
every candidate of the gathered batch (shared/LOSSES.md). Another query's passages are grade 0, so
with B queries of k passages a query has B·k − k of them besides its own group, and each gets
weight exp(0) = 1 against exp(grade / τ_t) for its own passages. At τ_t = 1, 16 queries of 4
passages and grades 3/2/1/0, two thirds of the target sits on grade 0: the loss then asks the model
to give non-relevant candidates two thirds of its softmax, pulling them towards the query. The
share depends on the batch shape and on the scale of the grades (at 2 levels the top grade is 1),
so a fixed τ_t means different targets at different batch sizes and level counts: training checks
the share for the run's own, and `target_temperature_for_share` gives the τ_t that puts a chosen
share there (``train.target_nonrelevant_share``).
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


def target_temperature_for_share(group_grades: Sequence[float], n_candidates: int, share: float) -> float:
    """The target temperature at which `target_mass_on_nonrelevant` is `share` (it grows with the
    temperature, from 0 towards the grade-0 candidates' count share), by bisection on its log."""
    zeros = n_candidates - sum(1 for g in group_grades if float(g) > 0.0)
    if max(float(g) for g in group_grades) <= 0.0 or not 0.0 < share < zeros / n_candidates:
        raise ValueError(f"no target temperature puts {share:.1%} of the target on the {zeros} non-relevant of "
                         f"{n_candidates} candidates (grades {list(group_grades)}): it must be below "
                         f"{zeros / n_candidates:.1%}")
    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(100):
        mid = (lo + hi) / 2
        if target_mass_on_nonrelevant(group_grades, n_candidates, math.exp(mid)) < share:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)
