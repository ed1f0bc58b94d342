"""The one TorchTrainer builder: a plain run and a study trial get the same Ray Train settings.

No trainer is started and no Ray runs: the groups' Ray Dataset is stubbed out of the trainer's
arguments, everything else is the RunConfig, ScalingConfig and TorchConfig that ``fit`` and a
study trial (``synrank.study.trial._fit``) would run with.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace

import pytest

from synrank.config import TrainConfig
from synrank.storage import join
from synrank.study.store import StudyStore
from synrank.train import trainer as trainer_module


@pytest.fixture(autouse=True)
def no_groups_dataset(monkeypatch):
    monkeypatch.setattr(trainer_module, "groups_inputs",
                        lambda config, groups_path, out_dir: {"train_loop_config": {"out_dir": out_dir}})


class LocalQueue(queue.Queue):
    """Stands in for ``ray.util.queue.Queue``: the trial's report queue, in this process."""

    actor = None

    def __init__(self, actor_options=None) -> None:
        super().__init__()


def trial_trainer(monkeypatch, train: TrainConfig, store: StudyStore, extra_resources: dict[str, float]):
    """The trainer a study trial fits, caught before it starts."""
    import ray
    import ray.util.queue

    from synrank.study.trial import _fit

    built = {}
    build = trainer_module.build_trainer

    def catch(*args, **kwargs):
        built["trainer"] = build(*args, **kwargs)
        return SimpleNamespace(fit=lambda: "fitted")

    monkeypatch.setattr(trainer_module, "build_trainer", catch)
    monkeypatch.setattr(ray.util.queue, "Queue", LocalQueue)
    monkeypatch.setattr(ray, "kill", lambda actor: None)  # the queue's actor, which LocalQueue has not
    result = _fit(SimpleNamespace(trial_id="infonce_L2_human_s0"), train, "groups.parquet", store.path("trials", "t"),
                  store, report=lambda item: None, extra_resources=extra_resources)
    assert result == "fitted"
    return built["trainer"]


def test_a_study_trial_gets_the_plain_runs_checkpoint_failure_and_worker_settings(monkeypatch, tmp_path):
    train = TrainConfig(num_workers=2, cpus_per_worker=1, max_failures=3, keep_checkpoints=2)
    store = StudyStore(str(tmp_path / "study"))
    plain = trainer_module.build_trainer(train, "groups.parquet", str(tmp_path / "run"))
    trial = trial_trainer(monkeypatch, train, store, {"trial_slot": 1.0})

    for t in (plain, trial):
        assert t.run_config.failure_config.max_failures == 3
        assert t.run_config.checkpoint_config.num_to_keep == 2
        assert (t.scaling_config.num_workers, t.scaling_config.use_gpu) == (2, False)
        assert t.backend_config.backend == "gloo"
    assert plain.scaling_config.resources_per_worker == {"CPU": 1}
    assert trial.scaling_config.resources_per_worker == {"CPU": 1, "trial_slot": 1.0}

    assert (plain.run_config.name, plain.run_config.storage_path) == ("train", join(str(tmp_path / "run"), "ray"))
    assert (trial.run_config.name, trial.run_config.storage_path) == ("infonce_L2_human_s0", store.train_storage)
    assert [type(c).__name__ for c in trial.run_config.callbacks] == ["QueueReportCallback"]


def test_inside_a_tune_trial_reports_go_to_tune_unless_callbacks_are_given(monkeypatch, tmp_path):
    import ray.tune.integration.ray_train
    from ray.train import UserCallback

    class TuneReportCallback(UserCallback):  # the real one needs a live Tune session
        pass

    monkeypatch.setattr(ray.tune.integration.ray_train, "TuneReportCallback", TuneReportCallback)
    monkeypatch.setattr(trainer_module, "_in_tune_trial", lambda: True)
    train = TrainConfig(num_workers=1)
    default = trainer_module.build_trainer(train, "groups.parquet", str(tmp_path))
    assert [type(c) for c in default.run_config.callbacks] == [TuneReportCallback]

    own = UserCallback()
    for kwargs in ({"callbacks": [own]}, {"run_config_overrides": {"callbacks": [own]}}):
        assert trainer_module.build_trainer(train, "groups.parquet", str(tmp_path), **kwargs).run_config.callbacks == [own]
