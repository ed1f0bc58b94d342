"""The study directory: one place (a local path or an fsspec URL) for everything a study makes.

::

    <study_dir>/
      study.yaml                    the StudyConfig as run
      data/groups/<key>.parquet     training groups, shared by the trials with the same key
      data/queries.json             the resolved evaluation query subsets
      data/views.json               the dev and test views every trial is scored on
      tune/                         the Ray Tune experiment (Tuner.restore reads it)
      train/<trial_id>/             the Ray Train run of each trial (its checkpoints)
      trials/<trial_id>/
        trial.json                  the trial's spec, axes and full SynrankConfig
        history.json                training curve: one record per optimizer step
        dev_history.json            dev measure during training (ASHA), when on
        per_query/<split>/<coll>.json   {query_id: {measure: value}}
        eval/                       the evaluation stage's run files and metrics
        result.json                 status completed + mean metrics per split and collection
        error.txt                   a failed trial's error (status failed in status.json)
        status.json                 the status Tune ended the trial with
        model/                      the exported encoder (kept with keep_models)
      report/                       report.md, results.csv, trials.csv, plots/*.png
"""

from __future__ import annotations

from typing import Any

from synrank import storage
from synrank.storage import exists, is_local, write_json, write_text


def join(base: str, *parts: str) -> str:
    return storage.join(base, *parts)


class StudyStore:
    def __init__(self, study_dir: str) -> None:
        self.root = storage.absolute(study_dir)

    @property
    def local(self) -> bool:
        return is_local(self.root)

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    # ---- well-known places

    @property
    def config_path(self) -> str:
        return self.path("study.yaml")

    @property
    def tune_storage(self) -> str:
        """Tune's storage_path; the experiment is `<study_dir>/tune`."""
        return self.root

    @property
    def tune_dir(self) -> str:
        return self.path("tune")

    @property
    def train_storage(self) -> str:
        return self.path("train")

    @property
    def views_path(self) -> str:
        """The study's dev and test views, as the trials were scored on them (references reuse them)."""
        return self.path("data", "views.json")

    def groups_path(self, key: str) -> str:
        return self.path("data", "groups", f"{key}.parquet")

    def trial_dir(self, trial_id: str) -> str:
        return self.path("trials", trial_id)

    def trial_file(self, trial_id: str, *parts: str) -> str:
        return self.path("trials", trial_id, *parts)

    @property
    def report_dir(self) -> str:
        return self.path("report")

    # ---- io

    def exists(self, path: str) -> bool:
        return exists(path)

    def read_json(self, path: str) -> Any:
        return storage.read_json(path)

    def read_json_or(self, path: str, default: Any = None) -> Any:
        try:
            return self.read_json(path)
        except FileNotFoundError:
            return default

    def write_json(self, obj: Any, path: str) -> None:
        write_json(obj, path)

    def write_text(self, text: str, path: str) -> None:
        write_text(text, path)

    def trial_ids(self) -> list[str]:
        """Trial directories present (sorted)."""
        root = self.path("trials")
        return [n for n in storage.listdir(root) if storage.isdir(join(root, n))]

    def upload_dir(self, local_dir: str, dest: str) -> None:
        """Copy a local directory to `dest` (replacing it)."""
        storage.upload_dir(local_dir, dest)

    def remove(self, path: str) -> None:
        storage.remove(path)

    def ensure_dir(self, path: str) -> None:
        storage.makedirs(path)
