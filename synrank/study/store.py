"""The study directory: one place (a local path or an fsspec URL) for everything a study makes.

::

    <study_dir>/
      study.yaml                    the StudyConfig as run
      data/groups/<key>.parquet     training groups, shared by the trials with the same key
      data/queries.json             the resolved evaluation query subsets
      tune/                         the Ray Tune experiment (Tuner.restore reads it)
      train/<trial_id>/             the Ray Train run of each trial (its checkpoints)
      trials/<trial_id>/
        trial.json                  the trial's spec, axes and full RunConfig
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

import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

import fsspec

from synrank.data.atomic import exists, is_local, write_json, write_text


def join(base: str, *parts: str) -> str:
    if is_local(base):
        return str(Path(base.removeprefix("file://")).joinpath(*parts))
    return posixpath.join(base.rstrip("/"), *parts)


class StudyStore:
    def __init__(self, study_dir: str) -> None:
        if is_local(study_dir):
            study_dir = str(Path(study_dir.removeprefix("file://")).expanduser().resolve())
        self.root = study_dir

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
        with fsspec.open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)

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
        fs, p = fsspec.core.url_to_fs(root)
        if not fs.exists(p):
            return []
        return sorted(posixpath.basename(x.rstrip("/")) for x in fs.ls(p, detail=False) if fs.isdir(x))

    def upload_dir(self, local_dir: str, dest: str) -> None:
        """Copy a local directory to `dest` (replacing it)."""
        if is_local(dest):
            target = Path(dest.removeprefix("file://"))
            if target.resolve() == Path(local_dir).resolve():
                return
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(local_dir, target)
        else:
            fs, p = fsspec.core.url_to_fs(dest)
            if fs.exists(p):
                fs.rm(p, recursive=True)
            fs.put(local_dir.rstrip("/") + "/", p, recursive=True)

    def remove(self, path: str) -> None:
        fs, p = fsspec.core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p, recursive=True)

    def ensure_dir(self, path: str) -> None:
        if is_local(path):
            os.makedirs(path.removeprefix("file://"), exist_ok=True)
