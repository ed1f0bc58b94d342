"""A resumable stage (train) rerun with other settings must not resume from the checkpoints of the
earlier settings (it did: a finished training of the old settings was "resumed" at its last step and
exported as the new model); a crashed attempt with the same settings is resumed."""

from __future__ import annotations

import os

from synrank.pipeline import RunDir


def _checkpoint(run: RunDir) -> str:
    path = run.path("train", "checkpoint_000036", "state.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("weights")
    return path


def test_checkpoints_of_a_finished_run_with_other_settings_are_removed(tmp_path):
    run = RunDir(str(tmp_path))
    run.begin("train", "old")
    ckpt = _checkpoint(run)
    run.mark("train", "old", {"model": run.path("train", "model")})
    assert run.begin("train", "new") is True
    assert not os.path.exists(ckpt) and run.marker("train") is None


def test_a_crashed_attempt_is_resumed_with_the_same_settings_and_dropped_with_others(tmp_path):
    run = RunDir(str(tmp_path))
    run.begin("train", "a")
    ckpt = _checkpoint(run)  # then the process dies: no marker
    assert run.begin("train", "a") is False and os.path.exists(ckpt)
    assert run.begin("train", "b") is True and not os.path.exists(ckpt)


def test_checkpoints_without_any_record_are_kept_for_resumption(tmp_path):
    run = RunDir(str(tmp_path))
    ckpt = _checkpoint(run)  # written by a version that kept no attempt record
    assert run.begin("train", "x") is False and os.path.exists(ckpt)
