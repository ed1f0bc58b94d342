"""Training: batches and labels, the loop in-process (every loss, exact resume), two gloo processes
against one on the concatenated batch, and Ray Train runs with two CPU workers (each reading only
its shard of the groups, learning, checkpoints, export, faults).

A 2-layer cut of the packaged all-MiniLM-L6-v2 and tiny max lengths keep each step cheap on a
2-core CI box; the Ray Train behaviour does not depend on the model's depth.
"""

from __future__ import annotations

import logging

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synrank.config import EncoderConfig, GroupsConfig, TrainConfig
from synrank.losses.labels import label_matrices
from synrank.train.collate import BatchPlan, Group, GroupShard, collate
from synrank.train.loop import lr_lambda

# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """all-MiniLM-L6-v2 cut to its first 2 layers, saved as an HF directory."""
    from transformers import AutoModel, AutoTokenizer

    from synrank.models import resolve_encoder

    src = resolve_encoder("default")
    out = tmp_path_factory.mktemp("tiny-minilm")
    model = AutoModel.from_pretrained(src)
    model.encoder.layer = model.encoder.layer[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def _encoder(path: str) -> EncoderConfig:
    return EncoderConfig(model=path, max_query_length=16, max_passage_length=32)


@pytest.fixture(scope="session")
def cranfield_groups(shared_data, tmp_path_factory) -> str:
    from synrank.data.groups import build_groups, write_groups

    cfg = GroupsConfig(source="human", collection=str(shared_data / "cranfield"), qrels_levels=5, n_levels=5,
                       group_size=3, bm25_negatives=10, limit=9)
    table, stats = build_groups(cfg)
    path = str(tmp_path_factory.mktemp("groups") / "cranfield-human.parquet")
    write_groups(table, path, stats)
    return path


def _hand_groups(tmp_path: Path, n: int = 6) -> str:
    import pyarrow as pa

    from synrank.data import schemas
    from synrank.data.groups import write_groups

    rows = []
    for i in range(n):
        rows.append({"query_id": f"q{i}", "query": f"question number {i} about wings",
                     "doc_ids": [f"q{i}-a", f"q{i}-b", f"q{i}-c"],
                     "texts": [f"answer {i} about wing lift", f"partial {i} wing", f"unrelated {i} text"],
                     "grades": [3.0, 1.0, 0.0], "sources": ["synthetic"] * 3})
    path = str(tmp_path / "hand.parquet")
    write_groups(pa.Table.from_pylist(rows, schema=schemas.TRAINING_GROUPS), path)
    return path


# --------------------------------------------------------------------------------------------------
# batches, labels, schedule


def _groups(doc_ids: list[list[str]], grades: list[list[float]]) -> list[Group]:
    return [Group(f"q{i}", f"query {i}", ids, [f"t{d}" for d in ids], g)
            for i, (ids, g) in enumerate(zip(doc_ids, grades))]


def test_collate_labels_mask_and_duplicates():
    groups = _groups([["x", "y"], ["z", "x", "w"], ["u"], ["v", "t"]],
                     [[2.0, 0.0], [1.0, 0.0, 0.0], [3.0], [1.0, 1.0]])
    b0, b1 = collate(groups[:2], 3), collate(groups[2:], 3)
    assert b0.queries == ["query 0", "query 1"] and b0.passages == ["tx", "ty", "tz", "tx", "tw"]
    assert b0.slots.tolist() == [0, 1, 3, 4, 5] and b1.passages == ["tu", "tv", "tt"]
    assert b1.slots.tolist() == [0, 3, 4]
    assert b0.grades.tolist() == [[2, 0, 0], [1, 0, 0]]
    assert b1.valid.tolist() == [[True, False, False], [True, True, False]]
    # the global batch: both workers' compact data in rank order
    compact = [torch.cat([b0.grades, b1.grades]), torch.cat([b0.valid, b1.valid]),
               torch.cat([b0.doc_keys, b1.doc_keys])]
    labels, mask = label_matrices(*compact)
    assert labels.shape == (4, 12)
    # own grades on own slots, 0 elsewhere
    assert labels[0].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert labels[2, 6].item() == 3.0 and labels[3, 9:11].tolist() == [1.0, 1.0]
    # padding slots are masked for everyone
    assert not mask[:, 2].any() and not mask[:, 7].any() and not mask[:, 8].any()
    # "x" is query 0's own passage and also sits in query 1's group: that copy is masked for query 0, and vice versa
    assert not mask[0, 4] and mask[0, 3] and not mask[1, 0] and mask[1, 4]
    _, own_only = label_matrices(*compact, in_batch_negatives=False)
    assert own_only[0].tolist() == [True, True] + [False] * 10
    assert own_only[1].tolist() == [False] * 3 + [True] * 3 + [False] * 6


def test_batch_plan_is_deterministic_and_covers_each_epoch_of_the_shard():
    plan = BatchPlan(5, 2, 2, seed=3, rank=1)
    assert plan.per_epoch == 2
    epoch0 = np.concatenate([plan.indices(0), plan.indices(1)])
    assert len(set(epoch0.tolist())) == 4 and set(epoch0.tolist()) <= set(range(5))
    assert BatchPlan(5, 2, 2, seed=3, rank=1).indices(3).tolist() == plan.indices(3).tolist()
    assert plan.epoch_of(3) == 1 and plan.order(1).tolist() != plan.order(0).tolist()
    assert BatchPlan(5, 2, 2, seed=3, rank=0).order(0).tolist() != plan.order(0).tolist()
    with pytest.raises(ValueError, match="cannot fill one global batch of 4"):
        BatchPlan(1, 2, 2, seed=0)


def test_group_shard_rejects_groups_whose_lists_differ_in_length():
    import pyarrow as pa

    from synrank.data.groups import GroupsError

    table = pa.Table.from_pylist([{"query_id": "q0", "query": "q", "doc_ids": ["a", "b"], "texts": ["ta"],
                                   "grades": [1.0, 0.0]}])
    with pytest.raises(GroupsError, match="'q0'"):
        GroupShard(table, "hand.parquet")


def test_lr_schedule_warms_up_then_decays():
    f = lr_lambda(10, 0.2)
    values = [f(s) for s in range(10)]
    assert values[:3] == [0.5, 1.0, 1.0] and values[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(values[1:], values[2:]))
    assert lr_lambda(5, 0.0)(0) == 1.0


def test_gather_is_identity_without_a_process_group():
    from synrank.train.loop import gather_with_grad

    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


def test_scores_put_length_sorted_passage_chunks_back_in_their_slots(tiny_encoder):
    from synrank.encoder import BiEncoder
    from synrank.train.loop import Towers, scores_for

    words = "lift drag wing flow shock layer heat nozzle panel flutter".split()
    n = 9
    groups = [Group(f"q{i}", f"{words[i]} question", [f"d{i}-{j}" for j in range(1 + i % 3)],
                    [" ".join(words[: 1 + (i * 7 + j * 3) % 10]) for j in range(1 + i % 3)], [1.0] + [0.0] * (i % 3))
              for i in range(n)]
    batch = collate(groups, 3)
    encoder = BiEncoder(_encoder(tiny_encoder)).eval()
    with torch.no_grad():
        scores = scores_for(Towers(encoder), encoder, batch, torch.device("cpu"))
        q = encoder.embed(batch.queries, "query")
        expected = torch.zeros(n, n * 3)
        for text, slot in zip(batch.passages, batch.slots.tolist()):
            expected[:, slot] = (q @ encoder.embed([text], "passage").T)[:, 0]
    assert len(batch.passages) == 18 and scores.shape == (9, 27)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_scores_are_float32_under_amp(tiny_encoder):
    """Under autocast (AMP) the encoder may run in bf16, but the score matrix is computed in fp32:
    on CPU autocast turns a matmul into bf16 just as CUDA AMP does."""
    from synrank.encoder import BiEncoder
    from synrank.train.loop import Towers, scores_for, similarity

    q = torch.randn(3, 8) * 7
    p = torch.randn(5, 8) * 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = similarity(q, p)
        assert (q @ p.T).dtype == torch.bfloat16  # what autocast does to a plain matmul
    assert s.dtype == torch.float32 and torch.equal(s, q @ p.T)
    encoder = BiEncoder(_encoder(tiny_encoder)).eval()
    batch = collate(_groups([["a", "b"], ["c"]], [[3.0, 0.0], [2.0]]), 2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = scores_for(Towers(encoder), encoder, batch, torch.device("cpu"))
    assert scores.dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# the loop in this process


@pytest.mark.parametrize("loss", ["infonce", "rand1lh", "jointlh", "summarglh", "lsepair", "kl", "wasserstein",
                                  "sycl_w2"])
def test_every_loss_trains_three_steps(loss, tiny_encoder, tmp_path):
    from synrank.losses import available
    from synrank.train.loop import run

    assert loss in available()
    groups = _hand_groups(tmp_path, n=4)
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), loss=loss, batch_size=2, max_steps=3, lr=5e-5,
                      checkpoint_every=100)
    out, ctx = run(cfg, groups)
    losses = [h["loss"] for h in out["history"]]
    assert [h["step"] for h in out["history"]] == [1, 2, 3] and all(math.isfinite(v) for v in losses)
    assert len(ctx.reports) == 3 and all(0 <= h["loss_time_fraction"] < 1 for h in out["history"])
    assert all(h["examples_per_s"] > 0 and h["lr"] > 0 for h in out["history"])


def test_each_report_logs_one_progress_line(tiny_encoder, tmp_path, caplog):
    """Rank 0 logs where the run is at each report: step of total, epoch, loss, pace, time left."""
    from synrank.train.loop import run

    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, max_steps=3, checkpoint_every=100)
    with caplog.at_level(logging.INFO, logger="synrank.train.loop"):
        out, ctx = run(cfg, _hand_groups(tmp_path, n=4))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split(" (")[0] for line in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert "left" in lines[0] and lines[-1].endswith("done")
    assert f"loss {out['history'][-1]['loss']:.4f}" in lines[-1]


def test_progress_line_estimates_the_time_left_at_the_pace_so_far():
    from synrank.train.progress import progress_line

    metrics = {"step": 30, "epoch": 0.5, "loss": 1.0, "lr": 1e-5, "examples_per_s": 4.0}
    # 20 steps (a resume at step 10) in 100 s: 5 s a step, 70 steps to go
    assert progress_line(metrics, total=100, elapsed_s=100.0, steps_done=20).endswith("about 5 min 50 s left")
    assert progress_line({**metrics, "step": 100}, total=100, elapsed_s=100.0, steps_done=90).endswith("done")


def _fail_at_step_3_then_resume(cfg, groups, tmp_path):
    """A run of `cfg` that fails at step 3, then the run that resumes it from its checkpoints."""
    from synrank.train.loop import InjectedFault, run

    faulty = cfg.model_copy(update={"fail_at_step": 3})
    ckpts = str(tmp_path / "ckpts")
    with pytest.raises(InjectedFault):
        run(faulty, groups, checkpoints=ckpts, out_dir=str(tmp_path))
    resumed, _ = run(faulty, groups, checkpoints=ckpts, out_dir=str(tmp_path))
    return resumed


def test_fixed_seed_reproduces_and_resume_is_exact_on_one_worker(tiny_encoder, tmp_path):
    from synrank.train.loop import run

    groups = _hand_groups(tmp_path, n=6)
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, max_steps=4, lr=1e-4, checkpoint_every=2,
                      seed=7, grad_accumulation=1)
    first, _ = run(cfg, groups)
    again, _ = run(cfg, groups)
    losses = [h["loss"] for h in first["history"]]
    assert [h["loss"] for h in again["history"]] == losses
    # a run that fails at step 3 resumes from its step-2 checkpoint and gives the same losses
    resumed = _fail_at_step_3_then_resume(cfg, groups, tmp_path)
    assert resumed["resumes"] == [2]
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], losses, rtol=0, atol=1e-6)


def test_batches_prepared_ahead_train_exactly_as_batches_prepared_in_the_step(tiny_encoder, tmp_path):
    """The next batch is collated and tokenized in a background thread while a step runs; the
    losses, with grad accumulation and across an epoch boundary, are those of the plain loop."""
    from synrank.train.loop import run

    groups = _hand_groups(tmp_path, n=6)
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, grad_accumulation=2, max_steps=4, lr=1e-4,
                      checkpoint_every=100, seed=5, prefetch=True)
    ahead, _ = run(cfg, groups)
    inline, _ = run(cfg.model_copy(update={"prefetch": False}), groups)
    assert [h["epoch"] for h in ahead["history"]][-1] > 1.0
    assert [h["loss"] for h in ahead["history"]] == [h["loss"] for h in inline["history"]]


def _grads_of_one_step(encoder, batch, loss_fn, labels, mask, grad_cache_chunk=None, seed=11):
    """Parameter gradients of one micro-step, plain or with GradCache, from the same random state."""
    from synrank.train.loop import Towers, grad_cached_backward, scores_for, tokenize_batch

    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    towers = Towers(encoder)
    inputs = tokenize_batch(encoder, batch, chunk_size=grad_cache_chunk)

    def loss_of(scores):
        loss = loss_fn(scores, labels, mask)
        loss.backward()
        return loss

    if grad_cache_chunk:
        loss = grad_cached_backward(towers, encoder, batch, torch.device("cpu"), inputs, loss_of,
                                    contextlib.nullcontext)
    else:
        loss = loss_of(scores_for(towers, encoder, batch, torch.device("cpu"), inputs))
    return float(loss.detach()), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk, dropout", [(16, 0.1), (2, 0.0)])
def test_grad_cache_gives_the_gradients_of_the_plain_step(tiny_encoder, chunk, dropout):
    """GradCache (train.grad_cache_chunk) changes memory, not the step: with the plain step's chunks
    (16 texts: passage_chunks for 6 queries) and dropout on, the replayed random state gives the same
    dropout masks, hence the same loss and gradients; with chunks of 2 texts (other padding, other masks) and dropout off, the
    same up to float noise."""
    from synrank.encoder import BiEncoder
    from synrank.losses import build
    from synrank.train.loop import set_dropout

    words = "lift drag wing flow shock layer heat nozzle panel flutter".split()
    groups = [Group(f"q{i}", f"{words[i]} question", [f"d{i}-{j}" for j in range(3)],
                    [" ".join(words[: 2 + (i * 7 + j * 3) % 9]) for j in range(3)], [3.0, 1.0, 0.0])
              for i in range(6)]
    batch = collate(groups, 3)
    labels, mask = label_matrices(batch.grades, batch.valid, batch.doc_keys)
    encoder = BiEncoder(_encoder(tiny_encoder)).train()
    set_dropout(encoder, dropout)
    loss_fn = build("infonce", positive_threshold=2.0)
    plain_loss, plain = _grads_of_one_step(encoder, batch, loss_fn, labels, mask)
    cached_loss, cached = _grads_of_one_step(encoder, batch, loss_fn, labels, mask, grad_cache_chunk=chunk)
    assert plain.keys() == cached.keys() and len(plain) > 10
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    for name in plain:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    if dropout:  # the check can fail: another random state gives other masks and other gradients
        _, other = _grads_of_one_step(encoder, batch, loss_fn, labels, mask, grad_cache_chunk=chunk, seed=12)
        assert any(not torch.allclose(other[n], plain[n], rtol=1e-4, atol=1e-6) for n in plain)


def test_grad_cache_trains_as_the_plain_loop(tiny_encoder, tmp_path):
    """The loop with train.grad_cache_chunk (chunks of 2 texts, grad accumulation, an epoch
    boundary) gives the losses of the plain loop."""
    from synrank.train.loop import run

    groups = _hand_groups(tmp_path, n=6)
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, grad_accumulation=2, max_steps=3, lr=1e-4,
                      checkpoint_every=100, seed=5, dropout=0.0)
    plain, _ = run(cfg, groups)
    cached, _ = run(cfg.model_copy(update={"grad_cache_chunk": 2}), groups)
    np.testing.assert_allclose([h["loss"] for h in cached["history"]], [h["loss"] for h in plain["history"]],
                               rtol=1e-4, atol=1e-5)


def test_rand1lh_draws_resume_exactly_from_a_checkpoint(tiny_encoder, tmp_path):
    """Rand1LH's random state is part of the checkpoint: with several positives per query, a run that
    fails and resumes draws the same positives, hence gives the same losses, as one that did not."""
    from synrank.train.loop import run

    groups = _scale_groups(tmp_path, [3.0, 2.0, 2.0, 3.0, 0.0], 4, "multi.parquet")
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), loss="rand1lh", batch_size=2, max_steps=4, lr=1e-4,
                      checkpoint_every=2, seed=3)
    first, _ = run(cfg, groups)
    losses = [h["loss"] for h in first["history"]]
    resumed = _fail_at_step_3_then_resume(cfg, groups, tmp_path)
    assert resumed["resumes"] == [2]
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], losses, rtol=0, atol=1e-6)


def test_grad_accumulation_and_own_group_scoring_run(tiny_encoder, tmp_path):
    from synrank.train.loop import run

    groups = _hand_groups(tmp_path, n=4)
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=1, grad_accumulation=2, max_steps=2,
                      in_batch_negatives=False, loss="lsepair", checkpoint_every=100)
    out, _ = run(cfg, groups)
    assert [h["step"] for h in out["history"]] == [1, 2] and out["history"][-1]["epoch"] == 1.0


def test_resolve_rejects_bad_settings(tmp_path):
    from synrank.train.trainer import resolve

    groups = _hand_groups(tmp_path, n=4)
    with pytest.raises(ValueError, match="unknown loss"):
        resolve(TrainConfig(loss="nope"), groups, str(tmp_path))
    with pytest.raises(ValueError, match="unknown parameter"):
        resolve(TrainConfig(loss="kl", loss_params={"tau": 1}), groups, str(tmp_path))
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        resolve(TrainConfig(batch_size=3, num_workers=2), groups, str(tmp_path))
    with pytest.raises(FileNotFoundError):
        resolve(TrainConfig(), str(tmp_path / "missing.parquet"), str(tmp_path))
    resolved = resolve(TrainConfig(batch_size=2, epochs=3), groups, str(tmp_path))
    assert resolved.group_size == 3 and resolved.max_steps == 6 and resolved.groups == groups


def _scale_groups(tmp_path: Path, grades: list[float], n_levels: int | None, name: str) -> str:
    import pyarrow as pa

    from synrank.data import schemas
    from synrank.data.groups import write_groups

    rows = [{"query_id": f"q{i}", "query": f"question {i}", "doc_ids": [f"q{i}-{j}" for j in range(len(grades))],
             "texts": [f"passage {j} of {i}" for j in range(len(grades))], "grades": grades,
             "sources": ["synthetic"] * len(grades)} for i in range(4)]
    path = str(tmp_path / name)
    write_groups(pa.Table.from_pylist(rows, schema=schemas.TRAINING_GROUPS), path, n_levels=n_levels)
    return path


def test_the_share_of_a_graded_target_on_nonrelevant_candidates():
    """By hand: grades 3/2/1/0 among 64 candidates at target_temperature 1: 61 weights of 1 against
    e^3 + e^2 + e^1 + 61, two thirds on grade 0; sharper targets move it onto the graded passages."""
    import math

    from synrank.losses.targets import target_mass_on_nonrelevant

    expected = 61 / (math.exp(3) + math.exp(2) + math.exp(1) + 61)
    assert target_mass_on_nonrelevant([3, 2, 1, 0], 64, 1.0) == pytest.approx(expected) == pytest.approx(0.669, abs=1e-3)
    shares = [target_mass_on_nonrelevant([3, 2, 1, 0], 64, t) for t in (2.0, 1.0, 0.5, 0.25)]
    assert shares == sorted(shares, reverse=True) and shares[-1] < 0.01
    assert target_mass_on_nonrelevant([2, 2, 0, 0], 64, 1.0) > 0.8  # no level 3: worse
    with pytest.raises(ValueError, match="smaller than the group"):
        target_mass_on_nonrelevant([3, 2, 1, 0], 3, 1.0)


def test_a_listwise_target_that_sits_mostly_on_nonrelevant_candidates_is_warned_of(tmp_path, caplog):
    """resolve checks the run's own batch shape: 4 queries x 4 passages (16 candidates) keep 30 % on
    grade 0, 16 x 4 (64, the study's) 67 %: a warning naming the setting; target_temperature 0.25 or a
    positive-based loss: none."""
    from synrank.train.trainer import loop_config, resolve, with_graded_target

    four = _scale_groups(tmp_path, [3.0, 2.0, 1.0, 0.0], 4, "four.parquet")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]

    with caplog.at_level(logging.INFO, logger="synrank.train.trainer"):
        resolve(TrainConfig(loss="wasserstein", batch_size=4), four, str(tmp_path))
        assert not warnings() and "30%" in caplog.text
        with_graded_target(TrainConfig(loss="wasserstein", batch_size=16), 4, four)
        assert len(warnings()) == 1 and "67%" in warnings()[0] and "target_temperature" in warnings()[0]
        caplog.clear()
        with_graded_target(TrainConfig(loss="kl", batch_size=16, loss_params={"target_temperature": 0.25}), 4, four)
        assert with_graded_target(TrainConfig(loss="infonce", batch_size=16), 4, four) == TrainConfig(
            loss="infonce", batch_size=16)
        assert not warnings()
        # fit resolves, then builds the workers' config: the share is announced once; a study trial's
        # config (not resolved) is announced where the workers' config is made
        def announced() -> int:
            return sum("mass on non-relevant" in r.getMessage() for r in caplog.records)

        caplog.clear()
        study = TrainConfig(loss="wasserstein", batch_size=4)
        loop_config(resolve(study, four, str(tmp_path)), four, str(tmp_path))
        assert announced() == 1
        loop_config(study, four, str(tmp_path))
        assert announced() == 2


def test_target_nonrelevant_share_sets_the_same_target_at_every_batch_size_and_level_count(tmp_path):
    """One share, one target shape: the temperature it picks puts exactly that share on grade 0 for
    64 or 1024 candidates and for 4 or 2 levels (where a fixed temperature of 0.5 gives 12 %, 69 %
    and 89 %); the workers get it through loop_config; both settings at once is an error."""
    from synrank.losses.targets import target_mass_on_nonrelevant, target_temperature_for_share
    from synrank.train.trainer import loop_config, resolve, with_graded_target

    assert target_mass_on_nonrelevant([3, 2, 1, 0], 1024, 0.5) == pytest.approx(0.687, abs=1e-3)
    assert target_mass_on_nonrelevant([1, 0], 64, 0.5) == pytest.approx(0.895, abs=1e-3)
    four = _scale_groups(tmp_path, [3.0, 2.0, 1.0, 0.0], 4, "four.parquet")
    two = _scale_groups(tmp_path, [1.0, 0.0], 2, "two.parquet")
    for groups, grades, k in ((four, [3, 2, 1, 0], 4), (two, [1, 0], 2)):
        for batch, workers in ((16, 1), (64, 4)):
            cfg = with_graded_target(TrainConfig(loss="wasserstein", batch_size=batch, num_workers=workers,
                                                 target_nonrelevant_share=0.1), k, groups)
            tau_t = cfg.loss_params["target_temperature"]
            assert target_mass_on_nonrelevant(grades, batch * workers * k, tau_t) == pytest.approx(0.1, rel=1e-6)
    assert target_temperature_for_share([3, 2, 1, 0], 64, 0.116) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="must be below"):
        target_temperature_for_share([3, 2, 1, 0], 4, 0.5)  # only 1 of 4 candidates is grade 0
    shared = TrainConfig(loss="wasserstein", batch_size=2, target_nonrelevant_share=0.1)
    sent = loop_config(shared, four, str(tmp_path))["train"]["loss_params"]["target_temperature"]
    assert sent == pytest.approx(resolve(shared, four, str(tmp_path)).loss_params["target_temperature"])
    assert loop_config(resolve(shared, four, str(tmp_path)), four, str(tmp_path))["train"]["loss_params"] == {
        "target_temperature": sent}  # resolved twice: the same
    with pytest.raises(ValueError, match="target_nonrelevant_share and train.loss_params.target_temperature"):
        resolve(shared.model_copy(update={"loss_params": {"target_temperature": 1.0}}), four, str(tmp_path))


def test_positive_threshold_comes_from_the_groups_scale(tmp_path):
    """On the 4-level scale 'on topic but does not answer' (level 1) is not a positive: the default
    threshold is level 2 (Paper A's binary recipe); on 2 levels it is level 1; an explicit value wins."""
    from synrank.train.loop import build_loss
    from synrank.train.trainer import loop_config, resolve

    four = _scale_groups(tmp_path, [3.0, 2.0, 1.0, 0.0], 4, "four.parquet")
    two = _scale_groups(tmp_path, [1.0, 0.0], 2, "two.parquet")
    assert resolve(TrainConfig(batch_size=2), four, str(tmp_path)).positive_threshold == 2.0
    assert resolve(TrainConfig(batch_size=2), two, str(tmp_path)).positive_threshold == 1.0
    assert loop_config(TrainConfig(), four, str(tmp_path))["train"]["positive_threshold"] == 2.0
    assert resolve(TrainConfig(batch_size=2, positive_threshold=1.0), four, str(tmp_path)).positive_threshold == 1.0
    # a 4-level file whose best grade here is 3 still gets the 4-level rule; a file without the scale
    # (hand-made) is read as largest grade + 1 levels
    assert resolve(TrainConfig(batch_size=2), _scale_groups(tmp_path, [3.0, 1.0], None, "x.parquet"),
                   str(tmp_path)).positive_threshold == 2.0
    # a query whose best passage is on topic but does not answer contributes nothing, with every loss
    # that takes positives
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.3, 1.0, 0.2]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 1.0]])
    for loss in ("infonce", "rand1lh", "jointlh", "summarglh", "lsepair"):
        cfg = resolve(TrainConfig(batch_size=2, loss=loss), four, str(tmp_path))
        both, second = build_loss(cfg)(scores, labels), build_loss(cfg)(scores[1:], labels[1:])
        assert float(both) == pytest.approx(float(second)), loss
    with pytest.raises(ValueError, match="positive_threshold is not resolved"):
        build_loss(TrainConfig())


def test_train_cli_dry_run(capsys):
    import yaml

    from synrank.cli import main

    assert main(["train", "--dry-run", "train.loss=lsepair", "train.lr=3e-5", "train.num_workers=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["loss"] == "lsepair" and printed["lr"] == 3e-5 and printed["num_workers"] == 2
    assert main(["train", "--dry-run", "train.los=x"]) == 2
    assert "did you mean 'loss'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Ray Train, two CPU workers


def _groups_read_callback(queue):
    """A Ray Train callback that puts every report's ``groups_read`` of each worker (rank order) on
    `queue` (callbacks run in the Train controller, not in this process)."""
    from ray.train.v2.api.callback import UserCallback

    class GroupsRead(UserCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            queue.put([m["groups_read"] for m in metrics])

    return GroupsRead()


@pytest.fixture(scope="module")
def two_worker_run(ray_session, tiny_encoder, cranfield_groups, tmp_path_factory):
    """The run, and the groups each worker read, as every report gave them ([[rank 0, rank 1], ...])."""
    import ray
    from ray.util.queue import Queue

    from synrank.train import fit

    out = tmp_path_factory.mktemp("run2")
    cfg = TrainConfig(encoder=_encoder(tiny_encoder), loss="infonce", batch_size=2, num_workers=2, max_steps=12,
                      lr=2e-4, warmup_ratio=0.1, dropout=0.0, seed=0, checkpoint_every=4, keep_checkpoints=2)
    queue = Queue(actor_options={"num_cpus": 0})
    result = fit(cfg, cranfield_groups, str(out), {"callbacks": [_groups_read_callback(queue)]})
    groups_read = [queue.get() for _ in range(queue.size())]
    ray.kill(queue.actor)
    return cfg, result, groups_read


@pytest.mark.slow
def test_each_worker_reads_only_its_shard_of_the_groups(two_worker_run, cranfield_groups):
    import pyarrow.parquet as pq

    _, result, groups_read = two_worker_run
    rows = pq.read_metadata(cranfield_groups).num_rows
    assert rows == 9  # odd: the equal split drops one group
    assert len(result.metrics_history) == 12
    # reports: at least the checkpoints' (steps 4, 8, 12), at most one per step (one per Ray Train poll)
    assert 3 <= len(groups_read) <= 12
    # every report: each of the two workers read half the table, together all of it but the dropped group
    assert all(per_rank == [rows // 2, rows // 2] for per_rank in groups_read), groups_read
    assert sum(groups_read[0]) == rows - 1


@pytest.mark.slow
def test_two_workers_learn_checkpoint_and_export(two_worker_run):
    from sentence_transformers import SentenceTransformer

    from synrank.encoder import BiEncoder

    cfg, result, _ = two_worker_run
    history = result.metrics_history
    assert [h["step"] for h in history] == list(range(1, 13))
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert all(h["examples_per_s"] > 0 for h in history)
    # checkpoints: the final one, and at most keep_checkpoints on disk
    ckpt_dirs = sorted(p for p in Path(result.out_dir, "ray", "train").glob("checkpoint_*") if p.is_dir())
    assert result.checkpoint is not None and Path(result.checkpoint.path).name == "checkpoint_0000012"
    assert 1 <= len(ckpt_dirs) <= cfg.keep_checkpoints
    assert (Path(result.checkpoint.path) / "model.pt").exists()
    # exported model: sentence-transformers loads it and gives synrank's embeddings
    texts = ["lift of a swept wing at supersonic speed", "boundary layer", "heat transfer to a blunt body"]
    ours = BiEncoder.load(result.model_dir).encode(texts, "passage")
    st = SentenceTransformer(result.model_dir, device="cpu").encode(texts, convert_to_numpy=True)
    assert np.abs(ours - st).max() < 1e-5
    # the run differs from the starting point
    start = BiEncoder(_encoder(cfg.encoder.model)).encode(texts, "passage")
    assert np.abs(ours - start).max() > 1e-4
    # resolved config and curve
    out = Path(result.out_dir)
    assert "loss: infonce" in (out / "train_config.yaml").read_text()
    curve = json.loads((out / "curve.json").read_text())["steps"]
    assert [c["loss"] for c in curve] == losses
    assert (out / "curve.png").stat().st_size > 1000


def _two_process_losses(rank: int, init_file: str, encoder_path: str, halves: list, out: str) -> None:
    """One of two gloo processes: its half of the batch through scores_for and global_labels; rank 0
    saves the scores, labels, mask and losses of the global batch."""
    import torch.distributed as dist

    from synrank.encoder import BiEncoder
    from synrank.train.loop import Towers, build_loss, global_labels, scores_for

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    encoder = BiEncoder(_encoder(encoder_path)).eval()
    batch = collate(halves[rank], 3)
    with torch.no_grad():
        scores = scores_for(Towers(encoder), encoder, batch, torch.device("cpu"))
    found = {"scores": scores}
    for in_batch in (True, False):
        labels, mask = global_labels(batch, torch.device("cpu"), in_batch)
        found[in_batch] = (labels, mask, {loss: float(build_loss(TrainConfig(loss=loss, positive_threshold=2.0))(
                                              scores, labels, mask)) for loss in ("lsepair", "sycl_w2")})
    if rank == 0:
        torch.save(found, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_score_and_label_the_global_batch_as_one_process_does(tiny_encoder, tmp_path):
    from synrank.encoder import BiEncoder
    from synrank.train.loop import Towers, build_loss, global_labels, scores_for

    groups = _groups([["a", "b", "c"], ["d", "a"], ["e"], ["f", "g", "b"]],
                     [[3.0, 1.0, 0.0], [2.0, 0.0], [1.0], [3.0, 0.0, 2.0]])
    # judged-relevant passages outside the group, a different number on each worker: "g" (in rank
    # 1's half) for q0, "d" (in rank 0's half) for q2
    for group, known in zip(groups, (["a", "b", "g"], ["d"], ["e", "d", "x", "y", "z"], [])):
        group.known_positives = known
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_two_process_losses, args=(str(tmp_path / "pg"), tiny_encoder, [groups[:2], groups[2:]],
                                                           out), nprocs=2)
    found = torch.load(out, weights_only=False)

    encoder = BiEncoder(_encoder(tiny_encoder)).eval()
    batch = collate(groups, 3)
    with torch.no_grad():
        scores = scores_for(Towers(encoder), encoder, batch, torch.device("cpu"))
    assert found["scores"].shape == (4, 12) and torch.allclose(found["scores"], scores, atol=1e-5)
    assert not global_labels(batch, torch.device("cpu"), True)[1][[0, 2], [3 * 3 + 1, 1 * 3 + 0]].any()
    for in_batch in (True, False):
        labels, mask = global_labels(batch, torch.device("cpu"), in_batch)
        gathered_labels, gathered_mask, losses = found[in_batch]
        assert torch.equal(gathered_labels, labels) and torch.equal(gathered_mask, mask)
        for loss, value in losses.items():
            assert value == pytest.approx(float(build_loss(TrainConfig(loss=loss, positive_threshold=2.0))(
                scores, labels, mask)), abs=1e-5)


def _two_process_grad_cache(rank: int, init_file: str, encoder_path: str, halves: list, out: str) -> None:
    """One of two gloo processes under DDP: a GradCache step (chunks of 2 texts) on its half of the
    batch; rank 0 saves the loss and the DDP-averaged gradients."""
    import torch.distributed as dist

    from synrank.encoder import BiEncoder
    from synrank.train.loop import (Towers, build_loss, freeze_unused, global_labels, grad_cached_backward,
                                    tokenize_batch)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    encoder = BiEncoder(_encoder(encoder_path)).eval()
    freeze_unused(encoder)  # as the loop does: DDP reduces only once every parameter got its gradient
    model = torch.nn.parallel.DistributedDataParallel(Towers(encoder))
    batch = collate(halves[rank], 3)
    labels, mask = global_labels(batch, torch.device("cpu"), True)
    loss_fn = build_loss(TrainConfig(loss="lsepair", positive_threshold=2.0))

    def loss_of(scores):
        leaf = scores.detach().requires_grad_(True)
        loss = loss_fn(leaf, labels, mask)
        loss.backward()
        scores.backward(leaf.grad)
        return loss

    loss = grad_cached_backward(model, encoder, batch, torch.device("cpu"),
                                tokenize_batch(encoder, batch, chunk_size=2), loss_of, contextlib.nullcontext)
    if rank == 0:
        torch.save({"loss": float(loss), "grads": {n: p.grad.clone() for n, p in encoder.named_parameters()
                                                    if p.grad is not None}}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_grad_cache_under_ddp_gives_the_gradient_of_the_global_batch(tiny_encoder, tmp_path):
    """Two DDP workers with GradCache: one gradient reduction per step (the last chunk's), and the
    averaged gradient is that of one process's plain step on the concatenated batch."""
    from synrank.encoder import BiEncoder
    from synrank.train.loop import Towers, build_loss, global_labels, scores_for

    groups = _groups([["a", "b", "c"], ["d", "a"], ["e"], ["f", "g", "b"]],
                     [[3.0, 1.0, 0.0], [2.0, 0.0], [1.0], [3.0, 0.0, 2.0]])
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_two_process_grad_cache, args=(str(tmp_path / "pg"), tiny_encoder,
                                                               [groups[:2], groups[2:]], out), nprocs=2)
    found = torch.load(out, weights_only=False)

    encoder = BiEncoder(_encoder(tiny_encoder)).eval()
    batch = collate(groups, 3)
    labels, mask = global_labels(batch, torch.device("cpu"), True)
    loss = build_loss(TrainConfig(loss="lsepair", positive_threshold=2.0))(
        scores_for(Towers(encoder), encoder, batch, torch.device("cpu")), labels, mask)
    loss.backward()
    assert found["loss"] == pytest.approx(float(loss.detach()), abs=1e-5)
    grads = {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}
    assert grads.keys() == found["grads"].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(found["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_worker_fault_resumes_from_the_last_checkpoint(ray_session, tiny_encoder, cranfield_groups, tmp_path):
    from synrank.train import fit

    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, num_workers=2, max_steps=6, lr=1e-4,
                      checkpoint_every=2, max_failures=1, fail_at_step=4)
    result = fit(cfg, cranfield_groups, str(tmp_path / "run"), export=False)
    assert (tmp_path / "run" / ".fault_injected_at_4").exists()
    assert result.resumes == [2]
    assert [h["step"] for h in result.metrics_history] == [1, 2, 3, 4, 5, 6]
    assert Path(result.checkpoint.path).name == "checkpoint_0000006"


@pytest.mark.slow
def test_short_steps_do_not_wait_for_ray_trains_report_poll(ray_session, tiny_encoder, cranfield_groups, tmp_path,
                                                            capfd):
    """Ray Train takes one report per worker per controller poll (2 s): reporting every short step
    used to stall each step until the poll. Reports are now at most one per poll, agreed by both
    workers; every step is still in the history.

    On this embedded Ray (no dashboard, so no state API) the run also no longer starts Ray Train's
    placement-group cleaner, whose once-a-second state query failed and logged a warning each time."""
    from synrank.train import fit

    cfg = TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, num_workers=2, max_steps=10, lr=1e-4,
                      checkpoint_every=100)
    result = fit(cfg, cranfield_groups, str(tmp_path / "run"), export=False)
    assert [h["step"] for h in result.metrics_history] == list(range(1, 11))
    cycles = sorted(cfg.batch_size * 2 / h["examples_per_s"] for h in result.metrics_history[1:])
    assert cycles[len(cycles) // 2] < 1.0, cycles  # stalled on the poll, each cycle took about 2 s
    err = capfd.readouterr().err
    assert "Failed to query Ray Train Controller actor state" not in err
    # the loop's progress line replaces Ray Train's per-report dump; no Ray Data bars for the groups
    assert "Reporting training result" not in err and "ReadGroups->SplitBlocks" not in err
    assert "PreemptionWatcher" not in err  # no drain watcher on a one-machine Ray (it logged an error at start)


def test_placement_group_cleaner_only_where_the_state_api_answers(ray_session, tiny_encoder, cranfield_groups,
                                                                  tmp_path, monkeypatch):
    """The cleaner polls the state API; the embedded Ray has none, so synrank's trainer leaves it out
    there, and keeps Ray Train's callbacks unchanged where the state API answers."""
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    from synrank import runtime
    from synrank.train import torch_trainer
    from synrank.train.trainer import build_trainer

    assert not runtime.state_api_answers()
    trainer = build_trainer(TrainConfig(encoder=_encoder(tiny_encoder), batch_size=2, max_steps=1),
                            cranfield_groups, str(tmp_path / "run"))

    def cleaners():
        return [cb for cb in trainer._create_default_callbacks() if isinstance(cb, PlacementGroupCleanerCallback)]

    assert cleaners() == []
    monkeypatch.setattr(torch_trainer, "state_api_answers", lambda: True)  # a cluster with a dashboard
    assert len(cleaners()) == 1
