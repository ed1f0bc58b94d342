"""The bi-encoder shared by training and evaluation: an HF encoder, pooling, normalisation, query
and passage prefixes, and export to a sentence-transformers directory. Passages reach it already
formatted (`synrank.text.format_passage`).

Queries and passages go through the same weights (shared encoder); they differ only in prefix and
maximum length. Scores are dot products of the (optionally L2-normalised) embeddings.

`encode` (inference) runs the transformer with torch, or with ONNX Runtime on CPUs when
`config.backend` says onnx / onnx-int8 (`synrank.encoder_onnx`: exported once per model, cached);
tokenisation, batching, pooling and normalisation are the same either way. Training runs torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from synrank.config import EncoderConfig
from synrank.models import resolve_encoder

Kind = Literal["query", "passage"]

# Written next to an exported model so that synrank reloads it with the same prefixes and lengths.
SYNRANK_ENCODER_FILE = "synrank_encoder.json"


class BiEncoder(nn.Module):
    """An HF transformer with mean or CLS pooling and optional L2 normalisation."""

    def __init__(self, config: EncoderConfig | None = None, *, model_path: str | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.config = config or EncoderConfig()
        path = model_path or resolve_encoder(self.config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"encoder {path!r} is not a loadable Hugging Face encoder: {exc}") from exc
        self.model_path = path
        self._onnx = None  # the ONNX Runtime session of backend onnx / onnx-int8, made on first use

    @classmethod
    def load(cls, path: str, **overrides) -> "BiEncoder":
        """Load an encoder; a synrank export brings its own pooling, prefixes and lengths."""
        resolved = resolve_encoder(path)
        meta = Path(resolved) / SYNRANK_ENCODER_FILE
        settings = json.loads(meta.read_text()) if meta.exists() else {}
        settings.update(overrides)
        settings["model"] = resolved
        return cls(EncoderConfig(**settings), model_path=resolved)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _prefix_and_length(self, kind: Kind) -> tuple[str, int]:
        if kind == "query":
            return self.config.query_prefix, self.config.max_query_length
        if kind == "passage":
            return self.config.passage_prefix, self.config.max_passage_length
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")

    def tokenize(self, texts: Sequence[str], kind: Kind) -> dict[str, torch.Tensor]:
        prefix, max_length = self._prefix_and_length(kind)
        return self.tokenizer(
            [prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = hidden.float()  # bf16/fp16 weights or autocast: pool and normalise in fp32
        if self.config.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.config.normalize or self.config.similarity == "cosine":
            emb = nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    def for_inference(self, device: str | torch.device) -> "BiEncoder":
        """On `device`, in eval mode, with the weights in `config.inference_dtype`; with an ONNX
        `config.backend`, on the CPU with the ONNX Runtime session ready (exported if needed)."""
        device = torch.device(device)
        if self.config.backend != "torch":
            if device.type != "cpu":
                raise ValueError(f"encoder.backend={self.config.backend!r} runs on CPUs (ONNX Runtime's CPU provider), "
                                 f"not on {device}; use encoder.backend=torch there")
            self.eval()
            self._onnx_transformer()
            return self
        self.to(device=device, dtype=inference_dtype(self.config.inference_dtype, device))
        self.eval()
        return self

    def _onnx_transformer(self):
        if self._onnx is None:
            from synrank.encoder_onnx import OnnxTransformer

            self._onnx = OnnxTransformer.for_encoder(self)
        return self._onnx

    def _inference_forward(self, device: torch.device):
        """features -> embeddings, by `config.backend` (pooling and normalisation are the same)."""
        if self.config.backend == "torch":
            return lambda features: self({k: v.to(device, non_blocking=True) for k, v in features.items()})
        transformer = self._onnx_transformer()
        return lambda features: self.pool(transformer(features), features["attention_mask"])

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                         **({"token_type_ids": features["token_type_ids"]} if "token_type_ids" in features else {}))
        return self.pool(out.last_hidden_state, features["attention_mask"])

    def embed(self, texts: Sequence[str], kind: Kind) -> torch.Tensor:
        """Embeddings with gradients (training)."""
        device = next(self.parameters()).device
        features = {k: v.to(device) for k, v in self.tokenize(texts, kind).items()}
        return self(features)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], kind: Kind, batch_size: int = 64) -> np.ndarray:
        """float32 embeddings [len(texts), dim], in input order. Batches are length-sorted to pad less,
        and the next batch is tokenized while the model runs on this one (the Rust tokenizer releases
        the GIL), so tokenization is off the critical path; on a GPU it otherwise bounds the rate."""
        from concurrent.futures import ThreadPoolExecutor

        was_training = self.training
        self.eval()
        forward = self._inference_forward(next(self.parameters()).device)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synrank-tokenize") as tokenizer:
            def tokenize(idx: np.ndarray):
                return tokenizer.submit(self.tokenize, [texts[i] for i in idx], kind)

            upcoming = tokenize(batches[0]) if batches else None
            for n, idx in enumerate(batches):
                features = upcoming.result()
                if n + 1 < len(batches):
                    upcoming = tokenize(batches[n + 1])
                out[idx] = forward(features).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write a sentence-transformers directory (Transformer, Pooling, optional Normalize) that
        `SentenceTransformer(out_dir)` loads with the same embeddings, plus synrank's own settings."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.config.normalize or self.config.similarity == "cosine":
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (out / "2_Normalize").mkdir(exist_ok=True)
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": self.dim,
            "pooling_mode_cls_token": self.config.pooling == "cls",
            "pooling_mode_mean_tokens": self.config.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }, indent=2))
        (out / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": self.config.max_passage_length, "do_lower_case": False}, indent=2))
        (out / "config_sentence_transformers.json").write_text(json.dumps({
            "prompts": {"query": self.config.query_prefix, "document": self.config.passage_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if self.config.similarity == "cosine" else "dot",
        }, indent=2))
        settings = self.config.model_dump()
        settings.pop("model")
        settings.pop("backend")  # how this machine runs the model, not part of the model
        (out / SYNRANK_ENCODER_FILE).write_text(json.dumps(settings, indent=2))
        return out


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype `EncoderConfig.inference_dtype` names on `device` ("auto": bfloat16 on a CUDA GPU
    that supports it, else float32)."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def similarity(queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
    """[Q, D] x [P, D] -> [Q, P] float32 scores (dot; cosine when the embeddings are normalised),
    also under autocast: AMP would otherwise run the matmul in bf16/fp16, and the losses divide
    these scores by a small temperature."""
    with torch.autocast(queries.device.type, enabled=False):
        return queries.float() @ passages.float().T


def batched(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
