"""The loss registry: every loss by name, built with validated keyword parameters."""

from __future__ import annotations

from ._common import RankingLoss
from .infonce import InfoNCELoss
from .listwise import KLDivergenceLoss, WassersteinLoss
from .multipositive import JointLHLoss, LSEPairLoss, Rand1LHLoss, SumMargLHLoss
from .sycl import SyCLW2Loss

_REGISTRY: dict[str, type[RankingLoss]] = {
    cls.name: cls
    for cls in (
        InfoNCELoss,
        Rand1LHLoss,
        JointLHLoss,
        SumMargLHLoss,
        LSEPairLoss,
        KLDivergenceLoss,
        WassersteinLoss,
        SyCLW2Loss,
    )
}


def available() -> list[str]:
    """The names :func:`build` accepts, sorted."""
    return sorted(_REGISTRY)


def loss_class(name: str) -> type[RankingLoss]:
    """The class registered under ``name``; ValueError naming the valid names otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; available losses: {', '.join(available())}")
    return _REGISTRY[name]


def params(name: str) -> tuple[str, ...]:
    """The keyword parameters ``build(name, ...)`` accepts."""
    return loss_class(name).param_names()


def build(name: str, **kwargs: object) -> RankingLoss:
    """Build the loss registered under ``name`` with keyword parameters ``kwargs``.

    The result is a ``torch.nn.Module`` called as ``loss_fn(scores, labels, mask=None)`` and
    returning a scalar tensor. An unknown name, an unknown parameter or an invalid parameter value
    raises ValueError naming what is valid.

    Every loss accepts ``temperature`` (default 0.05), ``positive_threshold`` (default 1.0; training
    passes the groups' scale's threshold, `synrank.data.levels.positive_threshold`) and
    ``target_temperature`` (default 1.0), so one configuration can be swapped across losses; a
    loss ignores those it does not use (see its docstring). Loss-specific parameters: ``normalize``
    (jointlh), ``seed`` (rand1lh), ``p`` (wasserstein).
    """
    cls = loss_class(name)
    valid = cls.param_names()
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"valid parameters: {', '.join(valid)}"
        )
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"invalid parameter for loss {name!r}: {err}; valid parameters: {', '.join(valid)}") from err
