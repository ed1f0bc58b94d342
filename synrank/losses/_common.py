"""Shared pieces of the loss library: input validation, masking, masked log-sum-exp, reduction.

Every loss maps ``(scores, labels, mask)`` to a scalar (see ``shared/LOSSES.md``). The helpers here
keep every intermediate finite, also for rows that end up not contributing: a row that has no
candidate in a set gets a harmless finite stand-in, and the row is then excluded with
``torch.where``. That matters for the backward pass, where ``0 * inf`` would turn into NaN.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

DEFAULT_TEMPERATURE = 0.05
DEFAULT_POSITIVE_THRESHOLD = 1.0
DEFAULT_TARGET_TEMPERATURE = 1.0

#: Parameters every loss accepts, so one configuration can be swapped across losses by name. A loss
#: that does not use one of them (``target_temperature`` for the positive-based losses,
#: ``positive_threshold`` for the list-wise ones) validates it and ignores it.
SHARED_PARAMS: tuple[str, ...] = ("temperature", "positive_threshold", "target_temperature")


# --------------------------------------------------------------------------------------------------
# parameter checks
# --------------------------------------------------------------------------------------------------


def _is_real_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(name: str, value: object) -> float:
    """A finite number > 0, returned as float; ValueError otherwise."""
    if not _is_real_number(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_at_least(name: str, value: object, low: float) -> float:
    """A finite number >= ``low``, returned as float; ValueError otherwise."""
    if not _is_real_number(value) or not math.isfinite(float(value)) or float(value) < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    return float(value)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_seed(name: str, value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= int(value) < 2**63:
        raise ValueError(f"{name} must be None or an integer in [0, 2**63), got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class LossInputs:
    """One loss call's validated inputs, in the compute dtype.

    ``z`` = scores / temperature and ``labels`` are [B, N] in ``dtype`` (float64 when the scores are
    float64 or the loss asks for it, else float32); ``out_dtype`` is the dtype of the returned
    loss (float64 for float64 scores, else float32); ``valid`` is the mask V as bool [B, N]; ``nonempty`` [B] says which rows
    have a non-empty V; ``scores`` is the caller's tensor, kept for a graph-attached zero.
    """

    scores: Tensor
    z: Tensor
    labels: Tensor
    valid: Tensor
    nonempty: Tensor
    dtype: torch.dtype
    out_dtype: torch.dtype


def compute_dtype(scores: Tensor) -> torch.dtype:
    """float64 for float64 scores, float32 for everything else (float32, bfloat16, float16)."""
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def validate(scores: object, labels: object, mask: object = None) -> tuple[Tensor, Tensor, Tensor]:
    """Check the call contract and return ``(scores, labels, mask)`` on the scores' device.

    Raises ValueError, with the reason, for: scores that are not a floating-point 2-D tensor,
    labels or mask whose shape differs from the scores', NaN or inf labels, negative labels, a mask
    that is not boolean. Labels may be any real dtype (they are cast later); scores are not
    checked for NaN (a NaN score gives a NaN loss, as for any other torch loss).
    """
    if not isinstance(scores, Tensor):
        raise ValueError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got dtype {scores.dtype}")
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [B, N], got shape {tuple(scores.shape)}")
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.shape != scores.shape:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match scores shape {tuple(scores.shape)}"
        )
    if labels.is_complex():
        raise ValueError(f"labels must be real, got dtype {labels.dtype}")
    labels = labels.detach().to(scores.device)  # a target: no gradient flows into the labels
    if labels.is_floating_point():
        bad = ~torch.isfinite(labels)
        if bool(bad.any()):
            raise ValueError(
                f"labels contain NaN or inf ({int(bad.sum())} entries); labels must be finite grades >= 0"
            )
    if labels.dtype != torch.bool:
        neg = labels < 0
        if bool(neg.any()):
            raise ValueError(
                f"labels contain negative values ({int(neg.sum())} entries, min {labels.min().item()}); "
                "labels must be grades >= 0"
            )
    if mask is None:
        mask = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    else:
        if not isinstance(mask, Tensor):
            raise ValueError(f"mask must be a bool torch.Tensor or None, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must have dtype torch.bool, got {mask.dtype}")
        if mask.shape != scores.shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}"
            )
        mask = mask.to(scores.device)
    return scores, labels, mask


def prepare(
    scores: object,
    labels: object,
    mask: object,
    temperature: float,
    dtype: torch.dtype | None = None,
) -> LossInputs:
    """Validate, cast to the compute dtype (``dtype``, or :func:`compute_dtype` of the scores) and
    divide the scores by the temperature."""
    scores, labels, mask = validate(scores, labels, mask)
    out_dtype = compute_dtype(scores)
    dtype = dtype or out_dtype
    z = scores.to(dtype) / temperature
    return LossInputs(
        scores=scores,
        z=z,
        labels=labels.to(dtype),
        valid=mask,
        nonempty=mask.any(dim=1),
        dtype=dtype,
        out_dtype=out_dtype,
    )


# --------------------------------------------------------------------------------------------------
# masked reductions
# --------------------------------------------------------------------------------------------------


def masked_logsumexp(x: Tensor, member: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise log-sum-exp of ``x`` over the entries where ``member`` is True.

    Returns ``(lse, has)``: ``lse`` [B] and ``has`` [B] (whether the row's set is non-empty). For a
    row with an empty set ``lse`` is a finite placeholder (LSE over zeros) that carries no gradient
    to ``x``; callers must drop such rows with ``torch.where(has, ...)``.
    """
    has = member.any(dim=1)
    # Empty rows: use every entry set to 0, so the LSE and its gradient stay finite.
    filled = torch.where(member, x, torch.full_like(x, -math.inf))
    filled = torch.where(has.unsqueeze(1), filled, torch.zeros_like(x))
    return torch.logsumexp(filled, dim=1), has


def masked_softmax(x: Tensor, member: Tensor) -> Tensor:
    """Row-wise softmax of ``x`` over ``member``; entries outside it get probability 0 (rows with an
    empty set are all 0)."""
    lse, has = masked_logsumexp(x, member)
    probs = torch.exp(torch.where(member, x - lse.unsqueeze(1), torch.zeros_like(x)))
    return torch.where(member & has.unsqueeze(1), probs, torch.zeros_like(x))


def masked_log_softmax(x: Tensor, member: Tensor) -> Tensor:
    """Row-wise log-softmax of ``x`` over ``member``; entries outside it are 0 (not -inf), so the
    result can be multiplied by a 0 weight safely. Use only where ``member`` is True."""
    lse, _ = masked_logsumexp(x, member)
    return torch.where(member, x - lse.unsqueeze(1), torch.zeros_like(x))


def mean_over_contributing(per_query: Tensor, contributes: Tensor, batch: LossInputs) -> Tensor:
    """Mean of ``per_query`` over the rows where ``contributes`` is True.

    When no row contributes the result is 0 and still attached to the graph (its gradient w.r.t.
    the scores is 0), so ``loss.backward()`` works on any batch.
    """
    total = torch.where(contributes, per_query, torch.zeros_like(per_query)).sum()
    count = contributes.sum().clamp(min=1).to(per_query.dtype)
    return total / count + graph_zero(batch)


def graph_zero(batch: LossInputs) -> Tensor:
    """A zero of the compute dtype that is attached to the scores' graph."""
    return batch.scores.sum().to(batch.dtype) * 0.0


# --------------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------------


class RankingLoss(nn.Module):
    """Base of every loss: holds the shared parameters and runs validation before the loss body.

    Subclasses set ``name`` and, for extra keyword parameters, ``extra_params``; they implement
    ``compute(batch) -> Tensor``. The returned scalar is float64 when the scores are float64 and
    float32 otherwise (also for bfloat16/float16 scores). ``internal_dtype`` forces the compute
    dtype (``sycl_w2`` uses float64); None means float32, or float64 for float64 scores.
    """

    internal_dtype: ClassVar[torch.dtype | None] = None

    name: ClassVar[str] = ""
    #: Parameters of this loss beyond :data:`SHARED_PARAMS`.
    extra_params: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        temperature: float = DEFAULT_TEMPERATURE,
        positive_threshold: float = DEFAULT_POSITIVE_THRESHOLD,
        target_temperature: float = DEFAULT_TARGET_TEMPERATURE,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        # Labels are >= 0, so a threshold <= 0 would make every candidate a positive.
        self.positive_threshold = check_positive("positive_threshold", positive_threshold)
        self.target_temperature = check_positive("target_temperature", target_temperature)

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        return SHARED_PARAMS + cls.extra_params

    def forward(self, scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        batch = prepare(scores, labels, mask, self.temperature, self.internal_dtype)
        if batch.z.numel() == 0:  # no query or no candidate: nothing contributes
            return graph_zero(batch).to(batch.out_dtype)
        return self.compute(batch).to(batch.out_dtype)

    def compute(self, batch: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, object]:
        """The parameters this loss was built with: ``build(self.name, **self.config())`` rebuilds it."""
        return {p: getattr(self, p) for p in self.param_names()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())
