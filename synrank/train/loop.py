"""The per-worker training loop.

``train_loop_per_worker(loop_config)`` is what Ray Train's ``TorchTrainer`` runs on each worker (and
what a Ray Tune trial passes to the ``TorchTrainer`` it builds); each worker reads only its shard of
the groups, ``ray.train.get_dataset_shard("train")``, once. ``run(config, groups_path)`` runs the same
loop in this process without Ray (one worker, the whole table), for tests and debugging.

One step, per worker:

1. collate this worker's ``batch_size`` groups: queries, passages and compact per-query label data;
2. encode queries and passages (one DDP forward through the shared encoder), each side in chunks of
   similar token length that pad only to their own longest text (``tokenize_batch``);
3. all-gather query and passage embeddings *with gradients* (``gather_with_grad``), so every
   worker holds the embeddings of the global batch; all-gather the compact label data and build
   the global labels and mask from it on the device (``global_labels``);
4. score every query of the global batch against every passage slot of the global batch, and
   compute the loss on that ``[B_global, N]`` matrix -- the same value on every worker, equal to the
   loss one process would compute on the concatenated batch (so batch-level losses such as
   ``sycl_w2`` are exact too);
5. backward: the gather's backward sums the gradients of all workers and keeps this worker's
   share, so each worker's gradient is ``world_size`` times its part of ``dLoss/dparams`` and DDP's
   average is exactly ``dLoss/dparams``.

The loss is run on a detached copy of the scores and its gradient fed back (``scores.backward``), so
the time spent in the loss (forward and backward) is measured exactly at no extra cost.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from synrank.config import EncoderConfig, TrainConfig
from synrank.encoder import BiEncoder, similarity
from synrank.losses.labels import label_matrices
from synrank.train.collate import Batch, BatchPlan, GroupShard, collate
from synrank.train.progress import progress_line

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
STATE_FILE = "trainer.pt"


class InjectedFault(RuntimeError):
    """The test-only failure of ``TrainConfig.fail_at_step``."""


# --------------------------------------------------------------------------------------------------
# gathering with gradients


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every worker (rank order) along dim 0, differentiably; identity alone.

    torch's autograd all-gather: its backward sums the incoming gradients of every worker and
    returns this worker's rows (reduce-scatter on NCCL, scatters on gloo)."""
    if not _distributed():
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    # torch 2.13 deprecates this public function for one in a private module
    # (torch.distributed._functional_collectives); it does the job on every torch this project allows.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
                                FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every worker (rank order) along dim 0, without gradients; identity alone."""
    if not _distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def global_labels(batch: Batch, device: torch.device, in_batch_negatives: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and mask ``[B_global, N]`` of the global batch, built on ``device`` from every worker's
    compact per-query data."""
    grades, valid, doc_keys = (gather(t.to(device)) for t in (batch.grades, batch.valid, batch.doc_keys))
    query_keys = origin_keys = known_keys = None
    if batch.query_keys is not None and batch.origin_keys is not None:
        query_keys, origin_keys = (gather(t.to(device)) for t in (batch.query_keys, batch.origin_keys))
    if batch.known_keys is not None:
        known_keys = gather(_padded_to_widest(batch.known_keys.to(device)))
    return label_matrices(grades, valid, doc_keys, in_batch_negatives=in_batch_negatives, query_keys=query_keys,
                          origin_keys=origin_keys, known_keys=known_keys)


def _padded_to_widest(x: torch.Tensor) -> torch.Tensor:
    """``x`` [B, M] right-padded with zeros to the largest M of all workers (all-gather needs one shape)."""
    if not _distributed():
        return x
    widest = torch.tensor([x.shape[1]], device=x.device)
    dist.all_reduce(widest, op=dist.ReduceOp.MAX)
    return torch.nn.functional.pad(x, (0, int(widest.item()) - x.shape[1]))


# --------------------------------------------------------------------------------------------------
# model pieces


class Towers(nn.Module):
    """One forward for queries and passages through the shared encoder (one DDP call per step).
    Both come as length-sorted chunks (see ``tokenize_batch``); each side's embeddings are
    concatenated in chunk order."""

    def __init__(self, encoder: BiEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, queries: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]],
                passages: list[dict[str, torch.Tensor]]):
        chunks = [queries] if isinstance(queries, dict) else queries
        q = torch.cat([self.encoder(chunk) for chunk in chunks], dim=0)
        if not passages:
            return q, q.new_zeros((0, q.shape[1]))
        return q, torch.cat([self.encoder(chunk) for chunk in passages], dim=0)


def set_dropout(module: nn.Module, p: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def freeze_unused(encoder: BiEncoder) -> list[str]:
    """Freeze parameters that never get a gradient (e.g. BERT's pooler, which mean/CLS pooling of
    the last hidden state does not use), found by one tiny backward in eval mode. DDP then needs no
    ``find_unused_parameters`` and the optimizer keeps no state for them."""
    was = encoder.training
    encoder.eval()
    encoder.zero_grad(set_to_none=True)
    encoder.embed(["probe", "a longer probe text"], "passage").sum().backward()
    frozen = []
    for name, p in encoder.named_parameters():
        if p.requires_grad and p.grad is None:
            p.requires_grad_(False)
            frozen.append(name)
    encoder.zero_grad(set_to_none=True)
    encoder.train(was)
    return frozen


def build_encoder(config: TrainConfig) -> BiEncoder:
    encoder = BiEncoder(config.encoder)
    if config.dropout is not None:
        set_dropout(encoder, config.dropout)
    return encoder


def passage_chunks(n: int, n_queries: int) -> int:
    """At most this many texts per encoder call: about one per query of the batch, at least 16."""
    return max(16, n_queries)


# The cost of one more encoder call (forward and backward), in padded tokens: the call overhead of
# a small encoder such as MiniLM, estimated (CPU: a few ms at ~0.5 ms a token; GPU: a few ms of
# kernel launches at microseconds a token). `length_chunks` splits a batch when that saves more.
CALL_COST_TOKENS = {"cpu": 16, "cuda": 4096}


def length_chunks(lengths: np.ndarray, max_rows: int, call_cost: int) -> list[int]:
    """Chunk boundaries (ends) for texts sorted by token length ascending: the split into runs of at
    most ``max_rows`` that minimises padded tokens plus ``call_cost`` per chunk (each chunk pads to
    its longest text). Exact dynamic programme, O(n * max_rows) in numpy."""
    n = len(lengths)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - max_rows), end)
        cost = best[starts] + (end - starts) * lengths[end - 1] + call_cost
        i = int(np.argmin(cost))
        best[end], cut[end] = cost[i], starts[i]
    ends, end = [], n
    while end > 0:
        ends.append(end)
        end = int(cut[end])
    return ends[::-1]


def sorted_chunks(features: dict[str, torch.Tensor], max_rows: int, call_cost: int, right_padded: bool = True
                  ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Rows of a padded tokenization regrouped into chunks of similar length, each cut to its own
    longest row; and the order (long tensor) of the rows in the concatenated chunks."""
    lengths = features["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order].numpy()
    chunks, begin = [], 0
    for end in length_chunks(sorted_lengths, max_rows, call_cost):
        rows, width = order[begin:end], int(sorted_lengths[end - 1])
        cols = slice(None, width) if right_padded else slice(-width, None)
        chunks.append({k: v[rows, cols].contiguous() for k, v in features.items()})
        begin = end
    return chunks, order


@dataclass
class StepInputs:
    """One batch's tokenized queries and passages, each as length-sorted chunks, on the CPU."""

    queries: list[dict[str, torch.Tensor]]
    query_rows: torch.Tensor  # long [B]: where each query's embedding is in the concatenated chunks
    chunks: list[dict[str, torch.Tensor]]
    slots: torch.Tensor  # long [passages]: the slot (Batch.slots) of each passage of the concatenated chunks
    chunk_size: int


def tokenize_batch(encoder: BiEncoder, batch: Batch, pin_memory: bool = False,
                   chunk_size: int | None = None, call_cost: int = CALL_COST_TOKENS["cpu"]) -> StepInputs:
    """Queries and passages are each tokenized once and regrouped into chunks of similar token length
    (``sorted_chunks``), so a short text is not padded to the longest one of the whole batch; a chunk
    holds at most `chunk_size` texts (GradCache's), else ``passage_chunks``."""
    size = chunk_size or passage_chunks(len(batch.passages), batch.n_queries)
    right = encoder.tokenizer.padding_side == "right"
    queries, query_order = sorted_chunks(encoder.tokenize(batch.queries, "query"), size, call_cost, right)
    if batch.passages:
        chunks, order = sorted_chunks(encoder.tokenize(batch.passages, "passage"), size, call_cost, right)
    else:
        chunks, order = [], torch.zeros(0, dtype=torch.long)
    if pin_memory:
        queries = [{k: v.pin_memory() for k, v in chunk.items()} for chunk in queries]
        chunks = [{k: v.pin_memory() for k, v in chunk.items()} for chunk in chunks]
    return StepInputs(queries, torch.argsort(query_order), chunks, batch.slots[order], size)


class BatchFeed:
    """This worker's batches, each collated and tokenized one micro-step ahead in a background
    thread while the current step runs (the Rust tokenizer and most of pyarrow release the GIL). On
    a GPU, tokenization would otherwise bound the step. Batches are the same as without it: collation
    draws from (seed, epoch), not from a shared random state."""

    def __init__(self, groups: GroupShard, plan: BatchPlan, group_size: int, seed: int, encoder: BiEncoder,
                 end_micro: int, prefetch: bool, pin_memory: bool, chunk_size: int | None = None,
                 call_cost: int = CALL_COST_TOKENS["cpu"]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.groups, self.plan, self.group_size, self.seed, self.encoder = groups, plan, group_size, seed, encoder
        self.end_micro, self.pin_memory, self.chunk_size, self.call_cost = end_micro, pin_memory, chunk_size, call_cost
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synrank-batches") if prefetch else None
        self._ahead: dict[int, Any] = {}

    def _prepare(self, micro: int) -> tuple[Batch, StepInputs]:
        batch = collate(self.groups.take(self.plan.indices(micro)), self.group_size, seed=self.seed,
                        epoch=self.plan.epoch_of(micro))
        return batch, tokenize_batch(self.encoder, batch, self.pin_memory, self.chunk_size, self.call_cost)

    def get(self, micro: int) -> tuple[Batch, StepInputs]:
        ahead = self._ahead.pop(micro, None)
        prepared = ahead.result() if ahead is not None else self._prepare(micro)
        if self._pool is not None and micro + 1 < self.end_micro:
            self._ahead[micro + 1] = self._pool.submit(self._prepare, micro + 1)
        return prepared

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def scores_for(model: nn.Module, encoder: BiEncoder, batch: Batch, device: torch.device,
               inputs: StepInputs | None = None) -> torch.Tensor:
    """[B_global, N] float32 scores of the global batch (gathered) from this worker's batch
    (tokenized here unless `inputs` holds it already, see `tokenize_batch`)."""
    inputs = inputs or tokenize_batch(encoder, batch)
    q, p = model([_to(chunk, device) for chunk in inputs.queries], [_to(chunk, device) for chunk in inputs.chunks])
    return global_scores(q, p, batch, inputs)


def _to(features: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in features.items()}


def global_scores(q: torch.Tensor, p: torch.Tensor, batch: Batch, inputs: StepInputs) -> torch.Tensor:
    """Scores of every query of the global batch against every passage slot of it, from this
    worker's query and passage embeddings in the order of `inputs`' chunks (gathered with gradients)."""
    q = q[inputs.query_rows.to(q.device)]
    slots = q.new_zeros((batch.n_queries * batch.group_size, q.shape[1]))
    slots = slots.index_copy(0, inputs.slots.to(q.device), p.to(slots.dtype))
    local = torch.cat([q, slots], dim=0)
    gathered = gather_with_grad(local)
    world = gathered.shape[0] // local.shape[0]
    gathered = gathered.view(world, local.shape[0], -1)
    q_all = gathered[:, : batch.n_queries].reshape(-1, q.shape[1])
    p_all = gathered[:, batch.n_queries :].reshape(-1, q.shape[1])
    return similarity(q_all, p_all)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def grad_cached_backward(model: nn.Module, encoder: BiEncoder, batch: Batch, device: torch.device,
                         inputs: StepInputs, loss_of: Callable[[torch.Tensor], torch.Tensor],
                         autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One micro-step's backward with GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning
    Batch Size under Memory Limited Setup"): encode every chunk without a graph, compute the loss and
    its gradient with respect to the embeddings, then encode each chunk again with a graph and
    backpropagate that chunk's cached gradient. At most one chunk's activations are alive at a time.
    Each chunk's second forward replays the random state of its first, so dropout masks agree.
    `loss_of(scores)` returns the loss to backpropagate; returns it (detached)."""
    chunks = [_to(c, device) for c in inputs.queries] + [_to(c, device) for c in inputs.chunks]
    n_query_chunks = len(chunks) - len(inputs.chunks)
    states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(_rng_state(device))
            with autocast():
                cached.append(encoder(chunk).detach().requires_grad_(True))
    q = torch.cat(cached[:n_query_chunks], dim=0)
    p = torch.cat(cached[n_query_chunks:], dim=0) if inputs.chunks else q.new_zeros((0, q.shape[1]))
    loss = loss_of(global_scores(q, p, batch, inputs))

    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    devices = [device] if device.type == "cuda" else []
    for i, (chunk, (cpu_state, cuda_state), embedding) in enumerate(zip(chunks, states, cached)):
        # DDP reduces gradients once, with the last chunk's backward
        sync = model.no_sync() if ddp and i < len(chunks) - 1 else contextlib.nullcontext()
        with sync, torch.random.fork_rng(devices=devices):
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, device)
            with autocast():
                again, _ = model(chunk, [])
            again.backward(embedding.grad.to(again.dtype))
    return loss.detach()


def bucket_lengths(groups: GroupShard, encoder: EncoderConfig) -> np.ndarray:
    """Each group's length for length bucketing: characters of its texts, each clipped to about what
    the encoder keeps (about 5 characters a token in English text)."""
    return groups.lengths(5 * encoder.max_query_length, 5 * encoder.max_passage_length)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX), where they beat fp32."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def autocast_settings(config: TrainConfig, device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of the step's autocast: `train.amp` on CUDA (bf16 where supported, else fp16),
    `train.cpu_amp` on CPU (bf16, only where the CPU has it natively)."""
    if device.type == "cuda":
        return config.amp, torch.bfloat16 if config.amp and torch.cuda.is_bf16_supported() else torch.float16
    if config.cpu_amp and not cpu_has_native_bf16():
        raise ValueError(f"train.cpu_amp: the CPU of node {platform.node()} has no native bf16 (AVX512-BF16 or "
                         "AMX), where bf16 autocast is slower than fp32; set train.cpu_amp: false")
    return config.cpu_amp, torch.bfloat16


def build_loss(config: TrainConfig):
    from synrank.losses import build, params

    kwargs = dict(config.loss_params)
    valid = params(config.loss)
    if "positive_threshold" not in kwargs:
        if config.positive_threshold is None:
            raise ValueError("train.positive_threshold is not resolved: set it, or build the run with "
                             "synrank.train.trainer.resolve / loop_config, which take it from the groups' scale")
        kwargs["positive_threshold"] = config.positive_threshold
    if "seed" in valid:
        kwargs.setdefault("seed", config.seed)
    return build(config.loss, **kwargs)


def lr_lambda(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warmup over ceil(warmup_ratio * total) steps (the first step already gets a non-zero
    rate), then linear decay towards 0 at the end of the run."""
    warmup = int(math.ceil(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# contexts: Ray Train or this process


class Context:
    """What the loop needs from its runner."""

    rank = 0
    world_size = 1

    def device(self) -> torch.device:
        return torch.device("cpu")

    def checkpoint_dir(self) -> contextlib.AbstractContextManager[str | None]:
        return contextlib.nullcontext(None)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None, step: int) -> None:
        pass

    def report_due(self) -> bool:
        """Whether a step without a checkpoint may report now (every worker gets the same answer)."""
        return True


class LocalContext(Context):
    """No Ray: one worker in this process; checkpoints (if a directory is given) are kept as
    ``<checkpoints>/checkpoint_<step>`` and the latest is resumed."""

    def __init__(self, checkpoints: str | None = None, use_gpu: bool = False) -> None:
        self.checkpoints = Path(checkpoints) if checkpoints else None
        self.reports: list[dict[str, Any]] = []
        self.use_gpu = use_gpu

    def device(self) -> torch.device:
        return torch.device("cuda") if self.use_gpu and torch.cuda.is_available() else torch.device("cpu")

    def latest(self) -> str | None:
        if self.checkpoints is None or not self.checkpoints.is_dir():
            return None
        found = sorted(p for p in self.checkpoints.glob("checkpoint_*") if (p / STATE_FILE).exists())
        return str(found[-1]) if found else None

    def checkpoint_dir(self):
        return contextlib.nullcontext(self.latest())

    def report(self, metrics, checkpoint_dir, step):
        self.reports.append(dict(metrics))
        if checkpoint_dir and self.checkpoints is not None:
            import shutil

            dest = self.checkpoints / f"checkpoint_{step:07d}"
            shutil.rmtree(dest, ignore_errors=True)
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            shutil.copytree(checkpoint_dir, dest)


class RayContext(Context):
    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.last_report = time.monotonic()
        self.report_interval_s = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))

    def report_due(self) -> bool:
        """Ray Train takes one report per worker per poll of its controller (every
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s): a worker reporting sooner waits for the poll, so
        steps shorter than that would stall on every report. Due once a poll interval has passed on
        any worker (agreed over the process group, so that all workers report together)."""
        due = time.monotonic() - self.last_report >= self.report_interval_s
        if self.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([int(due)], device=self.device())  # NCCL reduces on the GPU
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def device(self) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    @contextlib.contextmanager
    def checkpoint_dir(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
        else:
            with ckpt.as_directory() as d:
                yield d

    def report(self, metrics, checkpoint_dir, step):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint,
                         checkpoint_dir_name=f"checkpoint_{step:07d}" if checkpoint_dir else None)
        self.last_report = time.monotonic()


# --------------------------------------------------------------------------------------------------
# the loop


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches consumed: the data position
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fault_marker(out_dir: str | None, step: int) -> str | None:
    from synrank import storage

    return storage.join(out_dir, f".fault_injected_at_{step}") if out_dir else None


def _exists(url: str) -> bool:
    from synrank import storage

    return storage.exists(url)


def _inject_fault(marker: str, rank: int, world: int, step: int) -> None:
    """Test-only (``fail_at_step``): the last worker raises once, at the start of ``step``.

    Every worker first meets at a barrier, so rank 0 has finished reporting the previous step (and
    its checkpoint); the failing worker then waits a little longer than the Train controller's
    poll interval, so that checkpoint is registered before the failure is seen, as it would be for
    any failure that comes some time after a checkpoint."""
    if world > 1:
        dist.barrier()
    if rank != world - 1:
        return
    time.sleep(float(os.environ.get("SYNRANK_FAULT_DELAY_S", "3")))
    from synrank import storage

    storage.write_text(f"worker {rank} failed at step {step}\n", marker)
    raise InjectedFault(f"test fault: worker {rank} fails at step {step} (fail_at_step)")


def set_threads(config: TrainConfig, device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_num_threads(config.cpus_per_worker)


def seeded_encoder(config: TrainConfig, rank: int, device: torch.device) -> BiEncoder:
    """This worker's encoder in training mode on ``device``, built right after seeding its random
    generators (so a run draws the same whether the encoder was built before or while its groups
    were read), with the parameters no gradient reaches frozen."""
    _seed_everything(config.seed + rank)
    encoder = build_encoder(config)
    frozen = freeze_unused(encoder)
    if frozen and rank == 0:
        log.info("frozen (no gradient reaches them): %s", ", ".join(frozen))
    encoder.to(device)
    encoder.train()
    return encoder


def train_loop(config: TrainConfig, groups: GroupShard, ctx: Context, out_dir: str | None = None,
               encoder: BiEncoder | None = None) -> dict[str, Any]:
    """Train on this worker's ``groups`` under ``ctx``; returns {"history": [...], "resumes": [...], ...}.
    ``encoder``: one `seeded_encoder` built already (the Ray worker builds it while it reads its shard)."""
    rank, world = ctx.rank, ctx.world_size
    device = ctx.device()
    set_threads(config, device)
    if encoder is None:
        encoder = seeded_encoder(config, rank, device)

    k = config.group_size or groups.max_group_size
    plan = BatchPlan(len(groups), config.batch_size, world, config.seed, rank,
                     lengths=bucket_lengths(groups, config.encoder) if config.length_bucketing else None,
                     bucket_window=config.length_bucket_window)
    steps_per_epoch = plan.per_epoch // config.grad_accumulation
    if steps_per_epoch == 0:
        raise ValueError(f"{len(groups) * world} groups give {plan.per_epoch} global batch(es) per epoch, fewer "
                         f"than grad_accumulation={config.grad_accumulation}")
    total = config.max_steps or config.epochs * steps_per_epoch

    towers = Towers(encoder)
    model: nn.Module = towers
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            towers, device_ids=[device.index] if device.type == "cuda" else None)
    # fused: one kernel over all parameters instead of a loop of small ops per tensor (the same update)
    optimizer = torch.optim.AdamW(_param_groups(towers, config.weight_decay), lr=config.lr,
                                  fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, config.warmup_ratio))
    loss_fn = build_loss(config)

    use_amp, amp_dtype = autocast_settings(config, device)
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

    state = LoopState()
    with ctx.checkpoint_dir() as ckpt:
        if ckpt is not None:
            encoder.load_state_dict(torch.load(os.path.join(ckpt, MODEL_FILE), map_location=device))
            saved = torch.load(os.path.join(ckpt, STATE_FILE), map_location="cpu", weights_only=False)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            if scaler is not None and saved.get("scaler"):
                scaler.load_state_dict(saved["scaler"])
            if saved.get("loss"):  # e.g. Rand1LH's random generator: the resumed run draws as the first did
                loss_fn.load_state_dict(saved["loss"])
            state = LoopState(saved["step"], saved["micro"], list(saved["history"]), list(saved["resumes"]))
            state.resumes.append(state.step)
            if world == 1 and saved.get("torch_rng") is not None:
                torch.set_rng_state(saved["torch_rng"])
            else:
                torch.manual_seed(config.seed + rank + 7919 * state.step)
            if rank == 0:
                log.info("resumed from the checkpoint at step %d (data position %d)", state.step, state.micro)

    fault_marker = _fault_marker(out_dir, config.fail_at_step) if config.fail_at_step else None
    queries_per_step = config.batch_size * world * config.grad_accumulation
    # examples/s counts the whole cycle: this step and the previous step's report and checkpoint
    cycle_start = run_start = time.perf_counter()
    first_step = state.step

    feed = BatchFeed(groups, plan, k, config.seed, encoder,
                     end_micro=state.micro + (total - state.step) * config.grad_accumulation,
                     prefetch=config.prefetch, pin_memory=device.type == "cuda", chunk_size=config.grad_cache_chunk,
                     call_cost=CALL_COST_TOKENS.get(device.type, CALL_COST_TOKENS["cuda"]))
    try:
        while state.step < total:
            if (config.fail_at_step is not None and state.step + 1 == config.fail_at_step and fault_marker is not None
                    and not _exists(fault_marker)):
                _inject_fault(fault_marker, rank, world, state.step + 1)

            t0 = time.perf_counter()
            loss_total, loss_time = 0.0, 0.0
            for a in range(config.grad_accumulation):
                micro = state.micro + a
                batch, inputs = feed.get(micro)
                labels, mask = global_labels(batch, device, config.in_batch_negatives)
                sync = (model.no_sync() if isinstance(model, nn.parallel.DistributedDataParallel)
                        and a < config.grad_accumulation - 1 else contextlib.nullcontext())
                timed: list[float] = []

                def loss_of(scores: torch.Tensor) -> torch.Tensor:
                    """The loss on a detached copy of `scores`, its gradient fed back into them."""
                    t1 = time.perf_counter()
                    leaf = scores.detach().requires_grad_(True)
                    loss = loss_fn(leaf, labels, mask)
                    scaled = loss / config.grad_accumulation
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    timed.append(time.perf_counter() - t1)
                    scores.backward(leaf.grad)
                    return loss

                def autocast() -> contextlib.AbstractContextManager:
                    return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

                with sync:
                    if config.grad_cache_chunk:
                        loss = grad_cached_backward(model, encoder, batch, device, inputs, loss_of, autocast)
                    else:
                        with autocast():
                            scores = scores_for(model, encoder, batch, device, inputs)
                        loss = loss_of(scores)
                loss_time += sum(timed)
                loss_total += float(loss.detach())
            if scaler is not None:
                scaler.unscale_(optimizer)
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(towers.parameters(), config.max_grad_norm)
            lr = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            dt, cycle = now - t0, now - cycle_start
            cycle_start = now

            state.step += 1
            state.micro += config.grad_accumulation
            metrics = {
                "step": state.step,
                "epoch": state.micro / plan.per_epoch,
                "loss": loss_total / config.grad_accumulation,
                "lr": lr,
                "examples_per_s": queries_per_step / cycle,  # queries of the global batch per wall second
                "step_time_s": dt,  # data, forward, backward, optimizer (without reporting)
                "loss_time_fraction": loss_time / dt,
                "groups_read": len(groups),  # this worker's groups: its shard under Ray Train
            }
            state.history.append(metrics)
            last = state.step == total
            checkpoint = state.step % config.checkpoint_every == 0 or last
            # every step's metrics are in state.history (the run's curve); reports feed Ray Train and Tune
            if checkpoint or last or (state.step % config.report_every == 0 and ctx.report_due()):
                with tempfile.TemporaryDirectory(prefix="synrank-ckpt-") as tmp:
                    ckpt_dir = None
                    if checkpoint and rank == 0:
                        ckpt_dir = tmp
                        torch.save(encoder.state_dict(), os.path.join(tmp, MODEL_FILE))
                        torch.save({
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "loss": loss_fn.state_dict(),  # the loss's own state (Rand1LH's generator)
                            "step": state.step,
                            "micro": state.micro,
                            "history": state.history,
                            "resumes": state.resumes,
                            "torch_rng": torch.get_rng_state(),
                            "config": config.model_dump(mode="json"),
                        }, os.path.join(tmp, STATE_FILE))
                    ctx.report(metrics, ckpt_dir, state.step)
                if rank == 0:
                    log.info(progress_line(metrics, total, time.perf_counter() - run_start, state.step - first_step))
    finally:
        feed.close()
    return {"history": state.history, "resumes": state.resumes, "group_size": k, "total_steps": total,
            "groups_read": len(groups)}


def quiet_ray_train_reports() -> None:
    """Ray Train logs the whole TrainingReport of every report at INFO (from a logger named after
    its file); the progress line (``synrank.train.progress``) says the same in one short line."""
    from ray.train.v2._internal.execution import context as train_context

    train_logger = getattr(train_context, "logger", None)
    if train_logger is not None:
        train_logger.setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """The Ray Train entry point: ``TorchTrainer(train_loop_per_worker, **synrank.train.trainer.groups_inputs(...))``.

    ``loop_config`` (see ``synrank.train.trainer.loop_config``): ``train`` (a TrainConfig as a
    dict, its group size set), ``groups_path`` (named in errors) and ``out_dir`` (for the test-only
    fault marker); the groups themselves come as the Ray Dataset ``train``, of which this worker
    reads its shard. Returns the history on rank 0 (Ray Train's ``Result.return_value``).
    """
    import ray.train

    from synrank.train.ingest import DATASET

    config = TrainConfig.model_validate(loop_config["train"])
    if config.group_size is None:
        raise ValueError("train.group_size must be set before the workers start (every worker pads to it); "
                         "build the trainer arguments with synrank.train.trainer.groups_inputs")
    quiet_ray_train_reports()
    ctx = RayContext()
    device = ctx.device()
    set_threads(config, device)
    # The model loads while the shard streams in: reading it first waits on Ray Data's coordinator
    # and read tasks, seconds of a short run in which this worker would otherwise sit idle.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synrank-model") as pool:
        encoder = pool.submit(seeded_encoder, config, ctx.rank, device)
        shard = ray.train.get_dataset_shard(DATASET)
        groups = GroupShard.from_batches(shard.iter_batches(batch_size=None, batch_format="pyarrow"),
                                         f"{loop_config['groups_path']} (shard {ctx.rank} of {ctx.world_size})")
        out = train_loop(config, groups, ctx, loop_config.get("out_dir"), encoder=encoder.result())
    return out if ctx.rank == 0 else None


def run(config: TrainConfig, groups_path: str, *, checkpoints: str | None = None,
        out_dir: str | None = None) -> tuple[dict[str, Any], LocalContext]:
    """The loop in this process, without Ray (one worker, the whole table)."""
    from synrank.train.ingest import with_positive_threshold

    ctx = LocalContext(checkpoints, use_gpu=config.use_gpu)
    config = with_positive_threshold(config, groups_path)
    return train_loop(config, GroupShard.from_path(groups_path), ctx, out_dir), ctx
