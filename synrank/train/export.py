"""What a finished run leaves in its output directory:

- ``model/``: a sentence-transformers directory (``SentenceTransformer(path)`` loads it and gives
  the same embeddings as ``synrank.encoder.BiEncoder.load(path)``), from the final checkpoint, with
  its model card ``model/README.md`` (`synrank.train.model_card`: base model, training data, loss,
  steps; ``write_model_card`` renders it again with what a later stage knows, e.g. the evaluation);
- ``train_config.yaml``: the resolved training config (every default filled in, the groups path,
  the group size and the number of steps actually used);
- ``curve.json`` (per-step metrics: loss, lr, examples/s, ...) and ``curve.png`` (loss per step,
  learning rate on a second axis).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import torch
import yaml

from synrank import storage
from synrank.config import TrainConfig, to_yaml
from synrank.storage import write_json, write_text

MODEL_DIR = "model"
CONFIG_FILE = "train_config.yaml"
CURVE_JSON = "curve.json"
CURVE_PNG = "curve.png"


def export_model(checkpoint_dir: str, config: TrainConfig, out_dir: str, *, generator: str | None = None) -> str:
    """Load the encoder weights of a checkpoint and write them as a sentence-transformers dir, with
    its model card (`generator`: the LLM that wrote synthetic training passages, when known)."""
    from synrank.encoder import BiEncoder
    from synrank.train.loop import MODEL_FILE
    from synrank.train.model_card import card_facts, write_card

    encoder = BiEncoder(config.encoder)
    state = torch.load(os.path.join(checkpoint_dir, MODEL_FILE), map_location="cpu")
    if config.wise_ft_alpha < 1.0:
        state = interpolate_weights(encoder.state_dict(), state, config.wise_ft_alpha)
    encoder.load_state_dict(state)
    model_dir = save_encoder(encoder, storage.join(out_dir, MODEL_DIR))
    write_card(card_facts(config, generator=generator), model_dir)
    return model_dir


def interpolate_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor],
                        alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., 2022): ``alpha * tuned + (1 - alpha) * base`` for every floating
    tensor; integer buffers (position ids) are taken from `tuned`. Fine-tuning on a few hundred
    queries moves a pretrained encoder away from what it knew; the interpolation keeps much of the
    in-domain gain and the zero-shot quality together."""
    if base.keys() != tuned.keys():
        missing, extra = sorted(base.keys() - tuned.keys()), sorted(tuned.keys() - base.keys())
        raise ValueError(f"WiSE-FT: the checkpoint does not match the base encoder (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    return {name: (torch.lerp(base[name].to(value.dtype), value, alpha) if value.is_floating_point() else value)
            for name, value in tuned.items()}


def write_model_card(out_dir: str, *, generator: str | None = None, evaluation: str | None = None) -> str:
    """Render the card of the model exported in `out_dir` again, from the resolved config written
    beside it, with the facts a later stage knows: the generator, the evaluation table (markdown)."""
    from synrank.config import build
    from synrank.train.model_card import card_facts, write_card

    config_url = storage.join(out_dir, CONFIG_FILE)
    config = build(TrainConfig, yaml.safe_load(storage.read_text(config_url)) or {}, config_url)
    return write_card(card_facts(config, generator=generator, evaluation=evaluation), storage.join(out_dir, MODEL_DIR))


def save_encoder(encoder, url: str) -> str:
    """``encoder.save`` to a local path or URL; remote: written locally, then uploaded (readers on
    other nodes get it with ``storage.local_copy``)."""
    if storage.is_local(url):
        encoder.save(url)
        return url
    with tempfile.TemporaryDirectory(prefix="synrank-export-") as tmp:
        encoder.save(tmp)
        storage.upload_dir(tmp, url)
    return url


def write_config(config: TrainConfig, out_dir: str) -> str:
    path = storage.join(out_dir, CONFIG_FILE)
    write_text(to_yaml(config), path)
    return path


def write_curve(history: Sequence[dict[str, Any]], out_dir: str, title: str = "") -> tuple[str, str]:
    """curve.json and curve.png of the per-step metrics."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path = storage.join(out_dir, CURVE_JSON)
    png_path = storage.join(out_dir, CURVE_PNG)
    write_json({"steps": list(history)}, json_path)
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [h["loss"] for h in history], color="tab:blue", marker="." if len(steps) < 60 else None,
            label="loss")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    if history and "lr" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.7, label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(title or "training curve")
    fig.tight_layout()
    try:
        with storage.atomic_path(png_path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return json_path, png_path
