"""`synrank study`: which objective, how many relevance levels, which labels?

A study is a Ray Tune experiment whose trials each build training groups, fit a Ray Train
``TorchTrainer`` and evaluate the exported encoder on dev and test collections; its report says
what won, by how much, and whether the difference is significant.

>>> from synrank.study import load_study, run_study, write_report
>>> study = load_study("jobs/configs/study-tiny.yaml", ["space.seeds=[0,1]"])   # doctest: +SKIP
>>> result = run_study(study)             # resumes if study_dir holds the same study  # doctest: +SKIP
>>> result.report["markdown"], result.count("failed")                              # doctest: +SKIP
>>> write_report("runs/study-tiny")       # rebuild the report from the files           # doctest: +SKIP

Modules: ``config`` (StudyConfig), ``space`` (trials), ``trial`` (the Tune trainable),
``driver`` (run_study), ``report`` / ``plots`` (tables and PNGs), ``collections`` (evaluation query
subsets, in-process scoring), ``synthetic`` (generation once for the training queries),
``store`` (the study directory layout), ``cli`` (``synrank study``).
"""

from synrank.study.config import StudyConfig
from synrank.study.load import load_study

__all__ = ["StudyConfig", "load_study", "run_study", "write_report"]


def __getattr__(name: str):
    # Ray, torch and matplotlib load only when a study runs or a report is written.
    if name == "run_study":
        from synrank.study.driver import run_study

        return run_study
    if name == "write_report":
        from synrank.study.report import write_report

        return write_report
    raise AttributeError(name)
