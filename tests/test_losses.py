"""Tests of synrank.losses against shared/LOSSES.md.

Every value is checked against an independent route written here: numpy/scipy loops per query,
POT's exact LP solver (``ot.emd2``) for ``wasserstein`` and ``scipy.linalg.sqrtm`` for the Fréchet
form of ``sycl_w2``.
"""

from __future__ import annotations

import ast
import math
import warnings
from pathlib import Path

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
from scipy.special import logsumexp

from synrank.losses import available, build, params
from synrank.losses import listwise
from synrank.losses import sycl as sycl_module

ALL = ("infonce", "rand1lh", "jointlh", "summarglh", "lsepair", "kl", "wasserstein", "sycl_w2")
PER_QUERY = tuple(n for n in ALL if n != "sycl_w2")
POSITIVE_BASED = ("infonce", "rand1lh", "jointlh", "summarglh", "lsepair")


def make(name: str, **kw):
    """A loss; rand1lh always gets a fixed seed so that repeated calls can be compared."""
    if name == "rand1lh":
        kw.setdefault("seed", 0)
    return build(name, **kw)


# --------------------------------------------------------------------------------------------------
# independent reference implementations (numpy / scipy / POT), one query at a time
# --------------------------------------------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - logsumexp(x)


def _rows(s, y, m):
    s, y = np.asarray(s, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = np.ones(s.shape, dtype=bool) if m is None else np.asarray(m, dtype=bool)
    for i in range(s.shape[0]):
        idx = np.flatnonzero(m[i])
        if idx.size:
            yield i, s[i, idx], y[i, idx]


def _mean(values):
    return float(np.mean(values)) if values else 0.0


def ref_infonce(s, y, m=None, tau=1.0, thr=1.0):
    out = []
    for _, si, yi in _rows(s, y, m):
        best = int(np.argmax(yi))  # numpy: first index on ties
        if yi[best] >= thr:
            out.append(-_log_softmax(si / tau)[best])
    return _mean(out)


def ref_jointlh(s, y, m=None, tau=1.0, thr=1.0, normalize=False):
    out = []
    for _, si, yi in _rows(s, y, m):
        pos = yi >= thr
        if pos.any():
            v = -_log_softmax(si / tau)[pos].sum()
            out.append(v / pos.sum() if normalize else v)
    return _mean(out)


def ref_summarglh(s, y, m=None, tau=1.0, thr=1.0):
    out = []
    for _, si, yi in _rows(s, y, m):
        pos = yi >= thr
        if pos.any():
            out.append(-logsumexp(_log_softmax(si / tau)[pos]))
    return _mean(out)


def ref_lsepair(s, y, m=None, tau=1.0, thr=1.0):
    out = []
    for _, si, yi in _rows(s, y, m):
        z = si / tau
        pos, neg = np.flatnonzero(yi >= thr), np.flatnonzero(yi < thr)
        if pos.size:
            # log(1 + sum over all (p, n) pairs of exp(z_n - z_p)), pair by pair
            pairs = [z[n] - z[p] for p in pos for n in neg]
            out.append(float(np.logaddexp(0.0, logsumexp(pairs))) if pairs else 0.0)
    return _mean(out)


def ref_rand1lh(s, y, chosen, m=None, tau=1.0, thr=1.0):
    """``chosen[i]`` is the column (in the full matrix) of query i's drawn positive."""
    s, y = np.asarray(s, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = np.ones(s.shape, dtype=bool) if m is None else np.asarray(m, dtype=bool)
    out = []
    for i in range(s.shape[0]):
        pos = m[i] & (y[i] >= thr)
        if not pos.any():
            continue
        r = int(chosen[i])
        assert pos[r]
        neg = m[i] & ~pos
        z = s[i] / tau
        out.append(-(z[r] - math.log(math.exp(z[r]) + np.exp(z[neg]).sum())))
    return _mean(out)


def ref_kl(s, y, m=None, tau=1.0, tau_t=1.0):
    out = []
    for _, si, yi in _rows(s, y, m):
        log_t, log_q = _log_softmax(yi / tau_t), _log_softmax(si / tau)
        out.append(float((np.exp(log_t) * (log_t - log_q)).sum()))
    return _mean(out)


def ref_wasserstein(s, y, m=None, tau=1.0, tau_t=1.0, p=1):
    out = []
    for _, si, yi in _rows(s, y, m):
        cost = np.abs(yi[:, None] - yi[None, :]) ** p
        out.append(ot.emd2(_softmax(yi / tau_t), _softmax(si / tau), cost))
    return _mean(out)


def ref_sycl(s, y, m=None, tau=1.0, tau_t=1.0):
    s, y = np.asarray(s, dtype=np.float64), np.asarray(y, dtype=np.float64)
    m = np.ones(s.shape, dtype=bool) if m is None else np.asarray(m, dtype=bool)
    keep = m.any(axis=1)
    q = np.zeros(s.shape)
    t = np.zeros(s.shape)
    for i in np.flatnonzero(keep):
        q[i, m[i]] = _softmax(s[i, m[i]] / tau)
        t[i, m[i]] = _softmax(y[i, m[i]] / tau_t)
    q, t = q[keep], t[keep]
    mean_term = float(((q.mean(0) - t.mean(0)) ** 2).sum())
    if q.shape[0] < 2:  # f = 1 and the centred matrices are 0
        return mean_term - 2 * q.shape[0] * math.sqrt(1e-15)
    cov_q = np.cov(q, rowvar=False)  # ddof = 1: f = 1 / (B - 1)
    cov_t = np.cov(t, rowvar=False)
    with warnings.catch_warnings():  # the covariances are singular by construction (rows sum to 1)
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root_q = scipy.linalg.sqrtm(cov_q)
        cross = scipy.linalg.sqrtm(root_q @ cov_t @ root_q)
    return mean_term + float(np.trace(cov_q) + np.trace(cov_t) - 2 * np.trace(cross).real)


REFS = {
    "infonce": lambda s, y, m, tau, tau_t: ref_infonce(s, y, m, tau),
    "jointlh": lambda s, y, m, tau, tau_t: ref_jointlh(s, y, m, tau),
    "summarglh": lambda s, y, m, tau, tau_t: ref_summarglh(s, y, m, tau),
    "lsepair": lambda s, y, m, tau, tau_t: ref_lsepair(s, y, m, tau),
    "kl": lambda s, y, m, tau, tau_t: ref_kl(s, y, m, tau, tau_t),
    "wasserstein": lambda s, y, m, tau, tau_t: ref_wasserstein(s, y, m, tau, tau_t),
    "sycl_w2": lambda s, y, m, tau, tau_t: ref_sycl(s, y, m, tau, tau_t),
}

# Hand-checkable inputs: 3 queries x 5 candidates. Query 0 has grades 0..3, query 1 has two
# positives tied at grade 2 and a masked candidate, query 2 has no positive (all grades < 1).
S = np.array(
    [
        [0.9, 0.1, -0.3, 0.4, 0.2],
        [0.3, 0.8, 0.5, -0.6, 0.0],
        [0.2, -0.1, 0.7, 0.1, -0.4],
    ]
)
Y = np.array(
    [
        [3.0, 0.0, 1.0, 2.0, 0.0],
        [0.0, 2.0, 2.0, 0.0, 1.0],
        [0.0, 0.0, 0.5, 0.0, 0.0],
    ]
)
MASK = np.ones_like(S, dtype=bool)
MASK[1, 3] = False


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def call(loss, s, y, m=None) -> float:
    mask = None if m is None else torch.tensor(np.asarray(m, dtype=bool))
    return float(loss(t64(s), t64(y), mask))


# --------------------------------------------------------------------------------------------------
# values against independent routes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("tau,tau_t", [(1.0, 1.0), (0.5, 2.0)])
def test_value_matches_independent_route(name, use_mask, tau, tau_t):
    m = MASK if use_mask else None
    loss = build(name, temperature=tau, target_temperature=tau_t)
    assert call(loss, S, Y, m) == pytest.approx(REFS[name](S, Y, m, tau, tau_t), abs=1e-5)


@pytest.mark.parametrize("p", [1, 2, 1.5])
def test_wasserstein_p_matches_emd2(p):
    loss = build("wasserstein", temperature=0.5, p=p)
    assert call(loss, S, Y, MASK) == pytest.approx(ref_wasserstein(S, Y, MASK, 0.5, 1.0, p), abs=1e-5)


@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_per_candidate_route_matches_emd2(p, monkeypatch):
    """The route taken when a batch has more distinct label values than MAX_AGGREGATED_GRADES."""
    monkeypatch.setattr(listwise, "MAX_AGGREGATED_GRADES", 0)
    loss = build("wasserstein", temperature=0.5, p=p)
    assert call(loss, S, Y, MASK) == pytest.approx(ref_wasserstein(S, Y, MASK, 0.5, 1.0, p), abs=1e-5)
    m = MASK.copy()
    m[0] = False
    assert call(loss, S, Y, m) == pytest.approx(ref_wasserstein(S, Y, m, 0.5, 1.0, p), abs=1e-5)


def test_wasserstein_continuous_labels():
    """More than 64 distinct label values (e.g. teacher scores): the per-candidate route."""
    rng = np.random.default_rng(9)
    s = rng.normal(size=(2, 70))
    y = rng.uniform(0, 3, size=(2, 70))
    m = rng.random((2, 70)) > 0.2
    loss = build("wasserstein", temperature=0.5, target_temperature=0.5)
    assert call(loss, s, y, m) == pytest.approx(ref_wasserstein(s, y, m, 0.5, 0.5), abs=1e-5)
    s_t = t64(s).requires_grad_()
    f = lambda x: loss(x, t64(y), torch.tensor(m))  # noqa: E731
    assert torch.autograd.gradcheck(f, (s_t,), atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("thr", [1.0, 2.0, 0.5])
@pytest.mark.parametrize("name", ["infonce", "jointlh", "summarglh", "lsepair"])
def test_positive_threshold(name, thr):
    ref = {
        "infonce": ref_infonce,
        "jointlh": ref_jointlh,
        "summarglh": ref_summarglh,
        "lsepair": ref_lsepair,
    }[name]
    loss = build(name, temperature=0.5, positive_threshold=thr)
    assert call(loss, S, Y, MASK) == pytest.approx(ref(S, Y, MASK, 0.5, thr), abs=1e-5)


def test_jointlh_normalize():
    loss = build("jointlh", temperature=0.5, normalize=True)
    assert call(loss, S, Y, MASK) == pytest.approx(ref_jointlh(S, Y, MASK, 0.5, 1.0, True), abs=1e-5)
    assert call(loss, S, Y) != pytest.approx(call(build("jointlh", temperature=0.5), S, Y))


def test_rand1lh_matches_reference_for_the_drawn_positives():
    loss = build("rand1lh", temperature=0.5, seed=3)
    for _ in range(4):
        value = call(loss, S, Y, MASK)
        chosen = loss.last_positive.tolist()
        assert chosen[2] == -1  # query 2 has no positive
        assert value == pytest.approx(ref_rand1lh(S, Y, chosen, MASK, 0.5), abs=1e-5)


def test_hand_computed_values():
    """softmax(log [1, 2, 3, 4]) = [.1, .2, .3, .4]: values by hand, grades 0..3."""
    s = np.log([[1.0, 2.0, 3.0, 4.0]])
    y = np.array([[0.0, 1.0, 2.0, 3.0]])
    q = np.array([0.1, 0.2, 0.3, 0.4])
    t = np.exp(y[0]) / np.exp(y[0]).sum()
    expected = {
        "infonce": -math.log(0.4),
        "jointlh": -(math.log(0.2) + math.log(0.3) + math.log(0.4)),
        "summarglh": -math.log(0.9),
        "lsepair": math.log(1 + 1 / 2 + 1 / 3 + 1 / 4),  # exp(z_n - z_p) = 1 / x_p
        "rand1lh": None,
        "kl": float((t * np.log(t / q)).sum()),
        # W1 on the grade axis: sum over unit gaps of |F_q - F_t|
        "wasserstein": float(np.abs(np.cumsum(q) - np.cumsum(t))[:-1].sum()),
        # one query: f = 1, E = 0, loss = |q - t|^2 - 2 sqrt(1e-15)
        "sycl_w2": float(((q - t) ** 2).sum()) - 2 * math.sqrt(1e-15),
    }
    for name, value in expected.items():
        if value is not None:
            assert call(build(name, temperature=1.0), s, y) == pytest.approx(value, abs=1e-9), name
    # rand1lh: the positive r leaves the other positives out: -log(x_r / (1 + x_r))
    loss = build("rand1lh", temperature=1.0, seed=0)
    value = call(loss, s, y)
    r = int(loss.last_positive[0])
    x_r = r + 1.0
    assert value == pytest.approx(-math.log(x_r / (1 + x_r)), abs=1e-9)


def test_float32_matches_float64():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 7))
    y = rng.integers(0, 4, size=(4, 7)).astype(float)
    for name in ALL:
        v64 = make(name, temperature=0.1)(t64(s), t64(y))
        v32 = make(name, temperature=0.1)(t64(s).float(), t64(y).float())
        assert v64.dtype == torch.float64 and v32.dtype == torch.float32
        assert float(v32) == pytest.approx(float(v64), rel=1e-4, abs=1e-5), name


# --------------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------------


def _random_case(seed: int, b: int = 3, n: int = 6):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(b, n))
    y = rng.integers(0, 4, size=(b, n)).astype(float)
    y[:, 0] = 3.0  # every query has a positive and, below, a negative
    y[:, 1] = 0.0
    return s, y


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("seed", [0, 1])
def test_masking_a_column_equals_deleting_it(name, seed):
    s, y = _random_case(seed)
    for col in (1, 3, 5):
        m = np.ones_like(s, dtype=bool)
        m[:, col] = False
        masked = call(make(name, temperature=0.3), s, y, m)
        deleted = call(make(name, temperature=0.3), np.delete(s, col, 1), np.delete(y, col, 1))
        assert masked == pytest.approx(deleted, abs=1e-10), (name, col)


@pytest.mark.parametrize("name", [n for n in PER_QUERY if n != "rand1lh"])
def test_masking_one_entry_equals_deleting_it_from_that_query(name):
    """Per-query losses: mask (i, j) == mean of the per-query losses with j removed from query i."""
    s, y = _random_case(2)
    m = np.ones_like(s, dtype=bool)
    m[1, 4] = False
    batch = call(make(name, temperature=0.3), s, y, m)
    rows = []
    for i in range(s.shape[0]):
        keep = m[i]
        rows.append(call(make(name, temperature=0.3), s[i : i + 1, keep], y[i : i + 1, keep]))
    assert batch == pytest.approx(np.mean(rows), abs=1e-10)


@pytest.mark.parametrize("thr,other", [(1.0, 0.0), (2.0, 1.0)])
def test_one_positive_per_query_makes_the_multi_positive_losses_infonce(thr, other):
    rng = np.random.default_rng(5)
    s = rng.normal(size=(4, 6))
    y = np.full((4, 6), other)
    y[np.arange(4), [0, 3, 5, 2]] = [3.0, 2.0, 2.0, 3.0]  # exactly one label >= thr per query
    m = np.ones_like(s, dtype=bool)
    m[0, 4] = False
    values = [
        call(build(n, temperature=0.2, positive_threshold=thr, **kw), s, y, m)
        for n, kw in [
            ("infonce", {}),
            ("rand1lh", {"seed": 1}),
            ("jointlh", {}),
            ("jointlh", {"normalize": True}),
            ("summarglh", {}),
        ]
    ]
    assert values == pytest.approx([values[0]] * len(values), abs=1e-10)


def test_sycl_w2_is_invariant_to_permuting_prediction_rows():
    rng = np.random.default_rng(7)
    s = rng.normal(size=(5, 6))
    y = rng.integers(0, 4, size=(5, 6)).astype(float)
    loss = build("sycl_w2", temperature=0.5)
    base = call(loss, s, y)
    for perm in ([4, 3, 2, 1, 0], [1, 2, 0, 4, 3]):
        assert call(loss, s[perm], y) == pytest.approx(base, abs=1e-10)
    # ... while a per-query loss is not
    assert call(build("kl", temperature=0.5), s[[4, 3, 2, 1, 0]], y) != pytest.approx(
        call(build("kl", temperature=0.5), s, y), abs=1e-3
    )


def test_lsepair_tends_to_zero_with_a_wide_margin():
    y = np.array([[3.0, 2.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 2.0, 0.0]])
    loss = build("lsepair", temperature=0.05)
    values = []
    for margin in (0.0, 0.1, 0.3, 1.0, 3.0):
        s = np.where(y >= 1, margin, 0.0) + np.array([0.01, -0.02, 0.03, 0.0, -0.01])
        values.append(call(loss, s, y))
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] < 1e-12
    assert values[0] > 1.0


@pytest.mark.parametrize("name", ALL)
def test_correctly_ordered_scores_beat_reversed_ones(name):
    """sentence-transformers' correct-vs-incorrect check."""
    y = np.array(
        [
            [3.0, 2.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 3.0, 1.0, 2.0],
            [1.0, 0.0, 0.0, 2.0, 3.0],
        ]
    )
    correct = 0.2 * y
    reversed_ = -0.2 * y
    good = call(make(name, temperature=0.1), correct, y)
    bad = call(make(name, temperature=0.1), reversed_, y)
    assert good < bad, (good, bad)


# --------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_gradcheck(name):
    rng = np.random.default_rng(11)
    s = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float64, requires_grad=True)
    y = t64(Y)
    m = torch.tensor(MASK)

    def f(x):
        # a fresh rand1lh per call so that every evaluation draws the same positives
        return make(name, temperature=0.7, target_temperature=1.3)(x, y, m)

    # sycl_w2: the structural zero eigenvalue of M puts ~1e-10 of rounding noise into the value
    # (1e-17 / (2 sqrt(1e-15))), so the finite-difference step must be larger than the default 1e-6.
    eps = 1e-4 if name == "sycl_w2" else 1e-6
    assert torch.autograd.gradcheck(f, (s,), eps=eps, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_gradients_are_zero_for_masked_entries(name):
    s = t64(S).requires_grad_()
    make(name, temperature=0.5)(s, t64(Y), torch.tensor(MASK)).backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[1, 3] == 0.0
    assert s.grad.abs().sum() > 0


def test_sycl_backward_equals_autograd_through_eigvals_on_generic_input(monkeypatch):
    rng = np.random.default_rng(3)
    s = torch.tensor(rng.normal(size=(4, 6)), dtype=torch.float64, requires_grad=True)
    y = torch.tensor(rng.integers(0, 4, size=(4, 6)), dtype=torch.float64)
    loss = build("sycl_w2", temperature=0.5)
    (ours,) = torch.autograd.grad(loss(s, y), s)
    monkeypatch.setattr(
        sycl_module,
        "sqrt_eig_sum",
        lambda mat: torch.sqrt(torch.linalg.eigvals(mat) + 1e-15).abs().sum(),
    )
    (plain,) = torch.autograd.grad(loss(s, y), s)
    assert torch.allclose(ours, plain, atol=1e-9)


def test_sycl_backward_is_finite_on_repeated_eigenvalues():
    """M with a repeated eigenvalue (autograd through eigvals solves against the eigenvector matrix
    there and can fail with 'input matrix is singular'); the spectral backward stays exact."""
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lam = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    a = ((u * lam.sqrt()) @ u.T).requires_grad_()
    (grad,) = torch.autograd.grad(sycl_module.sqrt_eig_sum(a @ a.T), a)
    assert torch.isfinite(grad).all()
    # d/dA sum_k sqrt(lambda_k(A A^T)) = d/dA ||A||_* = U V^T on the range of A (here U P U^T)
    proj = (u[:, :4] @ u[:, :4].T)
    assert torch.allclose(grad, proj, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_empty_row_does_not_contribute(name):
    m = np.ones_like(S, dtype=bool)
    m[1] = False
    with_empty = call(make(name, temperature=0.5), S, Y, m)
    without = call(make(name, temperature=0.5), S[[0, 2]], Y[[0, 2]])
    assert with_empty == pytest.approx(without, abs=1e-10)
    s = t64(S).requires_grad_()
    make(name, temperature=0.5)(s, t64(Y), torch.tensor(m)).backward()
    assert torch.isfinite(s.grad).all() and (s.grad[1] == 0).all()


@pytest.mark.parametrize("name", POSITIVE_BASED)
def test_row_without_positives_does_not_contribute(name):
    assert not (Y[2] >= 1).any()
    with_row = call(make(name, temperature=0.5), S, Y)
    without = call(make(name, temperature=0.5), S[:2], Y[:2])
    assert with_row == pytest.approx(without, abs=1e-10)


@pytest.mark.parametrize("name", ["kl", "wasserstein"])
def test_listwise_row_without_positives_still_contributes(name):
    assert call(make(name, temperature=0.5), S, Y) != pytest.approx(
        call(make(name, temperature=0.5), S[:2], Y[:2]), abs=1e-6
    )


def test_lsepair_query_with_only_positives_counts_as_zero():
    s = np.array([[0.3, 0.1, -0.2], [0.5, 0.0, 0.2]])
    y = np.array([[2.0, 1.0, 3.0], [3.0, 0.0, 0.0]])
    loss = build("lsepair", temperature=0.5)
    assert call(loss, s, y) == pytest.approx(ref_lsepair(s[1:], y[1:], None, 0.5) / 2, abs=1e-10)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("case", ["all_masked", "no_positives", "no_columns", "no_rows"])
def test_nothing_contributes_gives_zero_attached_to_graph(name, dtype, case):
    if case == "no_positives" and name not in POSITIVE_BASED:
        pytest.skip("list-wise losses use every row with a non-empty V")
    shape = {"no_columns": (3, 0), "no_rows": (0, 5)}.get(case, (3, 5))
    s = torch.randn(shape).to(dtype).requires_grad_()
    y = torch.zeros(shape) if case == "no_positives" else torch.rand(shape) * 3
    m = torch.zeros(shape, dtype=torch.bool) if case == "all_masked" else None
    value = make(name)(s, y, m)
    assert value.dim() == 0 and value.item() == 0.0
    assert value.requires_grad
    value.backward()
    assert s.grad is not None and s.grad.dtype == dtype
    assert (s.grad == 0).all()


def test_infonce_takes_the_first_candidate_on_tied_top_labels():
    s = np.array([[0.1, 0.7, -0.2, 0.0]])
    y = np.array([[2.0, 0.0, 2.0, 1.0]])
    value = call(build("infonce", temperature=1.0), s, y)
    assert value == pytest.approx(logsumexp(s[0]) - s[0, 0], abs=1e-10)
    assert value != pytest.approx(logsumexp(s[0]) - s[0, 2], abs=1e-3)


@pytest.mark.parametrize("name", sorted(REFS))
def test_tied_scores_and_labels(name):
    s = np.zeros((2, 4))
    y = np.array([[1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    loss = build(name, temperature=0.05)
    assert call(loss, s, y) == pytest.approx(REFS[name](s, y, None, 0.05, 1.0), abs=1e-6)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_huge_scores_stay_finite(name, dtype):
    y = t64(Y).float()
    s = torch.tensor([[1e4, -1e4, 1e4, -1e4, 0.0], [-1e4, 1e4, -1e4, 1e4, 1e4], [1e4, 1e4, -1e4, 0.0, -1e4]])
    for scores in (s, -s):
        x = scores.to(dtype).requires_grad_()
        value = make(name, temperature=0.05)(x, y, torch.tensor(MASK))
        assert torch.isfinite(value)
        value.backward()
        assert torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("name", ["infonce", "jointlh", "summarglh", "lsepair", "kl", "wasserstein"])
def test_huge_scores_match_float64_reference(name):
    s = np.array([[1e4, -1e4, 2e3, 9.99e3, 0.0], [-1e4, 1e4, -1e4, 1e4, 5e3], [1e4, 1e4, -1e4, 0.0, -1e4]])
    got = call(build(name, temperature=0.05), s.astype(np.float32), Y)
    want = REFS[name](s, Y, None, 0.05, 1.0)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_bfloat16_scores(name):
    rng = np.random.default_rng(4)
    s32 = torch.tensor(rng.normal(size=(3, 5)), dtype=torch.float32)
    s16 = s32.to(torch.bfloat16).requires_grad_()
    y = t64(Y).float()
    value = make(name, temperature=0.1)(s16, y)
    assert value.dtype == torch.float32
    same = make(name, temperature=0.1)(s16.detach().float(), y)
    assert value.item() == pytest.approx(same.item(), abs=1e-6)
    value.backward()
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()


# --------------------------------------------------------------------------------------------------
# bad inputs, registry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores,labels,mask,match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 4), None, "does not match"),
        (torch.zeros(2, 3), torch.zeros(3, 3), None, "does not match"),
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool), "mask shape"),
        (torch.zeros(2, 3), torch.tensor([[0.0, float("nan"), 1.0], [0.0, 0.0, 0.0]]), None, "NaN or inf"),
        (torch.zeros(2, 3), torch.tensor([[0.0, float("inf"), 1.0], [0.0, 0.0, 0.0]]), None, "NaN or inf"),
        (torch.zeros(2, 3), torch.tensor([[0.0, -1.0, 1.0], [0.0, 0.0, 0.0]]), None, "negative"),
        (torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), "torch.bool"),
        (torch.zeros(6), torch.zeros(6), None, "2-D"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), None, "floating-point"),
        (np.zeros((2, 3)), torch.zeros(2, 3), None, "torch.Tensor"),
        (torch.zeros(2, 3), [[0.0] * 3] * 2, None, "torch.Tensor"),
    ],
)
@pytest.mark.parametrize("name", ALL)
def test_bad_inputs_raise_value_error(name, scores, labels, mask, match):
    with pytest.raises(ValueError, match=match):
        make(name)(scores, labels, mask)


def test_no_gradient_flows_into_the_labels():
    y = t64(Y).requires_grad_()
    for name in ALL:
        value = make(name)(t64(S).requires_grad_(), y)
        assert torch.autograd.grad(value, y, allow_unused=True)[0] is None, name


def test_integer_labels_are_accepted():
    s = t64(S)
    y = np.floor(Y)
    assert float(build("kl")(s, torch.tensor(y).long())) == pytest.approx(float(build("kl")(s, t64(y))))


def test_available_and_unknown_name():
    assert sorted(available()) == sorted(ALL)
    with pytest.raises(ValueError, match="unknown loss 'ranknet'") as err:
        build("ranknet")
    for name in ALL:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_unknown_parameter_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match="unknown parameter") as err:
        build(name, temprature=0.05)
    for p in params(name):
        assert p in str(err.value)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("infonce", {"temperature": 0}),
        ("infonce", {"temperature": -0.1}),
        ("lsepair", {"temperature": float("nan")}),
        ("kl", {"temperature": "0.05"}),
        ("kl", {"temperature": True}),
        ("kl", {"target_temperature": 0.0}),
        ("jointlh", {"positive_threshold": 0.0}),
        ("jointlh", {"normalize": "yes"}),
        ("jointlh", {"normalize": 1}),
        ("wasserstein", {"p": 0.5}),
        ("wasserstein", {"p": float("inf")}),
        ("rand1lh", {"seed": -1}),
        ("rand1lh", {"seed": 1.5}),
        ("infonce", {"normalize": True}),
        ("jointlh", {"p": 2}),
        ("sycl_w2", {"seed": 0}),
    ],
)
def test_invalid_parameter_values(name, kw):
    with pytest.raises(ValueError, match="valid parameters"):
        build(name, **kw)


def test_parameters_defaults_and_config_round_trip():
    loss = build("wasserstein")
    assert loss.config() == {"temperature": 0.05, "positive_threshold": 1.0, "target_temperature": 1.0, "p": 1}
    assert isinstance(loss, torch.nn.Module)
    assert build("jointlh").normalize is False and build("rand1lh").seed is None
    for name in ALL:
        again = build(name, **make(name, temperature=0.2).config())
        assert call(again, S, Y) == pytest.approx(call(make(name, temperature=0.2), S, Y))
    # the shared parameters are accepted everywhere (ignored where unused)
    assert call(build("lsepair", target_temperature=9.0), S, Y) == call(build("lsepair"), S, Y)
    assert call(build("kl", positive_threshold=3.0), S, Y) == call(build("kl"), S, Y)


def test_loss_docstrings_name_formula_params_and_source():
    for name in ALL:
        doc = type(build(name)).__doc__
        assert doc and "math::" in doc and "Args:" in doc and "References:" in doc, name
        assert "temperature" in doc
    for name in ("jointlh", "summarglh", "lsepair", "rand1lh"):
        assert "2602.12727" in type(build(name)).__doc__
    for name in ("wasserstein", "sycl_w2"):
        assert "2503.23239" in type(build(name)).__doc__


# --------------------------------------------------------------------------------------------------
# rand1lh sampling
# --------------------------------------------------------------------------------------------------


def test_rand1lh_same_seed_same_sequence_and_it_advances():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(16, 6))
    y = np.zeros((16, 6))
    y[:, [0, 2, 3, 5]] = 2.0  # four positives per query
    a, b, c = (build("rand1lh", seed=42) for _ in range(3))
    c_other = build("rand1lh", seed=43)
    seq_a, seq_b, seq_c = [], [], []
    for _ in range(4):
        call(a, s, y)
        call(b, s, y)
        call(c_other, s, y)
        seq_a.append(a.last_positive.tolist())
        seq_b.append(b.last_positive.tolist())
        seq_c.append(c_other.last_positive.tolist())
    assert seq_a == seq_b
    assert seq_a != seq_c
    assert all(seq_a[i] != seq_a[i + 1] for i in range(3))  # advances per call
    del c


def test_rand1lh_draw_is_uniform_over_the_positives():
    b = 3000
    y = torch.zeros(b, 6)
    y[:, [1, 2, 4]] = torch.tensor([1.0, 3.0, 2.0])
    mask = torch.ones(b, 6, dtype=torch.bool)
    mask[:, 3] = False
    loss = build("rand1lh", seed=7)
    loss(torch.zeros(b, 6), y, mask)
    counts = torch.bincount(loss.last_positive, minlength=6).tolist()
    assert counts[0] == counts[3] == counts[5] == 0
    for k in (1, 2, 4):
        assert abs(counts[k] - b / 3) < 5 * math.sqrt(b * (1 / 3) * (2 / 3))


def test_rand1lh_state_dict_resumes_the_sequence():
    s, y = _random_case(1, b=8)
    y[:, 2] = 3.0
    loss = build("rand1lh", seed=5)
    call(loss, s, y)
    state = loss.state_dict()
    call(loss, s, y)
    expected = loss.last_positive.tolist()
    resumed = build("rand1lh", seed=5)
    resumed.load_state_dict(state)
    call(resumed, s, y)
    assert resumed.last_positive.tolist() == expected


def test_rand1lh_without_seed_follows_torch_manual_seed():
    s, y = _random_case(1, b=8)
    y[:, 2] = 3.0
    seqs = []
    for _ in range(2):
        torch.manual_seed(123)
        loss = build("rand1lh")
        call(loss, s, y)
        seqs.append(loss.last_positive.tolist())
    assert seqs[0] == seqs[1]


# --------------------------------------------------------------------------------------------------
# purity
# --------------------------------------------------------------------------------------------------


def test_losses_import_no_model_tokenizer_or_ray():
    """Pure functions of (scores, labels, mask): only torch, POT and the standard library."""
    allowed = {"__future__", "math", "numbers", "dataclasses", "typing", "torch", "ot"}
    package = Path(listwise.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, (path.name, roots - allowed)
