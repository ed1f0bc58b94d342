"""synrank's TorchTrainer: Ray Train's, less the placement-group cleaner where it cannot work."""

from __future__ import annotations

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from synrank.runtime import state_api_answers


class SynrankTorchTrainer(TorchTrainer):
    """A ``TorchTrainer`` that leaves out Ray Train's placement-group cleaner when the cluster's
    state API does not answer (an embedded Ray, which runs without the dashboard).

    The cleaner is a detached actor that asks the state API once a second whether the run's
    controller is alive, to remove the run's placement group if the controller died. Without a state
    API it can never tell, so it removes nothing, and logs "Failed to query Ray Train Controller
    actor state" every second of every run; on a small machine it also costs an actor start per run.
    """

    def _create_default_callbacks(self):
        callbacks = super()._create_default_callbacks()
        if state_api_answers():
            return callbacks
        return [cb for cb in callbacks if not isinstance(cb, PlacementGroupCleanerCallback)]
