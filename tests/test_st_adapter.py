"""synrank.st: synrank's losses inside sentence-transformers, on real Cranfield groups.

The reference for every check is computed here, independently of the adapter: embeddings from
``model.encode``, the in-batch ``[B, B*k]`` score matrix and its labels and mask built by hand, and
``synrank.losses.build(name, ...)`` applied to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from synrank import st
from synrank.data.readers import load_collection
from synrank.losses import available, build
from synrank.models import resolve_encoder
from synrank.text import format_passage

K = 4  # passages per row
N_LEVELS = 5  # Cranfield grades 0..4
THRESHOLD = 3  # synrank.data.levels.positive_threshold(5)
TEMPERATURE = 0.05
MAX_SEQ_LENGTH = 32


@dataclass
class Row:
    query: str
    passages: list[str]
    grades: list[float]


@pytest.fixture(scope="module")
def rows(shared_data) -> list[Row]:
    """Eight Cranfield queries, each with K judged passages spanning its grades (at least one
    positive and one non-positive); a duplicate passage is planted across rows 0 and 1."""
    collection = load_collection(shared_data / "cranfield")
    queries = dict(zip(*(collection.queries.column(c).to_pylist() for c in ("query_id", "text"))))
    corpus = {d: format_passage(t, x) for d, t, x in zip(*(collection.corpus.column(c).to_pylist()
                                                          for c in ("doc_id", "title", "text")))}
    out = []
    for qid, judged in collection.qrels_dict().items():
        ranked = sorted(judged.items(), key=lambda item: (-item[1], item[0]))
        grades = [g for _, g in ranked]
        if len(ranked) < K or grades[0] < THRESHOLD or grades[-1] >= THRESHOLD:
            continue
        chosen = [ranked[i] for i in (0, 1, -2, -1)]
        out.append(Row(queries[qid], [corpus[d] for d, _ in chosen], [float(g) for _, g in chosen]))
        if len(out) == 8:
            break
    assert len(out) == 8
    out[1].passages[3] = out[0].passages[0]  # the same document in two groups
    return out


def load_model():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_encoder(), device="cpu")
    model.max_seq_length = MAX_SEQ_LENGTH
    return model


@pytest.fixture(scope="module")
def model():
    return load_model()


def batch_inputs(model, rows: list[Row]) -> tuple[list[dict], torch.Tensor]:
    """What the default collator hands the loss: [query, passage_1 .. passage_K] features, [B, K] labels."""
    features = [model.preprocess([r.query for r in rows])]
    features += [model.preprocess([r.passages[j] for r in rows]) for j in range(K)]
    return features, torch.tensor([r.grades for r in rows])


def reference_inputs(model, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores, labels and mask [B, B*K]: slot i*K + j is passage j of row i; a row's own passages carry
    its grades; another row's copy of one of a row's own passages is masked for that row."""
    q = model.encode([r.query for r in rows], convert_to_tensor=True)
    p = model.encode([t for r in rows for t in r.passages], convert_to_tensor=True)
    scores = q.float() @ p.float().T
    b = len(rows)
    labels = torch.zeros(b, b * K)
    mask = torch.ones(b, b * K, dtype=torch.bool)
    for i, row in enumerate(rows):
        for c in range(b):
            for j, text in enumerate(rows[c].passages):
                if c == i:
                    labels[i, c * K + j] = row.grades[j]
                elif text in row.passages:
                    mask[i, c * K + j] = False
    return scores, labels, mask


@pytest.fixture(scope="module")
def reference(model, rows):
    """``reference_inputs`` of the untrained model."""
    return reference_inputs(model, rows)


def adapter_loss(loss: st.SynrankLoss, model, rows: list[Row], labels: torch.Tensor | None = None) -> torch.Tensor:
    model.eval()
    features, grades = batch_inputs(model, rows)
    with torch.no_grad():
        return loss(features, grades if labels is None else labels)


@pytest.mark.parametrize("name", ["wasserstein", "lsepair", "jointlh"])
def test_equals_synrank_loss_on_the_in_batch_scores(model, rows, reference, name):
    loss = st.loss_class(name)(model, n_levels=N_LEVELS, temperature=TEMPERATURE)
    scores, labels, mask = reference
    expected = build(name, temperature=TEMPERATURE, positive_threshold=THRESHOLD)(scores, labels, mask)
    got = adapter_loss(loss, model, rows)
    assert got.item() > 0
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_every_registered_loss_equals_synrank_loss(model, rows, reference):
    scores, labels, mask = reference
    features, grades = batch_inputs(model, rows)
    keys = st.passage_keys(features[1:])
    model.eval()
    with torch.no_grad():
        embeddings = [model(f)["sentence_embedding"] for f in features]
    for name in available():
        params = {"seed": 3} if name == "rand1lh" else {}
        loss = st.loss_class(name)(model, positive_threshold=THRESHOLD, **params)
        expected = build(name, positive_threshold=THRESHOLD, **params)(scores, labels, mask)
        got = loss.compute_loss_from_embeddings(embeddings, grades, keys)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), name


def test_copy_of_own_passage_is_masked_not_a_negative(model, rows, reference):
    scores, labels, mask = reference
    assert not mask[0, 1 * K + 3] and not mask[1, 0]  # the planted copy, for both rows
    reference = build("lsepair", temperature=TEMPERATURE, positive_threshold=THRESHOLD)
    unmasked = reference(scores, labels).item()
    got = adapter_loss(st.LSEPairLoss(model, n_levels=N_LEVELS, temperature=TEMPERATURE), model, rows).item()
    assert got == pytest.approx(reference(scores, labels, mask).item(), rel=1e-5)
    assert abs(got - unmasked) > 1e-4


def test_grades_belong_to_their_rows(model, rows):
    loss = st.LSEPairLoss(model, n_levels=N_LEVELS, temperature=TEMPERATURE)
    _, grades = batch_inputs(model, rows)
    base = adapter_loss(loss, model, rows, grades).item()
    shifted = adapter_loss(loss, model, rows, grades.roll(1, dims=0)).item()
    assert abs(base - shifted) > 1e-3


def test_wrong_scores_column_raises(model, rows):
    loss = st.WassersteinLoss(model, n_levels=N_LEVELS)
    _, grades = batch_inputs(model, rows)
    with pytest.raises(ValueError, match=r"one grade per passage column.*\(8, 4\).*\(8, 3\)"):
        adapter_loss(loss, model, rows, grades[:, :3])
    with pytest.raises(ValueError, match="needs the grades"):
        loss(batch_inputs(model, rows)[0], None)
    off_scale = grades.clone()
    off_scale[2, 1] = 7.0
    with pytest.raises(ValueError, match=r"grade 7.0 .* n_levels=5 scale"):
        adapter_loss(loss, model, rows, off_scale)


def test_threshold_and_parameters():
    assert st.LSEPairLoss(None).positive_threshold == 1.0
    assert st.LSEPairLoss(None, n_levels=4).positive_threshold == 2.0
    assert st.LSEPairLoss(None, n_levels=3).positive_threshold == 2.0
    assert st.LSEPairLoss(None, positive_threshold=2.5).positive_threshold == 2.5
    with pytest.raises(ValueError, match="not both"):
        st.LSEPairLoss(None, n_levels=4, positive_threshold=2)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'p'.*valid parameters"):
        st.LSEPairLoss(None, p=2)
    with pytest.raises(ValueError, match="n_levels"):
        st.WassersteinLoss(None, n_levels=9)
    config = st.WassersteinLoss(None, temperature=0.1, p=2).get_config_dict()
    assert config["loss"] == "wasserstein" and config["temperature"] == 0.1 and config["p"] == 2
    with pytest.raises(TypeError):
        st.SynrankLoss(None)


def test_one_class_per_registered_loss():
    from synrank.losses import loss_class
    from synrank.st import LSEPairLoss, WassersteinLoss  # real attributes

    assert WassersteinLoss.loss_name == "wasserstein" and LSEPairLoss.loss_name == "lsepair"
    for name in available():
        cls = st.loss_class(name)
        assert cls.__name__ == loss_class(name).__name__ and cls.__name__.endswith("Loss")
        assert getattr(st, cls.__name__) is cls and cls.__name__ in st.__all__ and cls.__name__ in dir(st)
    with pytest.raises(ValueError, match="available losses"):
        st.loss_class("nope")


@pytest.mark.slow
def test_sentence_transformer_trainer(rows, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model = load_model()
    dataset = Dataset.from_dict({"query": [r.query for r in rows],
                                 **{f"passage_{j + 1}": [r.passages[j] for r in rows] for j in range(K)},
                                 "scores": [r.grades for r in rows]})
    loss = st.LSEPairLoss(model, n_levels=N_LEVELS, temperature=TEMPERATURE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-4,
        warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "training did not change the weights"

    scores, labels, mask = reference_inputs(model, rows)
    expected = build("lsepair", temperature=TEMPERATURE, positive_threshold=THRESHOLD)(scores, labels, mask)
    assert adapter_loss(loss, model, rows).item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)


def test_in_batch_labels_match_synrank_training():
    from synrank.losses.labels import label_matrices

    generator = torch.Generator().manual_seed(0)
    grades = torch.randint(0, 4, (5, 3), generator=generator).float()
    keys = torch.randint(1, 6, (5, 3), generator=generator)  # few distinct keys: many copies across rows
    labels, mask = st.in_batch_labels(grades, keys)
    expected_labels, expected_mask = label_matrices(grades, torch.ones(5, 3, dtype=torch.bool), keys)
    assert torch.equal(labels, expected_labels) and torch.equal(mask, expected_mask)
    assert not mask.all()


class TinyEncoder(torch.nn.Module):
    """A bag-of-tokens encoder: enough for the gathering test, fast to run in two processes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.EmbeddingBag(40, 8, mode="mean")
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, features):
        return {"sentence_embedding": self.embed(features["input_ids"])}


def tiny_batch(rows: slice) -> tuple[list[dict], torch.Tensor]:
    """Four rows of a query and three passages (token ids), grades on a 4-level scale; passage 0 of
    row 0 reappears as passage 2 of row 3, so the copy crosses devices when the rows are split."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (4, 4, 5), generator=generator)  # [column, row, token]
    ids[3, 3] = ids[1, 0]
    grades = torch.tensor([[3, 1, 0], [2, 2, 0], [0, 3, 1], [1, 0, 3]], dtype=torch.float32)
    features = [{"input_ids": ids[c, rows], "attention_mask": torch.ones_like(ids[c, rows])} for c in range(4)]
    return features, grades[rows]


GATHERED = ("lsepair", "sycl_w2")  # a per-query and the batch-level loss


def gathered_step(rank: int, world: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    per_rank = 4 // world
    results = {}
    for name in GATHERED:
        model = TinyEncoder()
        value = st.loss_class(name)(model, n_levels=4, gather_across_devices=True)(
            *tiny_batch(slice(rank * per_rank, (rank + 1) * per_rank)))
        value.backward()
        grad = model.embed.weight.grad
        dist.all_reduce(grad)  # what DDP does, then divides by the number of devices
        results[name] = {"loss": value.detach(), "grad": grad / world}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gather_across_devices_equals_the_whole_batch(tmp_path):
    """Two CPU processes with two rows each: every device's loss is the whole batch's loss (a copy of a
    passage on the other device is masked too), and the DDP-averaged gradient is its gradient."""
    import torch.multiprocessing as mp

    mp.spawn(gathered_step, args=(2, str(tmp_path)), nprocs=2, join=True)
    for name in GATHERED:
        model = TinyEncoder()
        whole = st.loss_class(name)(model, n_levels=4)(*tiny_batch(slice(0, 4)))
        whole.backward()
        for rank in range(2):
            result = torch.load(tmp_path / f"rank{rank}.pt")[name]
            assert result["loss"].item() == pytest.approx(whole.item(), rel=1e-5), (name, rank)
            torch.testing.assert_close(result["grad"], model.embed.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_readme_example_trains(tmp_path, monkeypatch):
    """The README's sentence-transformers example runs as printed (the hub name swapped for the
    packaged copy of the same model: no hub here)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## synrank's losses in sentence-transformers", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    assert '"sentence-transformers/all-MiniLM-L6-v2"' in code
    code = code.replace('"sentence-transformers/all-MiniLM-L6-v2"', repr(resolve_encoder("default")))
    monkeypatch.chdir(tmp_path)  # the trainer writes its output folder into the working directory
    namespace: dict = {}
    exec(compile(code, "README.md (sentence-transformers example)", "exec"), namespace)
    assert type(namespace["loss"]).__name__ == "WassersteinLoss"
