"""Loading a study: YAML plus dotted overrides, checked as a whole and configuration by configuration.

>>> study = load_study("jobs/configs/study-tiny.yaml", ["space.seeds=[0,1]"])   # doctest: +SKIP

Separate from `synrank.study.config` (what a study is) because the check expands the search space
(`synrank.study.space`), which itself builds on the config.
"""

from __future__ import annotations

import os

from synrank.config import ConfigError, apply_overrides, load_yaml
from synrank.study.config import StudyConfig, build_study
from synrank.study.space import expand


def load_study(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> StudyConfig:
    """Load a StudyConfig from YAML plus dotted overrides; problems raise ConfigError naming the key."""
    data = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    if overrides:
        data = apply_overrides(data, overrides, StudyConfig)
        where = f"{where} + overrides" if path else "overrides"
    study = build_study(data, where)
    # Every configuration must make a valid SynrankConfig; say so now, not in a trial an hour later.
    try:
        expand(study)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return study
