"""The cross-encoder (the teacher): reads a query and a passage together and scores the pair.

Two heads, chosen when a model is first built from a backbone (``head`` in the config):

``mean`` (default)
    The mean of the last layer's token states over the whole joint sequence
    (``[CLS] query [SEP] passage [SEP]``, padding excluded), then one linear layer -> a score.
    Sentence-transformers backbones such as all-MiniLM-L6-v2 were trained on mean-pooled
    states, so this head starts from a representation the backbone already produces; its
    weights start at zero so the untrained model scores every pair equally.
``pooler``
    BERT's pooler (``tanh(W h_[CLS])``) and a new linear layer: the standard
    ``AutoModelForSequenceClassification``. all-MiniLM-L6-v2's pooler and [CLS] state were
    never trained for anything. A first teacher with this head and one learning rate of 3e-5
    sat at chance loss for ~200 steps. Measured under identical settings (head at 2e-3,
    transformer at 1e-4; ``benchmarks/teacher_heads.py``, 60 steps) both heads leave chance
    at about the same pace: the mean head reached a slightly lower loss, the pooler a slightly
    higher dev nDCG@10 (0.604 vs 0.586, both still early). So the learning rates, not the head,
    were what kept the first teacher at chance; ``mean`` stays the default (it is the
    representation the backbone was trained to produce) without evidence that it is better.

A model directory written by :meth:`CrossEncoder.save_pretrained` holds the transformer's
weights and tokenizer, ``cross_encoder_config.json`` (:class:`CrossEncoderConfig`) and the
sentence-transformers files that make it load as ``sentence_transformers.CrossEncoder`` with the
same scores (``pooler``: a plain sequence-classification checkpoint; ``mean``: ``modules.json``
with ``Transformer -> Pooling(mean) -> Dense(1)``), both with the identity as activation.

Scores are raw logits (higher = more relevant); they are comparable within one model only.
The teacher score that the student distils from is :func:`teacher_scores`
(:mod:`retrieval.teacher_score`, re-exported here): the cross-encoder's score alone, or fused with
first-stage scores by :func:`retrieval.fusion.fuse`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BatchEncoding,
)

from .errors import EncoderError, InvalidValueError
from .jsonio import write_text_atomic
# the teacher score lives beside this module; re-exported for the trainers and drivers that score with it
from .teacher_score import TeacherFusion, exact_bm25_scores, exact_dense_scores, teacher_scores
from .paths import model_files_digest, resolve_model_path
from .token_batches import TokenIds

__all__ = ["CROSS_ENCODER_CONFIG_FILE", "CrossEncoder", "CrossEncoderConfig", "HeadKind", "PairAttention", "TeacherFusion",
           "exact_bm25_scores", "exact_dense_scores", "teacher_scores", "update_config"]

logger = logging.getLogger(__name__)

CROSS_ENCODER_CONFIG_FILE = "cross_encoder_config.json"
HeadKind = Literal["mean", "pooler"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "2_Dense/model.safetensors")
_DEFINING_FILES = ("config.json", "vocab.txt", "tokenizer.json")
#: The identity, so sentence-transformers' ``predict`` returns our raw scores (its default is a sigmoid).
_ST_IDENTITY = "torch.nn.modules.linear.Identity"


class CrossEncoderConfig(BaseModel):
    """Contents of ``cross_encoder_config.json``.

    ``max_length`` counts the tokens of the joint sequence, special tokens included; longer
    pairs lose passage tokens first (``longest_first`` truncation; queries are short).
    ``fusion`` is set once fusion weights were fitted: then :func:`teacher_scores` is the fused
    score by default. ``fingerprint`` is the SHA-256 of weights, tokenizer and the other fields.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    head: HeadKind = "mean"
    max_length: int = Field(256, ge=16, le=8192)
    backbone: str = ""
    fusion: TeacherFusion | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="summary of how it was trained")
    fingerprint: str = ""

    def settings_bytes(self) -> bytes:
        return json.dumps(self.model_dump(exclude={"fingerprint", "training"}), sort_keys=True).encode()


@dataclass(frozen=True)
class PairAttention:
    """Query->passage attention of one (query, passage) pair, for word-level distillation.

    ``attention``: ``[n_query_tokens, n_passage_tokens]`` float32, the attention weights from each
    real query token to each real passage token, averaged over heads and the chosen layers.
    Special tokens are excluded on both sides, so rows sum to less than 1 (the rest went to
    query and special tokens); row-normalise before using it as a distribution.
    ``query_offsets`` ``[n_query_tokens, 2]`` and ``passage_offsets`` ``[n_passage_tokens, 2]``:
    character spans of those tokens in the query text and in the passage text respectively.
    """

    attention: np.ndarray
    query_offsets: np.ndarray
    passage_offsets: np.ndarray


class _MeanHeadModel(nn.Module):
    """Transformer + mean pooling over the joint sequence + a linear layer (the ``mean`` head)."""

    def __init__(self, backbone: nn.Module, dense: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.dense = dense

    def forward(self, output_attentions: bool = False, **inputs: torch.Tensor):
        out = self.backbone(**inputs, output_attentions=output_attentions)
        mask = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)  # [batch, seq, 1]
        pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [batch, hidden]
        return self.dense(pooled).squeeze(-1), out.attentions  # [batch]


def compute_fingerprint(model_dir: Path, config: CrossEncoderConfig) -> str:
    """SHA-256 over the weight, tokenizer and config files and the settings (:func:`retrieval.paths.model_files_digest`)."""
    return model_files_digest(model_dir, (*_WEIGHT_FILES, *_DEFINING_FILES), config.settings_bytes())


class CrossEncoder:
    """Scores (query, passage) pairs with one transformer reading both.

    Load a trained model with :meth:`from_pretrained`; start a new one from a backbone with
    :meth:`from_backbone`. :meth:`score` for inference (length-sorted batches,
    ``torch.inference_mode``); :meth:`tokenize` + :meth:`forward` for training;
    :meth:`attentions` for word-level distillation.
    """

    def __init__(self, model: nn.Module, tokenizer, config: CrossEncoderConfig, source: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.source = source

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_backbone(
        cls,
        spec: str | os.PathLike[str],
        head: HeadKind = "mean",
        max_length: int = 256,
        device: str = "cpu",
        attentions: bool = False,
        seed: int = 0,
    ) -> CrossEncoder:
        """A new, untrained cross-encoder on a transformer checkpoint (``builtin:all-MiniLM-L6-v2``
        or any local directory); the head is initialised here (``seed``)."""
        model_dir = _model_dir(spec)
        tokenizer = _tokenizer(model_dir)
        torch.manual_seed(seed)
        attn = "eager" if attentions else "sdpa"
        try:
            if head == "pooler":
                model: nn.Module = AutoModelForSequenceClassification.from_pretrained(
                    model_dir, num_labels=1, attn_implementation=attn
                )
            elif head == "mean":
                backbone = AutoModel.from_pretrained(model_dir, attn_implementation=attn)
                dense = nn.Linear(backbone.config.hidden_size, 1)
                nn.init.zeros_(dense.weight)  # every pair scores the same until training says otherwise
                nn.init.zeros_(dense.bias)
                model = _MeanHeadModel(backbone, dense)
            else:
                raise InvalidValueError(f"head must be 'mean' or 'pooler', not {head!r}")
        except (OSError, ValueError) as exc:
            if isinstance(exc, InvalidValueError):
                raise
            raise EncoderError(f"{model_dir}: cannot load a transformer: {exc}") from exc
        config = CrossEncoderConfig(head=head, max_length=max_length, backbone=str(spec))
        model.to(device).eval()
        return cls(model, tokenizer, config, str(spec))

    @classmethod
    def from_pretrained(cls, spec: str | os.PathLike[str], device: str = "cpu", attentions: bool = False) -> CrossEncoder:
        """Load a directory written by :meth:`save_pretrained`.

        ``attentions=True`` loads the eager attention implementation, the one that returns
        attention weights (fused kernels such as SDPA return none); scoring works either way.
        Raises :class:`EncoderError` for a missing, unreadable or modified directory.
        """
        model_dir = _model_dir(spec)
        config_file = model_dir / CROSS_ENCODER_CONFIG_FILE
        if not config_file.is_file():
            raise EncoderError(f"{model_dir}: not a cross-encoder directory (no {CROSS_ENCODER_CONFIG_FILE})")
        try:
            config = CrossEncoderConfig.model_validate_json(config_file.read_text())
        except ValidationError as exc:
            raise EncoderError(f"{config_file}: invalid cross-encoder config: {exc.errors()[0]['msg']}") from exc
        if config.fingerprint and config.fingerprint != compute_fingerprint(model_dir, config):
            raise EncoderError(
                f"{model_dir}: files do not match the fingerprint in {CROSS_ENCODER_CONFIG_FILE} (modified or corrupt)"
            )
        tokenizer = _tokenizer(model_dir)
        attn = "eager" if attentions else "sdpa"
        try:
            if config.head == "pooler":
                model: nn.Module = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation=attn)
            else:
                from safetensors.torch import load_file

                backbone = AutoModel.from_pretrained(model_dir, attn_implementation=attn)
                dense = nn.Linear(backbone.config.hidden_size, 1)
                state = load_file(model_dir / "2_Dense" / "model.safetensors")
                dense.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
                model = _MeanHeadModel(backbone, dense)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise EncoderError(f"{model_dir}: cannot load the cross-encoder: {exc}") from exc
        model.to(device).eval()
        return cls(model, tokenizer, config, str(spec))

    @property
    def fingerprint(self) -> str:
        return self.config.fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def transformer(self) -> nn.Module:
        """The underlying transformer (for the attention implementation and parameter groups)."""
        return self.model.backbone if isinstance(self.model, _MeanHeadModel) else self.model

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the freshly initialised head (they train with a larger learning rate)."""
        if isinstance(self.model, _MeanHeadModel):
            return list(self.model.dense.parameters())
        return list(self.model.classifier.parameters())

    # ----------------------------------------------------------------------------- training API
    def tokenize(self, queries: Sequence[str], passages: Sequence[str], return_offsets: bool = False) -> BatchEncoding:
        """Tokenise pairs as ``[CLS] query [SEP] passage [SEP]``, padded, on the model's device.

        With ``return_offsets`` the encoding also holds ``offset_mapping`` (character spans
        within each pair's own query or passage text) and the fast tokenizer's sequence ids
        (``encoding.sequence_ids(row)``: 0 query, 1 passage, ``None`` special/padding).
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries for {len(passages)} passages")
        batch = self.tokenizer(
            list(queries),
            list(passages),
            padding=True,
            truncation="longest_first",
            max_length=self.config.max_length,
            return_tensors="pt",
            return_offsets_mapping=return_offsets,
        )
        if "token_type_ids" not in batch:
            batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        return batch.to(self.device)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable scores ``[batch]`` for a tokenised batch."""
        return self._run(batch, output_attentions=False)[0]

    def _run(self, batch: Mapping[str, torch.Tensor], output_attentions: bool) -> tuple[torch.Tensor, Any]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        if isinstance(self.model, _MeanHeadModel):
            return self.model(output_attentions=output_attentions, **inputs)
        out = self.model(**inputs, output_attentions=output_attentions)
        return out.logits.squeeze(-1), out.attentions

    # ---------------------------------------------------------------------------- inference API
    def score(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Scores ``[n]`` float32 for pairs ``(queries[i], passages[i])``, in input order.

        Pairs are batched by token length (little padding) and run under ``torch.inference_mode``.
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries for {len(passages)} passages")
        out = np.empty(len(queries), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for rows, batch in self._length_sorted_batches(queries, passages, batch_size):
                    out[rows] = self.forward(batch).float().cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def _length_sorted_batches(
        self, queries: Sequence[str], passages: Sequence[str], batch_size: int
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """``(rows, batch)`` of pairs grouped by token length (:class:`retrieval.token_batches.TokenIds`)."""
        encoded = self.tokenizer(
            list(queries), list(passages), truncation="longest_first", max_length=self.config.max_length,
            return_attention_mask=False,
        )
        tokens = TokenIds.of(encoded["input_ids"], encoded.get("token_type_ids"))
        device = self.device
        for rows in tokens.batches(batch_size):
            arrays = zip(("input_ids", "attention_mask", "token_type_ids"), tokens.pad(rows, self.tokenizer.pad_token_id))
            yield rows, {name: torch.from_numpy(array).to(device) for name, array in arrays}

    def attentions(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        layers: Sequence[int] = (-1,),
        batch_size: int = 16,
    ) -> list[PairAttention]:
        """Query->passage attention maps (see :class:`PairAttention`), one per pair, in input order.

        ``layers`` index the transformer's layers (negative from the end); heads are averaged,
        then layers. Needs attention weights, which fused kernels do not return: a model loaded
        without ``attentions=True`` is switched to the eager implementation here.
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries for {len(passages)} passages")
        transformer = self.transformer
        if getattr(transformer.config, "_attn_implementation", "eager") != "eager":
            logger.info("switching the cross-encoder to eager attention to read attention weights")
            transformer.set_attn_implementation("eager")
        n_layers = transformer.config.num_hidden_layers
        picked = sorted({layer % n_layers for layer in layers})
        if any(not -n_layers <= layer < n_layers for layer in layers) or not picked:
            raise InvalidValueError(f"attention layers {list(layers)} out of range for {n_layers} layers")
        results: list[PairAttention] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(queries), batch_size):
                    q_chunk, p_chunk = queries[start : start + batch_size], passages[start : start + batch_size]
                    batch = self.tokenize(q_chunk, p_chunk, return_offsets=True)
                    _, attentions = self._run(batch, output_attentions=True)
                    # [layers, batch, heads, seq, seq] -> heads and layers averaged: [batch, seq, seq]
                    averaged = torch.stack([attentions[i] for i in picked]).mean(dim=(0, 2)).float().cpu().numpy()
                    offsets = batch["offset_mapping"].cpu().numpy()
                    for row in range(len(q_chunk)):
                        seq_ids = batch.sequence_ids(row)
                        q_idx = [i for i, s in enumerate(seq_ids) if s == 0]
                        p_idx = [i for i, s in enumerate(seq_ids) if s == 1]
                        results.append(
                            PairAttention(
                                attention=averaged[row][np.ix_(q_idx, p_idx)].astype(np.float32),
                                query_offsets=offsets[row, q_idx].astype(np.int32),
                                passage_offsets=offsets[row, p_idx].astype(np.int32),
                            )
                        )
        finally:
            self.model.train(was_training)
        return results

    # ------------------------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write weights, tokenizer, ``cross_encoder_config.json`` (fresh fingerprint) and the
        sentence-transformers files; returns the directory."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        # sentence-transformers truncates at the tokenizer's model_max_length: make it ours
        self.tokenizer.model_max_length = self.config.max_length
        self.tokenizer.save_pretrained(out)
        st_config = {"model_type": "CrossEncoder", "activation_fn": _ST_IDENTITY, "prompts": {}, "default_prompt_name": None}
        if isinstance(self.model, _MeanHeadModel):
            from safetensors.torch import save_file

            self.model.backbone.save_pretrained(out, safe_serialization=True)
            hidden = self.model.dense.in_features
            modules = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"},
            ]
            (out / "modules.json").write_text(json.dumps(modules, indent=2))
            (out / "1_Pooling").mkdir(exist_ok=True)
            (out / "1_Pooling" / "config.json").write_text(
                json.dumps({"embedding_dimension": hidden, "pooling_mode": "mean", "include_prompt": True}, indent=2)
            )
            (out / "2_Dense").mkdir(exist_ok=True)
            (out / "2_Dense" / "config.json").write_text(
                json.dumps(
                    {
                        "in_features": hidden,
                        "out_features": 1,
                        "bias": True,
                        "activation_function": _ST_IDENTITY,
                        "module_input_name": "sentence_embedding",
                        "module_output_name": "scores",
                    },
                    indent=2,
                )
            )
            state = {f"linear.{k}": v.detach().cpu().contiguous() for k, v in self.model.dense.state_dict().items()}
            save_file(state, out / "2_Dense" / "model.safetensors")
            (out / "sentence_bert_config.json").write_text(
                json.dumps(
                    {
                        "transformer_task": "feature-extraction",
                        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
                        "module_output_name": "token_embeddings",
                        "max_seq_length": self.config.max_length,
                    },
                    indent=2,
                )
            )
        else:
            self.model.config.sentence_transformers = {"activation_fn": _ST_IDENTITY}
            self.model.save_pretrained(out, safe_serialization=True)
        (out / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
        config = self.config.model_copy(update={"fingerprint": ""})
        config = config.model_copy(update={"fingerprint": compute_fingerprint(out, config)})
        (out / CROSS_ENCODER_CONFIG_FILE).write_text(config.model_dump_json(indent=2))
        self.config = config
        return out


def update_config(directory: str | os.PathLike[str], **changes: Any) -> CrossEncoderConfig:
    """Change fields of a saved model's ``cross_encoder_config.json`` (e.g. ``fusion``), re-fingerprinted."""
    model_dir = Path(directory)
    path = model_dir / CROSS_ENCODER_CONFIG_FILE
    config = CrossEncoderConfig.model_validate_json(path.read_text())
    config = CrossEncoderConfig.model_validate({**config.model_dump(), **changes, "fingerprint": ""})
    config = config.model_copy(update={"fingerprint": compute_fingerprint(model_dir, config)})
    write_text_atomic(path, config.model_dump_json(indent=2))
    return config


def _model_dir(spec: str | os.PathLike[str]) -> Path:
    model_dir = resolve_model_path(spec)
    if not (model_dir / "config.json").is_file():
        raise EncoderError(f"{model_dir}: not a model directory (no config.json)")
    return model_dir


def _tokenizer(model_dir: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{model_dir}: cannot load the tokenizer: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderError(f"{model_dir}: a fast (tokenizers) tokenizer is required for offsets")
    return tokenizer
