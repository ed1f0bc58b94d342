"""The model card of an exported model (``model/README.md``): the hub's front matter, the base model,
the training data, the loss with its parameters, the steps, the evaluation table when there is one;
and the directory still loads in sentence-transformers with synrank's embeddings.

The export is the real one (`synrank.train.export.export_model`) from a checkpoint of the packaged
all-MiniLM-L6-v2, without Ray: only the card and the directory are under test here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from synrank.config import TrainConfig

GENERATOR = "HuggingFaceTB/SmolLM2-135M-Instruct"
N_QUERIES = 5
N_LEVELS = 3


def _groups(tmp_path: Path, source: str = "mixed") -> str:
    """N_QUERIES hand-made groups on the 3-level scale, with the stats `synrank groups` writes."""
    import pyarrow as pa

    from synrank.data import schemas
    from synrank.data.groups import GroupStats, write_groups

    rows = [{"query_id": f"q{i}", "query": f"how do swept wings stall {i}",
             "doc_ids": [f"q{i}-a", f"q{i}-b", f"q{i}-c"],
             "texts": [f"swept wings stall at the tips first {i}", f"wings in general {i}", f"boiling water {i}"],
             "grades": [2.0, 1.0, 0.0], "sources": [source, source, "bm25"]} for i in range(N_QUERIES)]
    stats = GroupStats(source=source, n_groups=N_QUERIES, n_passages=3 * N_QUERIES,
                       sources={source: 2 * N_QUERIES, "bm25": N_QUERIES}, n_levels=N_LEVELS)
    path = str(tmp_path / f"{source}.parquet")
    write_groups(pa.Table.from_pylist(rows, schema=schemas.TRAINING_GROUPS), path, stats)
    return path


def _resolved(groups: str, out: str, **train) -> TrainConfig:
    from synrank.train.trainer import resolve

    return resolve(TrainConfig(**{"batch_size": 2, **train}), groups, out)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run directory as training leaves it: the model exported with its card, the resolved config."""
    import torch

    from synrank.encoder import BiEncoder
    from synrank.train.export import export_model, write_config
    from synrank.train.loop import MODEL_FILE

    root = tmp_path_factory.mktemp("card")
    out = str(root / "run")
    config = _resolved(_groups(root), out, loss="wasserstein", loss_params={"p": 2, "temperature": 0.1},
                       batch_size=2, max_steps=7, lr=3e-5)
    ckpt = root / "ckpt"
    ckpt.mkdir()
    torch.save(BiEncoder(config.encoder).state_dict(), ckpt / MODEL_FILE)
    model_dir = export_model(str(ckpt), config, out, generator=GENERATOR)
    write_config(config, out)
    return config, out, model_dir


def test_card_names_base_model_data_loss_and_steps(exported):
    config, _, model_dir = exported
    card = (Path(model_dir) / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "sentence-similarity"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"  # the packaged default, by hub name
    assert {"sentence-transformers", "dense-retrieval", "synrank", "loss:wasserstein",
            "labels:mixed"} <= set(meta["tags"])
    # the loss trained, with the parameters given and the ones it filled in (the 3-level scale's threshold)
    assert "`wasserstein` (`synrank.losses`)" in card
    assert "- `p` = 2" in card and "- `temperature` = 0.1" in card
    assert "- `positive_threshold` = 2" in card and "- `target_temperature` = 1" in card
    # the data
    assert "| label source | `mixed` |" in card
    assert f"| relevance levels | {N_LEVELS} |" in card
    assert f"| generator | `{GENERATOR}` |" in card
    assert f"| training queries | {N_QUERIES} |" in card
    assert "| passages per query (group size) | 3 |" in card
    assert f"| passages by origin | `bm25 {N_QUERIES}, mixed {2 * N_QUERIES}` |" in card
    # the schedule
    assert "| steps | 7 |" in card and "| learning rate | 3e-05 |" in card
    assert "| batch size (queries per worker per step) | 2 |" in card
    assert "No evaluation was run" in card


def test_card_follows_the_config_not_a_template(tmp_path):
    """Each loss's card names that loss and that loss's own parameters, and no other loss."""
    from synrank.losses import available, params
    from synrank.train.model_card import card_facts, render

    groups = _groups(tmp_path)
    for loss in ("infonce", "rand1lh", "jointlh"):
        card = render(card_facts(_resolved(groups, str(tmp_path / loss), loss=loss, seed=11, max_steps=3)))
        assert f"loss:{loss}" in _front_matter(card)["tags"]
        assert f"`{loss}` (`synrank.losses`)" in card
        assert all(f"`{other}` (`synrank.losses`)" not in card for other in available() if other != loss)
        named = {line.split("`")[1] for line in card.splitlines() if line.startswith("- `")}
        assert named == set(params(loss))
    rand1lh = render(card_facts(_resolved(groups, str(tmp_path / "r"), loss="rand1lh", seed=11)))
    assert "- `seed` = 11" in rand1lh  # the loop passes the run's seed to a loss that samples


def test_card_of_human_labels_has_no_generator_and_a_local_base_model_is_not_a_hub_id(tmp_path):
    from synrank.train.model_card import card_facts, render

    local = tmp_path / "my-encoder"
    config = _resolved(_groups(tmp_path, source="human"), str(tmp_path / "out"),
                       encoder={"model": str(local)}, max_steps=2)
    card = render(card_facts(config))
    assert "base_model" not in _front_matter(card)  # the hub takes model ids only
    assert f"from `{local}`" in card
    assert "| label source | `human` |" in card
    assert "| generator | `none (no generated passages)` |" in card


def test_card_rendered_again_carries_the_evaluation_table(exported):
    from synrank.train.export import write_model_card

    _, out, model_dir = exported
    table = ("| system | collection | ndcg@10 | recall@100 | mrr@10 |\n|---|---|---|---|---|\n"
             "| trained | synthetic-test | 0.6123 | 0.9000 | 0.5500 |\n"
             "| bm25 | synthetic-test | 0.4011 | 0.8000 | 0.3300 |")
    try:
        write_model_card(out, generator=GENERATOR, evaluation=table)
        card = (Path(model_dir) / "README.md").read_text()
        assert "## Evaluation" in card and "No evaluation was run" not in card
        assert "| trained | synthetic-test | 0.6123 | 0.9000 | 0.5500 |" in card
        assert "| bm25 | synthetic-test | 0.4011 |" in card
        # the rest of the card is rendered from the same facts as at export
        assert "`wasserstein` (`synrank.losses`)" in card and "| steps | 7 |" in card
        assert f"| generator | `{GENERATOR}` |" in card
    finally:
        write_model_card(out, generator=GENERATOR)  # as exported, for the other tests of the module


def test_exported_model_loads_in_sentence_transformers_with_our_card(exported):
    from sentence_transformers import SentenceTransformer

    from synrank.encoder import BiEncoder

    _, _, model_dir = exported
    st = SentenceTransformer(model_dir, device="cpu")
    assert st._model_card_text == (Path(model_dir) / "README.md").read_text()
    texts = ["swept wings stall at the tips first", "boiling water", "how do swept wings stall"]
    ours = BiEncoder.load(model_dir).encode(texts, "passage")
    theirs = st.encode(texts, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() < 1e-5


def test_card_is_written_to_a_storage_url(exported, s3_server):
    from synrank import storage
    from synrank.train.model_card import card_facts, render, write_card

    config, _, _ = exported
    facts = card_facts(config, generator=GENERATOR)
    url = write_card(facts, storage.join(s3_server.fresh_url("card"), "model"))
    assert url.endswith("/model/README.md")
    assert storage.read_text(url) == render(facts)


def test_pipeline_renders_the_card_with_the_generator_it_ran_and_the_result_table(exported, tmp_path):
    from synrank import storage
    from synrank.config import SynrankConfig
    from synrank.generate.layout import MANIFEST
    from synrank.pipeline import Pipeline
    from synrank.train.export import write_model_card

    _, out, model_dir = exported
    run = tmp_path / "run"
    run.mkdir()
    (run / "train").symlink_to(out)  # the run's train/ is the exported run
    generated = {"train": str(tmp_path / "generate" / "train")}
    storage.write_json({"model": "the-generator-generate-recorded"}, storage.join(generated["train"], MANIFEST))
    pipe = Pipeline(SynrankConfig(run_dir=str(run)))
    card_file = Path(model_dir) / "README.md"
    try:
        pipe.model_card(generated)
        card = card_file.read_text()
        assert "| generator | `the-generator-generate-recorded` |" in card and "No evaluation was run" in card
        pipe.model_card(generated, evaluation="| system | ndcg@10 |\n|---|---|\n| trained | 0.7777 |")
        card = card_file.read_text()
        assert "| trained | 0.7777 |" in card and "No evaluation was run" not in card
        pipe.model_card({})  # no generation in this run: the card does not invent a generator
        assert "| generator | not recorded |" in card_file.read_text()
    finally:
        write_model_card(out, generator=GENERATOR)
