"""synrank's losses as sentence-transformers losses, for ``SentenceTransformerTrainer``.

One class per registered loss, named after the loss class of ``synrank.losses`` (``InfoNCELoss``,
``LSEPairLoss``, ``WassersteinLoss``, ...; see ``__all__``), generated from the registry, so a newly
registered loss appears here too. Each wraps the same pure function that ``synrank.losses.build``
returns; this module only turns a sentence-transformers batch into that function's inputs.

>>> from synrank.st import WassersteinLoss
>>> loss = WassersteinLoss(model, n_levels=4, temperature=0.05)      # doctest: +SKIP

Data. One row per query: the query column first, then ``k`` passage columns, and a label column
(``scores``; sentence-transformers also accepts ``score``, ``label`` or ``labels``) holding the ``k``
grades of the row's passages, in column order. The default collator then hands the loss
``sentence_features = [query, passage_1, ..., passage_k]`` and ``labels`` of shape ``[batch, k]``.

Scores and labels. As in synrank's own training loop (``synrank.train.collate``), every query of the
batch scores every passage of the batch: scores ``[B, B*k]`` with passage slot ``i*k + j`` = passage
``j`` of row ``i``, labels = the row's own grades on its own slots and 0 elsewhere (the other rows'
passages are in-batch negatives). A passage that tokenizes exactly like one of a row's own passages
but sits in another row is left out for that row (masked), not counted as its negative: the model
sees the same input, so it cannot score the copy differently. A query repeated in several rows
sees the other rows' passages as negatives; ``BatchSamplers.NO_DUPLICATES`` avoids both cases.
Scores are dot products of the embeddings in float32 (``synrank.encoder.similarity``), after L2
normalisation unless ``normalize=False`` (cosine similarity, as sentence-transformers' losses).

Positives. The positive-based losses need to know which grades count as relevant. ``n_levels`` names
the scale of the scores column (grades ``0 .. n_levels-1``) and takes synrank's rule,
``synrank.data.levels.positive_threshold`` (2 levels: >= 1; 3 and 4 levels: >= 2; 5 levels: >= 3),
and then also checks that every grade is an integer on that scale. ``positive_threshold`` sets the
smallest positive grade directly instead. With neither, grades >= 1 are positives (binary 0/1 data,
the 2-level rule). The list-wise losses use the grades themselves, not the threshold.

Devices. With ``gather_across_devices=True`` the embeddings of every device are gathered with
gradients (``sentence_transformers.util.all_gather_with_grad``) and the grades and passage keys
without, and every device computes the loss of the whole gathered batch, as synrank's loop does: the
loss is then the one a single process would compute on the concatenated batch, also for the
batch-level ``sycl_w2``. The gather's backward sums the gradients of the devices' (identical) losses
and DDP averages over the devices, so the gradient is exactly that of the global loss. Every device
must hold the same number of rows (as for any gathering loss of sentence-transformers).
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.util import all_gather, all_gather_with_grad, get_rank

from synrank.data import levels
from synrank.encoder import similarity
from synrank.losses import registry
from synrank.losses.labels import label_matrices


def _threshold(n_levels: int | None, positive_threshold: float | None) -> dict[str, float]:
    """The ``positive_threshold`` keyword to build the loss with (none: the registry's default, 1.0)."""
    if n_levels is not None and positive_threshold is not None:
        raise ValueError("give n_levels (the threshold follows synrank.data.levels.positive_threshold) or "
                         "positive_threshold, not both")
    if n_levels is not None:
        levels.RelevanceScale(n_levels)  # ValueError naming n_levels unless 2..5
        return {"positive_threshold": float(levels.positive_threshold(n_levels))}
    if positive_threshold is not None:
        return {"positive_threshold": positive_threshold}
    return {}


def passage_keys(passage_features: list[dict[str, Any]]) -> Tensor | None:
    """int64 ``[B, k]`` keys of the passages' token ids (equal keys: the same model input), or None
    when the features carry no ``input_ids`` (then every passage counts as distinct)."""
    if not passage_features:
        return None
    columns = []
    for features in passage_features:
        ids = features.get("input_ids")
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            return None
        attention = features.get("attention_mask")
        keep = attention.bool() if isinstance(attention, Tensor) and attention.shape == ids.shape else None
        rows = ids.cpu() if keep is None else [row[m] for row, m in zip(ids.cpu(), keep.cpu())]
        columns.append([_key(row) for row in rows])
    return torch.tensor(columns, dtype=torch.int64).T.contiguous()


def _key(token_ids: Tensor) -> int:
    digest = hashlib.blake2b(token_ids.to(torch.int64).numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def in_batch_labels(grades: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Labels (float) and mask (bool), each ``[Q, Q*k]``, from the ``[Q, k]`` grades and passage keys:
    synrank's in-batch layout (`synrank.losses.labels`) for groups without padding, origins or known
    positives (a sentence-transformers row has texts, not document ids)."""
    return label_matrices(grades, torch.ones_like(grades, dtype=torch.bool), keys)


def _references(doc: str | None) -> str | None:
    """The "References:" section of a loss class's docstring, as plain lines."""
    lines = inspect.cleandoc(doc or "").splitlines()
    if "References:" not in lines:
        return None
    refs = []
    for line in lines[lines.index("References:") + 1 :]:
        if line and not line.startswith(" "):
            break
        refs.append(line)
    return textwrap.dedent("\n".join(r for r in refs if r.strip())) or None


class SynrankLoss(nn.Module):
    """Base of the generated ``<Name>Loss`` classes; ``loss_name`` is the registered loss they wrap.

    Args:
        model: the SentenceTransformer being trained.
        n_levels: the scale of the scores column (grades 0..n_levels-1, 2 to 5); sets the positive
            threshold by ``synrank.data.levels.positive_threshold`` and checks the grades.
        positive_threshold: the smallest grade that counts as a positive, instead of ``n_levels``.
            Neither: 1 (binary grades).
        normalize: L2-normalise the embeddings before the dot product (cosine scores; default True).
        gather_across_devices: score against the embeddings of every device (see the module doc).
        **loss_params: the loss's own parameters (``temperature``, ``target_temperature``, ...;
            ``synrank.losses.params(name)``), passed to ``synrank.losses.build``, which raises
            ValueError naming the valid ones for an unknown one.
    """

    loss_name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, n_levels: int | None = None, positive_threshold: float | None = None,
                 normalize: bool = True, gather_across_devices: bool = False, **loss_params: Any) -> None:
        super().__init__()
        if not self.loss_name:
            raise TypeError("SynrankLoss is a base class: use one of synrank.st's <Name>Loss classes "
                            f"({', '.join(_CLASS_NAMES)}) or synrank.st.loss_class(name)")
        for flag, value in (("normalize", normalize), ("gather_across_devices", gather_across_devices)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.model = model
        self.n_levels = n_levels
        self.normalize = normalize
        self.gather_across_devices = gather_across_devices
        self.loss_fn = registry.build(self.loss_name, **_threshold(n_levels, positive_threshold), **loss_params)

    @property
    def positive_threshold(self) -> float:
        return self.loss_fn.positive_threshold

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        features = list(sentence_features)
        keys = passage_keys(features[1:])
        return self.compute_loss_from_embeddings(embed_columns(self.model, features), labels, keys)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor | None,
                                     keys: Tensor | None = None) -> Tensor:
        """The loss from the column embeddings ``[query, passage_1 .. passage_k]`` (each ``[B, D]``),
        the ``[B, k]`` grades and optional ``[B, k]`` passage keys (see ``passage_keys``)."""
        if len(embeddings) < 2:
            raise ValueError(f"{type(self).__name__} needs a query column and at least one passage column, "
                             f"got {len(embeddings)} column(s)")
        queries, passages = embeddings[0], embeddings[1:]
        b, k = queries.shape[0], len(passages)
        grades = self._grades(labels, b, k).to(queries.device)
        slots = torch.stack(passages, dim=1).reshape(b * k, -1)  # slot i*k + j: passage j of row i
        if keys is None:  # every passage distinct, also across devices
            keys = torch.arange(b * k, dtype=torch.int64).reshape(b, k) + 1 + get_rank() * b * k
        keys = keys.to(queries.device)
        if self.normalize:
            queries = nn.functional.normalize(queries, p=2, dim=-1)
            slots = nn.functional.normalize(slots, p=2, dim=-1)
        if self.gather_across_devices:
            queries, slots = all_gather_with_grad(queries), all_gather_with_grad(slots)
            grades, keys = all_gather(grades), all_gather(keys)
        label_matrix, mask = in_batch_labels(grades, keys)
        return self.loss_fn(similarity(queries, slots), label_matrix, mask)

    def _grades(self, labels: Tensor | None, b: int, k: int) -> Tensor:
        name = type(self).__name__
        if labels is None:
            raise ValueError(f"{name} needs the grades of each row's passages: a 'scores' column with {k} "
                             "grade(s) per row, one per passage column")
        labels = torch.as_tensor(labels)
        if labels.dim() == 1 and k == 1:
            labels = labels.unsqueeze(1)
        if tuple(labels.shape) != (b, k):
            raise ValueError(f"{name}: the scores column must hold one grade per passage column, shape "
                             f"(batch, k) = ({b}, {k}), got shape {tuple(labels.shape)}; the columns are the "
                             f"query, then the k={k} passages, then the scores")
        grades = labels.detach().float()
        if self.n_levels is not None:
            off = ~torch.isfinite(grades) | (grades < 0) | (grades > self.n_levels - 1) | (grades != grades.round())
            if bool(off.any()):
                bad = grades[off][0].item()
                raise ValueError(f"{name}: grade {bad!r} in the scores column is not on the n_levels={self.n_levels} "
                                 f"scale (integers 0..{self.n_levels - 1})")
        return grades

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": self.loss_name, **self.loss_fn.config(), "n_levels": self.n_levels,
                "normalize": self.normalize, "gather_across_devices": self.gather_across_devices}

    @property
    def citation(self) -> str | None:
        return _references(registry.loss_class(self.loss_name).__doc__)


def _adapter(name: str) -> type[SynrankLoss]:
    wrapped = registry.loss_class(name)
    class_name = wrapped.__name__ if wrapped.__name__.endswith("Loss") else wrapped.__name__ + "Loss"
    doc = (f"synrank's ``{name}`` loss (``synrank.losses.build({name!r}, ...)``) for sentence-transformers; "
           "arguments: see ``synrank.st.SynrankLoss``, the data layout: the ``synrank.st`` module doc.\n\n"
           + inspect.cleandoc(wrapped.__doc__ or ""))
    return type(class_name, (SynrankLoss,), {"loss_name": name, "__doc__": doc, "__module__": __name__,
                                             "__qualname__": class_name})


_ADAPTERS: dict[str, type[SynrankLoss]] = {name: _adapter(name) for name in registry.available()}
_CLASS_NAMES = sorted(cls.__name__ for cls in _ADAPTERS.values())
globals().update({cls.__name__: cls for cls in _ADAPTERS.values()})


def loss_class(name: str) -> type[SynrankLoss]:
    """The adapter class of the loss registered under ``name``; ValueError naming the valid names otherwise."""
    registry.loss_class(name)
    return _ADAPTERS[name]


__all__ = ["SynrankLoss", "in_batch_labels", "loss_class", "passage_keys", *_CLASS_NAMES]
