"""WiSE-FT at export (`train.wise_ft_alpha`): the exported weights lie on the line between the base
encoder's and the fine-tuned checkpoint's, at the configured point; 1 exports the checkpoint as
trained. The export is the real one, from a checkpoint of the packaged all-MiniLM-L6-v2 whose
weights were moved by hand (no training is needed to test the interpolation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synrank.config import TrainConfig

TEXTS = ["how do swept wings stall", "boundary layer transition on a flat plate"]


def _checkpoint(tmp_path, encoder) -> tuple[str, dict[str, torch.Tensor]]:
    """A 'fine-tuned' state: every floating tensor of the base moved by a seeded random step."""
    from synrank.train.loop import MODEL_FILE

    gen = torch.Generator().manual_seed(0)
    tuned = {name: (value + 0.02 * torch.randn(value.shape, generator=gen) if value.is_floating_point() else value)
             for name, value in encoder.state_dict().items()}
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save(tuned, ckpt / MODEL_FILE)
    return str(ckpt), tuned


@pytest.fixture(scope="module")
def base():
    from synrank.encoder import BiEncoder

    return BiEncoder(TrainConfig().encoder)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.25])
def test_exported_weights_are_alpha_of_the_way_from_base_to_checkpoint(tmp_path, base, alpha):
    from synrank.encoder import BiEncoder
    from synrank.train.export import export_model

    ckpt, tuned = _checkpoint(tmp_path, base)
    config = TrainConfig(wise_ft_alpha=alpha)
    model_dir = export_model(ckpt, config, str(tmp_path / "run"))
    exported = BiEncoder.load(model_dir).state_dict()
    start = base.state_dict()
    name = "model.encoder.layer.0.attention.self.query.weight"
    expected = start[name] + alpha * (tuned[name] - start[name])
    torch.testing.assert_close(exported[name], expected, rtol=0, atol=1e-6)
    # the integer position ids are not interpolated
    ids = [n for n, v in exported.items() if not v.is_floating_point()]
    assert all(torch.equal(exported[n], tuned[n]) for n in ids)
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert f"| WiSE-FT alpha (weight of the fine-tuned model against the base) | {alpha:g} |" in card


def test_half_way_embeddings_differ_from_both_ends(tmp_path, base):
    from synrank.encoder import BiEncoder
    from synrank.train.export import export_model

    ckpt, _ = _checkpoint(tmp_path, base)
    tuned_dir = export_model(ckpt, TrainConfig(), str(tmp_path / "tuned"))
    mixed_dir = export_model(ckpt, TrainConfig(wise_ft_alpha=0.5), str(tmp_path / "mixed"))
    e_base = base.encode(TEXTS, "passage")
    e_tuned = BiEncoder.load(tuned_dir).encode(TEXTS, "passage")
    e_mixed = BiEncoder.load(mixed_dir).encode(TEXTS, "passage")
    assert not np.allclose(e_mixed, e_tuned, atol=1e-4)
    assert not np.allclose(e_mixed, e_base, atol=1e-4)


def test_a_checkpoint_of_another_architecture_is_refused(base):
    from synrank.train.export import interpolate_weights

    tuned = dict(base.state_dict())
    tuned.pop(next(iter(tuned)))
    with pytest.raises(ValueError, match="does not match the base encoder"):
        interpolate_weights(base.state_dict(), tuned, 0.5)


def test_alpha_outside_zero_one_is_a_config_error():
    from synrank.config import ConfigError, build

    with pytest.raises(ConfigError, match="wise_ft_alpha"):
        build(TrainConfig, {"wise_ft_alpha": 1.5}, "train.yaml")
    with pytest.raises(ConfigError, match="wise_ft_alpha"):
        build(TrainConfig, {"wise_ft_alpha": 0}, "train.yaml")
