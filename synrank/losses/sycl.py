"""SyCL's batch-level Wasserstein-2 (Fréchet) loss, as in Paper A's released code."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import LossInputs, RankingLoss, graph_zero, masked_softmax

#: Added to every eigenvalue before its square root (as in the released code).
EIG_EPS = 1e-15


class _SqrtEigSum(torch.autograd.Function):
    r"""``sum_k |sqrt(lambda_k(M) + 1e-15)|`` for the B x B matrix ``M = A A^T``.

    Forward: exactly the released code's route, ``torch.linalg.eigvals`` (general eigenvalues,
    complex), the square root of each ``lambda + 1e-15`` taken in complex arithmetic, then its
    absolute value.

    Backward: ``M`` is symmetric positive semi-definite by construction, so the sum is a spectral
    function of a symmetric matrix, whose gradient is ``U diag(h'(lambda)) U^T`` with
    ``(lambda, U) = eigh(M)`` and ``h(x) = |sqrt(x + eps)|``, ``h'(x) = sign(x + eps) /
    (2 sqrt(|x + eps|))``. Where the eigenvalues are distinct this is the same gradient autograd
    gives through ``eigvals``; unlike that one it stays finite when eigenvalues repeat (autograd
    through ``eigvals`` solves against an eigenvector matrix that becomes ill-conditioned there).
    """

    @staticmethod
    def forward(ctx, m: Tensor) -> Tensor:  # type: ignore[override]
        eig = torch.linalg.eigvals(m)
        value = torch.sqrt(eig + EIG_EPS).abs().sum()
        ctx.save_for_backward(m)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (m,) = ctx.saved_tensors
        lam, u = torch.linalg.eigh((m + m.mT) / 2)
        shifted = lam + EIG_EPS
        d = torch.sign(shifted) / (2.0 * shifted.abs().sqrt())
        return grad * ((u * d) @ u.mT)


def sqrt_eig_sum(m: Tensor) -> Tensor:
    """``sum_k |sqrt(lambda_k(m) + 1e-15)|`` with a backward that is stable on repeated eigenvalues."""
    return _SqrtEigSum.apply(m)


class SyCLW2Loss(RankingLoss):
    r"""Batch-level Wasserstein-2 distance between Gaussians fitted to the predicted and the target
    score distributions (SyCL; a Fréchet distance), as written in Paper A's released code.

    With :math:`Q = \mathrm{softmax}(S / \tau)` and :math:`T = \mathrm{softmax}(Y / \tau_t)` taken
    row-wise over each query's valid candidates (masked entries get probability 0; queries with an
    empty :math:`V` are dropped first), computed in float64, each row is treated as one sample of an
    :math:`N`-dimensional vector:

    .. math::

        \mu_Q = \tfrac{1}{B}\textstyle\sum_i Q_i,\quad E_Q = Q - \mu_Q,\quad
        f = \tfrac{1}{B-1}\ (f = 1 \text{ if } B < 2),\quad C_Q = E_Q^\top \sqrt{f}\ \ [N, B]

        M = (C_Q^\top C_T)(C_T^\top C_Q)\ \ [B, B]

        \mathcal{L} = \|\mu_Q - \mu_T\|^2 + f\|E_Q\|_F^2 + f\|E_T\|_F^2
                      - 2 \sum_{k=1}^{B} \big|\sqrt{\lambda_k(M) + 10^{-15}}\big|

    This is :math:`\|\mu_Q-\mu_T\|^2 + \mathrm{tr}(\Sigma_Q + \Sigma_T - 2(\Sigma_Q^{1/2}\Sigma_T
    \Sigma_Q^{1/2})^{1/2})` with the sample covariances :math:`\Sigma = C C^\top`, evaluated with a
    B x B eigenproblem instead of N x N matrix square roots. It is one value for the batch, not a
    mean over queries, and it is unchanged when the rows of :math:`Q` are permuted against those of
    :math:`T`: it matches the two distributions, not query to query.

    Gradient: the eigenvalue term uses :func:`sqrt_eig_sum`, whose backward is the spectral
    gradient from ``eigh`` (M is symmetric PSD); it agrees with autograd through ``eigvals`` on
    generic inputs and stays finite on repeated eigenvalues. Caveat: :math:`M` always has a zero
    eigenvalue (the rows of :math:`E` sum to 0), where :math:`\sqrt{\lambda + 10^{-15}}` has slope
    :math:`1/(2\sqrt{10^{-15}}) \approx 1.6 \cdot 10^7`; the eigenvector of that eigenvalue is
    orthogonal to the directions in which :math:`M` changes to first order, so the product is
    rounding noise (about 1e-9 relative), not a spike. The same zero eigenvalue puts about 1e-10 of
    rounding noise into the value (1e-17 / (2 sqrt(1e-15))), so a finite-difference check needs a
    step of about 1e-4 rather than ``gradcheck``'s default 1e-6.

    Args:
        temperature: :math:`\tau`, divides the scores (default 0.05).
        target_temperature: :math:`\tau_t`, divides the labels before their softmax (default 1.0).
        positive_threshold: accepted for a uniform configuration across losses; unused.

    References:
        - Paper A: "Beyond Contrastive Learning: Synthetic Data Enables List-wise Training with
          Multiple Levels of Relevance", arXiv 2503.23239 (SyCL; this is the loss of its released
          code).
        - Dowson & Landau, "The Fréchet distance between multivariate normal distributions",
          J. Multivariate Analysis 12(3), 1982.

    Requirements:
        1. Batches of several queries (with one query the covariance terms vanish and the loss is
           the squared distance between the two probability vectors).

    Inputs:
        +----------------------------+-----------------------------+---------------------+
        | scores                     | labels                      | mask (optional)     |
        +============================+=============================+=====================+
        | float [B, N] (fp32/bf16/64)| float [B, N], finite, >= 0  | bool [B, N]         |
        +----------------------------+-----------------------------+---------------------+

    Example::

        from synrank.losses import build
        loss_fn = build("sycl_w2", temperature=0.05, target_temperature=1.0)
        loss = loss_fn(scores, labels)
    """

    name = "sycl_w2"

    internal_dtype = torch.float64

    def compute(self, batch: LossInputs) -> Tensor:
        z, labels, valid = batch.z, batch.labels, batch.valid
        if not bool(batch.nonempty.all()):
            rows = batch.nonempty.nonzero().squeeze(1)
            z, labels, valid = (x.index_select(0, rows) for x in (z, labels, valid))
        n_rows = z.shape[0]
        zero = graph_zero(batch)
        if n_rows == 0:
            return zero
        q = masked_softmax(z, valid)
        t = masked_softmax(labels / self.target_temperature, valid)
        mu_q, mu_t = q.mean(dim=0), t.mean(dim=0)
        e_q, e_t = q - mu_q, t - mu_t
        f = 1.0 / (n_rows - 1) if n_rows >= 2 else 1.0
        c_q = e_q.T * math.sqrt(f)
        c_t = e_t.T * math.sqrt(f)
        cross = c_q.T @ c_t  # [B, B]
        m = cross @ cross.T  # = (C_Q^T C_T)(C_T^T C_Q)
        loss = (
            (mu_q - mu_t).pow(2).sum()
            + f * e_q.pow(2).sum()
            + f * e_t.pow(2).sum()
            - 2.0 * sqrt_eig_sum(m)
        )
        return loss + zero
