"""train.cpu_amp: bf16 autocast on CPU workers, refused on CPUs without native bf16; the encoder runs
in bf16 while scores and the loss stay fp32, so a step's loss is close to, but not bit-equal with,
the fp32 step's."""

from __future__ import annotations

import pytest
import torch

from synrank.config import TrainConfig
from synrank.train import loop
from test_train import _encoder, _hand_groups, tiny_encoder  # noqa: F401  (tiny_encoder: a session fixture)


def test_cpu_amp_is_off_by_default_and_bf16_when_on(monkeypatch):
    cpu = torch.device("cpu")
    assert loop.autocast_settings(TrainConfig(), cpu) == (False, torch.bfloat16)
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    assert loop.autocast_settings(TrainConfig(cpu_amp=True), cpu) == (True, torch.bfloat16)


def test_cpu_amp_is_refused_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="train.cpu_amp"):
        loop.autocast_settings(TrainConfig(cpu_amp=True), torch.device("cpu"))


def test_pooled_embeddings_are_fp32_under_autocast(tiny_encoder):  # noqa: F811
    from synrank.encoder import BiEncoder

    encoder = BiEncoder(_encoder(tiny_encoder))
    features = encoder.tokenize(["supersonic flow over a wedge", "flutter of a panel"], "passage")
    linear_out = []
    first_linear = next(m for m in encoder.model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda module, args, out: linear_out.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = encoder(features)
    assert linear_out == [torch.bfloat16]  # the transformer's matmuls really ran in bf16 ...
    assert emb.dtype == torch.float32  # ... and the embeddings are fp32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), rtol=0, atol=1e-5)


@pytest.mark.skipif(not loop.cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_a_cpu_amp_run_trains_close_to_the_fp32_run(tiny_encoder, tmp_path):  # noqa: F811
    groups = _hand_groups(tmp_path, n=6)
    settings = dict(encoder=_encoder(tiny_encoder), batch_size=3, max_steps=3, lr=1e-4, checkpoint_every=100,
                    seed=5, dropout=0.0)
    fp32, _ = loop.run(TrainConfig(**settings), groups)
    bf16, _ = loop.run(TrainConfig(cpu_amp=True, **settings), groups)
    fp32_losses = torch.tensor([h["loss"] for h in fp32["history"]])
    bf16_losses = torch.tensor([h["loss"] for h in bf16["history"]])
    assert not torch.equal(fp32_losses, bf16_losses)  # autocast was on
    torch.testing.assert_close(bf16_losses, fp32_losses, rtol=0.03, atol=0.02)


def test_bf16_weights_pool_and_normalise_in_fp32(tiny_encoder):  # noqa: F811
    from synrank.encoder import BiEncoder

    encoder = BiEncoder(_encoder(tiny_encoder)).to(torch.bfloat16)
    features = encoder.tokenize(["shock wave boundary layer interaction"], "query")
    emb = encoder(features)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-5)
