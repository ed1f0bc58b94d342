"""The library-backed statistics and gather give the results of the hand-written code they replaced.

The `_reference_*` functions below are synrank's own pre-library implementations, kept here (and
only here) as the reference: the randomization test and Holm's correction of
`synrank.evaluate.compare` (now scipy's ``permutation_test`` and statsmodels' ``multipletests``),
Cohen's kappa of `synrank.annotate.agreement` (now scikit-learn's ``cohen_kappa_score``) and the
gather-with-gradient of `synrank.train.loop` (now torch's functional all-gather). Each is compared
with its replacement on the same inputs: exactly where the computation is exact, within Monte Carlo
error where it samples.
"""

from __future__ import annotations

import math
import socket
import warnings
from typing import Sequence

import numpy as np
import pytest
import torch

from synrank.annotate.agreement import cohens_kappa
from synrank.evaluate.compare import holm, randomization_test

# ---------------------------------------------------------------------------------------------
# the pre-library reference implementations


def _reference_randomization_test(a, b, n_resamples: int = 10_000, seed: int = 0, chunk: int = 1000) -> float:
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n == 0 or np.allclose(d, 0.0, atol=1e-12):
        return 1.0
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    if n <= 20 and 2**n <= n_resamples:  # exact: every sign pattern once
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        stats = np.abs(signs @ d) / n
        return float(np.mean(stats >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    done = 0
    while done < n_resamples:
        m = min(chunk, n_resamples - done)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) / n >= observed - tol))
        done += m
    return (hits + 1) / (n_resamples + 1)


def _reference_holm(pvalues: Sequence[float]) -> list[float]:
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _reference_weights(n_levels: int, weighting: str) -> np.ndarray:
    i, j = np.indices((n_levels, n_levels))
    if weighting == "none":
        return (i != j).astype(float)
    if weighting == "linear":
        return np.abs(i - j) / (n_levels - 1)
    return (i - j) ** 2 / (n_levels - 1) ** 2


def _reference_cohens_kappa(confusion, weighting: str = "none") -> float | None:
    m = np.asarray(confusion, dtype=float)
    total = m.sum()
    if total <= 0 or m.shape[0] < 2:
        return None
    observed = m / total
    expected = np.outer(observed.sum(1), observed.sum(0))
    w = _reference_weights(m.shape[0], weighting)
    chance = float((w * expected).sum())
    if chance <= 1e-15:
        return None
    return float(1.0 - (w * observed).sum() / chance)


class _ReferenceGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        world = dist.get_world_size()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x)
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


# ---------------------------------------------------------------------------------------------
# Holm


def _pvalue_lists(rng: np.random.Generator):
    yield []
    yield [0.5]
    yield [0.0, 0.0, 1.0]
    yield [0.2] * 5  # all tied
    yield [0.01, 0.04, 0.03]
    yield [1.0, 1.0]
    yield [1 / 3, 2 / 3, 0.1, 0.1, 1 / 7]
    # (60 lists: statsmodels runs a full garbage collection on every Holm call)
    for _ in range(60):
        m = int(rng.integers(1, 13))
        kind = rng.integers(0, 3)
        if kind == 0:
            p = rng.random(m)
        elif kind == 1:  # small p-values: products stay below 1, so the running maximum matters
            p = rng.random(m) ** 4
        else:  # few distinct values: ties
            p = rng.choice([0.001, 0.01, 0.05, 0.2, 0.5, 1.0], size=m)
        yield [float(x) for x in p]


def test_holm_equals_the_reference_exactly():
    rng = np.random.default_rng(0)
    for pvalues in _pvalue_lists(rng):
        found = holm(pvalues)
        assert isinstance(found, list) and all(isinstance(x, float) for x in found)
        assert found == _reference_holm(pvalues), pvalues
    assert holm(np.array([0.03, 0.01])) == _reference_holm([0.03, 0.01])  # arrays as callers pass them


# ---------------------------------------------------------------------------------------------
# the randomization test


def _paired_inputs(rng: np.random.Generator, n: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query values the way retrieval measures look: few distinct rationals (ties, differences
    whose sum is zero up to rounding), reciprocal ranks, or continuous values."""
    if kind == 0:
        return rng.integers(0, 11, n) / 10, rng.integers(0, 11, n) / 10
    if kind == 1:
        return rng.integers(0, 4, n) / 3, rng.integers(0, 8, n) / 7
    if kind == 2:
        return 1 / rng.integers(1, 11, n), 1 / rng.integers(1, 11, n)
    return rng.random(n), rng.random(n)


def test_randomization_test_equals_the_reference_where_it_enumerates_every_sign_pattern():
    rng = np.random.default_rng(1)
    cases = [
        (np.array([]), np.array([])),  # empty
        (np.array([0.3]), np.array([0.1])),  # one query
        (np.ones(4), np.zeros(4)),  # all differences equal
        (np.full(6, 0.5), np.full(6, 0.5)),  # no difference
        (np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.3, 0.1])),  # mean difference exactly 0
        # mean difference 0 up to rounding (2e-17): scipy's own relative tie tolerance would give 0.875
        (np.array([0.3, 0.3, 0.9, 0.0, 0.4]), np.array([0.3, 0.7, 0.5, 0.1, 0.3])),
        (np.array([1.0, 0.0, 0.5, 0.5]), np.array([0.0, 1.0, 0.25, 0.75])),  # ties with the observed value
    ]
    cases += [_paired_inputs(rng, int(rng.integers(1, 12)), kind) for kind in range(4) for _ in range(40)]
    for a, b in cases:
        for n_resamples in sorted({10_000, 2 ** len(a)}):
            assert randomization_test(a, b, n_resamples=n_resamples) == \
                _reference_randomization_test(a, b, n_resamples=n_resamples), (a - b, n_resamples)


def _monte_carlo_bound(p: float, n_resamples: int) -> float:
    """Bound on the difference of two independent Monte Carlo p-value estimates (about 5 standard
    deviations, plus the +1 of each estimator)."""
    return 5.0 * math.sqrt(2.0 * max(p * (1.0 - p), 0.01) / n_resamples) + 2.0 / n_resamples


def test_sampled_randomization_test_agrees_with_the_reference_and_the_exact_value():
    rng = np.random.default_rng(2)
    n_resamples = 4000
    for trial in range(12):
        n = 13 + trial % 2  # 2^n > n_resamples: both sample; the exact p-value is still cheap
        a, b = _paired_inputs(rng, n, trial % 4)
        exact = _reference_randomization_test(a, b, n_resamples=2**n)
        new = randomization_test(a, b, n_resamples=n_resamples, seed=trial)
        old = _reference_randomization_test(a, b, n_resamples=n_resamples, seed=trial)
        bound = _monte_carlo_bound(exact, n_resamples)
        assert abs(new - old) <= bound and abs(new - exact) <= bound, (a - b, new, old, exact)


def test_randomization_test_on_many_queries_agrees_with_the_reference():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.005, 0.01, 0.02, 0.05):
        for kind in range(4):
            a, b = _paired_inputs(rng, 200, kind)
            a = np.clip(a + shift, 0.0, 1.0)
            new, old = randomization_test(a, b), _reference_randomization_test(a, b)
            assert abs(new - old) <= _monte_carlo_bound(old, 10_000), (shift, kind, new, old)
    # a difference no sign pattern reaches: both give the smallest p-value, 1 / (n_resamples + 1)
    base = rng.random(300)
    better = base + 0.05 + 0.01 * rng.normal(size=300)
    assert randomization_test(better, base, n_resamples=2000) == _reference_randomization_test(
        better, base, n_resamples=2000) == 1 / 2001


def test_randomization_test_is_deterministic_per_seed():
    rng = np.random.default_rng(4)
    a, b = _paired_inputs(rng, 100, 3)
    assert randomization_test(a, b, n_resamples=3000, seed=7) == randomization_test(a, b, n_resamples=3000, seed=7)
    pvalues = {randomization_test(a, b, n_resamples=3000, seed=s) for s in range(5)}
    assert len(pvalues) > 1  # the seed does choose the sign patterns


# ---------------------------------------------------------------------------------------------
# Cohen's kappa


def _confusions(rng: np.random.Generator):
    for k in range(2, 6):
        yield np.zeros((k, k), dtype=int)  # no data
        one = np.zeros((k, k), dtype=int)
        one[k - 1, k - 1] = 9
        yield one  # both raters used one grade
        yield np.diag(rng.integers(1, 9, k))  # perfect agreement
        yield np.diag(rng.integers(0, 2, k)) * 5  # perfect agreement on some grades, empty rows/cols
        yield np.fliplr(np.eye(k, dtype=int)) * 3  # complete disagreement
        off = np.zeros((k, k), dtype=int)
        off[0, k - 1] = 4
        yield off  # each rater used one grade, different ones
        for _ in range(60):
            m = rng.integers(0, 12, (k, k)) * (rng.random((k, k)) < rng.uniform(0.2, 1.0))
            if rng.random() < 0.3:
                m[rng.integers(0, k)] = 0  # an empty row
            if rng.random() < 0.3:
                m[:, rng.integers(0, k)] = 0  # an empty column
            yield m


def test_kappa_equals_the_reference():
    rng = np.random.default_rng(5)
    undefined = 0
    for m in _confusions(rng):
        for weighting in ("none", "linear", "quadratic"):
            expected = _reference_cohens_kappa(m, weighting)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # undefined is None, not scikit-learn's warning and nan
                found = cohens_kappa(m, weighting)
            if expected is None:
                undefined += 1
                assert found is None, (m, weighting)
            else:
                assert isinstance(found, float) and found == pytest.approx(expected, abs=1e-12), (m, weighting)
    assert undefined > 0
    assert cohens_kappa(np.array([[1.5, 0.5], [0.5, 2.5]])) == pytest.approx(
        _reference_cohens_kappa(np.array([[1.5, 0.5], [0.5, 2.5]])), abs=1e-12)  # weights, not only counts
    assert cohens_kappa([[5]]) is None and cohens_kappa([[0]]) is None
    with pytest.raises(ValueError):
        cohens_kappa([[1, 2], [3, 4]], "cubic")


# ---------------------------------------------------------------------------------------------
# gather with gradients, two gloo processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, port: int, out_dir: str) -> None:
    """Gather this rank's rows with the reference and with `gather_with_grad`, through a loss that
    mixes every rank's rows; save outputs and the gradients reaching this rank's input."""
    import torch.distributed as dist
    import torch.distributed.nn.functional  # noqa: F401  (imported before warnings become errors)

    from synrank.train.loop import gather_with_grad

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        found = {}
        for name, gather in (("reference", _ReferenceGatherWithGrad.apply), ("new", gather_with_grad)):
            torch.manual_seed(100 + rank)
            x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
            weight = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
            local = x @ weight
            with warnings.catch_warnings():
                # torch's deprecation notice of its all-gather is not the training log's business
                warnings.simplefilter("error", FutureWarning)
                gathered = gather(local)
            # a loss of the global batch (as the training loop's scores: every row against every row),
            # weighted by rank so the ranks' incoming gradients differ
            loss = (rank + 1.0) * torch.logsumexp(gathered @ gathered.T, dim=1).sum()
            loss.backward()
            found[name] = {"gathered": gathered.detach(), "x_grad": x.grad, "weight_grad": weight.grad}
            # a non-contiguous input of another shape
            y = torch.randn(6, 2, dtype=torch.float64).T.requires_grad_(True)
            (gather(y) * torch.arange(24, dtype=torch.float64).reshape(4, 6) * (rank + 1)).sum().backward()
            found[name]["y_grad"] = y.grad
        torch.save(found, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_matches_the_reference_on_two_processes(tmp_path):
    torch.multiprocessing.spawn(_gather_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    found = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for rank in range(2):
        reference, new = found[rank]["reference"], found[rank]["new"]
        assert reference["gathered"].shape == (8, 5)
        for key in ("gathered", "x_grad", "weight_grad", "y_grad"):
            assert torch.allclose(new[key], reference[key], rtol=1e-12, atol=1e-12), (rank, key)
    # the gathered batch is the same on both ranks, rank 0's rows first
    assert torch.equal(found[0]["new"]["gathered"], found[1]["new"]["gathered"])
    # the backward sums the ranks' gradients: the rank-weighted loss gives rank-specific gradients
    # that nevertheless reach each input as the sum over both ranks (not an average, not one rank's)
    y_grads = [found[r]["new"]["y_grad"] for r in range(2)]
    coefficient = torch.arange(24, dtype=torch.float64).reshape(4, 6) * 3  # (1 + 2) x the weights
    assert torch.equal(y_grads[0], coefficient[:2]) and torch.equal(y_grads[1], coefficient[2:])


def test_gather_with_grad_is_identity_in_one_process():
    from synrank.train.loop import gather_with_grad

    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x
