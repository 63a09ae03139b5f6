"""The dual encoder: one transformer that embeds queries and passages into one vector space.

A model directory holds the transformer weights, its tokenizer and ``encoder_config.json``
(the :class:`EncoderConfig` below). A plain checkpoint without that file (such as the
packaged all-MiniLM-L6-v2) is read with the settings in its sentence-transformers files
(``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``) when present.
Directories written by :meth:`DualEncoder.save_pretrained` load in sentence-transformers too.

Inference runs the transformer on a chosen backend (:mod:`retrieval.backends`: ``torch``,
``onnx``, ``onnx-int8``); everything else (tokenisation, batching, pooling, normalisation) is
this module's, whatever the backend. Training (:meth:`DualEncoder.forward`) always uses torch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import AutoModel, AutoTokenizer, BatchEncoding, PreTrainedModel

from .backends import Backend, TorchBackend, load_backend
from .errors import EncoderError
from .paths import model_files_digest, resolve_model_path
from .pooling import PoolingMode, l2_normalize, pool
from .token_batches import TokenIds

logger = logging.getLogger(__name__)

ENCODER_CONFIG_FILE = "encoder_config.json"
TextKind = Literal["query", "passage"]

# Files whose bytes define the model; the fingerprint hashes them in this order.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_DEFINING_FILES = ("config.json", "vocab.txt", "tokenizer.json")


class EncoderConfig(BaseModel):
    """Contents of ``encoder_config.json``: everything needed to embed text as the model was trained.

    Invariants: vectors have ``dimension`` float32 components; when ``normalize`` is true they
    have unit L2 norm and inner product equals cosine similarity. ``fingerprint`` is the
    SHA-256 of the weights, tokenizer and the other fields here, so two directories with the
    same fingerprint embed every text identically.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    pooling: PoolingMode = "mean"
    normalize: bool = True
    max_query_length: int = Field(64, ge=8, le=8192, description="tokens, special tokens included")
    max_passage_length: int = Field(256, ge=8, le=8192, description="tokens, special tokens included")
    query_prefix: str = ""
    passage_prefix: str = ""
    dimension: int = Field(..., gt=0)
    fingerprint: str = ""

    def settings_bytes(self) -> bytes:
        """Canonical JSON of every field but the fingerprint (an input to the fingerprint)."""
        return json.dumps(self.model_dump(exclude={"fingerprint"}), sort_keys=True).encode()


@dataclass(frozen=True)
class TokenEmbeddings:
    """Token-level output for one text (used by word-level distillation).

    ``embeddings``: ``[n_tokens, hidden]`` float32 last-layer states (not normalised);
    ``offsets``: ``[n_tokens, 2]`` character spans in the input text (``(0, 0)`` for special tokens);
    ``special``: ``[n_tokens]`` bool, true for [CLS]/[SEP]-like tokens.
    """

    embeddings: np.ndarray
    offsets: np.ndarray
    special: np.ndarray


def compute_fingerprint(model_dir: Path, config: EncoderConfig) -> str:
    """SHA-256 over the model's defining files and the encoder settings (:func:`retrieval.paths.model_files_digest`)."""
    if not any((model_dir / name).is_file() for name in _WEIGHT_FILES):
        raise EncoderError(f"{model_dir}: no model weights ({' or '.join(_WEIGHT_FILES)})")
    return model_files_digest(model_dir, (*_WEIGHT_FILES, *_DEFINING_FILES), config.settings_bytes())


def _settings_from_sentence_transformers(model_dir: Path, hidden_size: int) -> EncoderConfig:
    """Read pooling, normalisation and length from sentence-transformers files, else defaults."""
    pooling: PoolingMode = "mean"
    normalize = False
    max_length = 256
    modules_file = model_dir / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Pooling"):
                pool_cfg = json.loads((model_dir / module["path"] / "config.json").read_text())
                if pool_cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif not pool_cfg.get("pooling_mode_mean_tokens", True):
                    raise EncoderError(f"{model_dir}: unsupported sentence-transformers pooling {pool_cfg}")
            elif kind.endswith("Normalize"):
                normalize = True
    else:
        normalize = True  # a bare checkpoint: cosine similarity is the safe default
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length", max_length))
    return EncoderConfig(
        pooling=pooling,
        normalize=normalize,
        max_query_length=max_length,  # sentence-transformers uses one length for both
        max_passage_length=max_length,
        dimension=hidden_size,
    )


class DualEncoder:
    """Embeds queries and passages with one shared transformer.

    Use :meth:`from_pretrained` to load; :meth:`encode_queries` / :meth:`encode_passages` for
    inference (float32 numpy, length-sorted batches, ``torch.inference_mode``);
    :meth:`tokenize` + :meth:`forward` for training (differentiable torch tensors).
    ``backend`` runs the transformer for inference (:meth:`embed` and everything built on it).
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer, config: EncoderConfig, source: str, backend: Backend | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        #: Where the model was loaded from, as given (a path or the builtin model name).
        self.source = source
        #: What runs the transformer forward at inference (see :mod:`retrieval.backends`).
        self.backend: Backend = backend or TorchBackend(model)

    @property
    def fingerprint(self) -> str:
        """Content fingerprint of weights, tokenizer and settings (see :class:`EncoderConfig`)."""
        return self.config.fingerprint

    @property
    def dimension(self) -> int:
        """Length of every embedding vector."""
        return self.config.dimension

    @property
    def model_dir(self) -> Path:
        """The model directory :attr:`source` names."""
        return resolve_model_path(self.source)

    @classmethod
    def from_pretrained(
        cls,
        spec: str | os.PathLike[str],
        device: str = "cpu",
        backend: str = "torch",
        threads: int | None = None,
    ) -> "DualEncoder":
        """Load a model directory (or ``builtin:all-MiniLM-L6-v2``) with an inference backend.

        Raises :class:`EncoderError` if the directory is missing or unreadable, or if its weights
        no longer match the fingerprint recorded in ``encoder_config.json``, and
        :class:`~retrieval.backends.BackendError` if ``backend`` is an ONNX backend without a
        fresh export and a passing parity record (``threads``: its ONNX Runtime threads,
        default torch's count).
        """
        model_dir = resolve_model_path(spec)
        if not (model_dir / "config.json").is_file():
            raise EncoderError(f"{model_dir}: not a model directory (no config.json)")
        try:
            model = AutoModel.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"{model_dir}: cannot load model or tokenizer: {exc}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise EncoderError(f"{model_dir}: a fast (tokenizers) tokenizer is required for offsets")
        config_file = model_dir / ENCODER_CONFIG_FILE
        if config_file.is_file():
            try:
                config = EncoderConfig.model_validate_json(config_file.read_text())
            except ValidationError as exc:
                raise EncoderError(f"{config_file}: invalid encoder config: {exc.errors()[0]['msg']}") from exc
        else:
            config = _settings_from_sentence_transformers(model_dir, model.config.hidden_size)
        # hashed once: the weights are read in full (a reload's largest cost after the session)
        actual = compute_fingerprint(model_dir, config)
        if config.fingerprint and config.fingerprint != actual:
            raise EncoderError(
                f"{model_dir}: files do not match the fingerprint in {ENCODER_CONFIG_FILE} "
                "(modified or corrupt since it was saved)"
            )
        config = config.model_copy(update={"fingerprint": actual})
        if config.dimension != model.config.hidden_size:
            raise EncoderError(
                f"{model_dir}: encoder_config dimension {config.dimension} != hidden size {model.config.hidden_size}"
            )
        model.to(device).eval()
        encoder = cls(model, tokenizer, config, str(spec))
        return encoder.with_backend(backend, threads) if backend != "torch" else encoder

    def with_backend(self, backend: str, threads: int | None = None, require_parity: bool = True) -> "DualEncoder":
        """This encoder (same weights, tokenizer, settings; shared, not copied) on another backend.

        ``require_parity=False`` is for the parity check itself, which must run a backend
        before its record exists; everything else loads only backends that passed.
        """
        if self.model.device.type != "cpu" and backend == "auto":
            return self  # ONNX backends run on CPU only: on an accelerator, auto is torch
        if self.model.device.type != "cpu" and backend != "torch":
            raise EncoderError(f"backend {backend!r} runs on CPU only; the model is on {self.model.device}")
        chosen = load_backend(backend, self.model, self.model_dir, self.fingerprint, threads, require_parity)
        return DualEncoder(self.model, self.tokenizer, self.config, self.source, chosen)

    # ----------------------------------------------------------------------------- training API
    def tokenize(self, texts: Sequence[str], kind: TextKind, return_offsets: bool = False) -> BatchEncoding:
        """Tokenise with the prefix and length limit of ``kind``; padded torch tensors on the model's device.

        With ``return_offsets`` the encoding also holds ``offset_mapping`` ``[batch, seq, 2]``
        (character spans relative to the text *without* its prefix; ``(0, 0)`` for special
        tokens and for prefix tokens) and ``special_tokens_mask``.
        """
        prefix, max_length = self._prefix_and_length(kind)
        batch = self.tokenizer(
            [prefix + t for t in texts],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
            return_offsets_mapping=return_offsets,
            return_special_tokens_mask=return_offsets,
        )
        if return_offsets and prefix:
            shifted = batch["offset_mapping"] - len(prefix)
            in_prefix = batch["offset_mapping"][..., 1] <= len(prefix)
            shifted[in_prefix] = 0
            batch["offset_mapping"] = shifted
        return batch.to(self.model.device)

    def forward(self, batch: BatchEncoding) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer; returns ``(embeddings [batch, dim], token_states [batch, seq, hidden])``.

        ``embeddings`` are pooled and (if configured) normalised exactly as at index and query time.
        """
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        token_states = self.model(**inputs).last_hidden_state  # [batch, seq, hidden]
        pooled = pool(token_states, batch["attention_mask"], self.config.pooling)  # [batch, hidden]
        if self.config.normalize:
            pooled = l2_normalize(pooled)
        return pooled, token_states

    # ---------------------------------------------------------------------------- inference API
    def encode_queries(self, queries: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed queries: ``[n, dimension]`` float32, in input order."""
        return self.encode(queries, "query", batch_size)

    def encode_passages(self, passages: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed passage texts (use :attr:`Passage.full_text`): ``[n, dimension]`` float32, in input order."""
        return self.encode(passages, "passage", batch_size)

    def encode(self, texts: Sequence[str], kind: TextKind, batch_size: int = 32) -> np.ndarray:
        """Embed texts in batches of similar token length (little padding); rows in input order."""
        return self.encode_token_ids(self.token_ids(texts, kind), batch_size)

    def token_ids(self, texts: Sequence[str], kind: TextKind) -> TokenIds:
        """Unpadded token ids of ``texts`` as ``kind`` (its prefix, truncated to its length), length-sorted."""
        prefix, max_length = self._prefix_and_length(kind)
        ids = self.tokenizer(
            [prefix + t for t in texts],
            truncation=True,
            max_length=max_length,
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        return TokenIds.of(ids)

    def encode_token_ids(self, tokens: TokenIds, batch_size: int = 32, backend: Backend | None = None) -> np.ndarray:
        """Vectors ``[n, dimension]`` float32 of tokenised texts, in input order (batches of ``batch_size``)."""
        out = np.empty((len(tokens), self.dimension), dtype=np.float32)
        for rows in tokens.batches(batch_size):
            out[rows] = self.embed_rows(tokens, rows, backend)
        return out

    def embed_rows(self, tokens: TokenIds, rows: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        """Vectors ``[len(rows), dimension]`` of one batch of ``tokens``, padded to its longest member."""
        input_ids, mask, _ = tokens.pad(rows, self.tokenizer.pad_token_id)  # [batch, width] each
        device = self.model.device
        return self.embed(torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device), backend)

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, backend: Backend | None = None
    ) -> np.ndarray:
        """Vectors ``[batch, dimension]`` float32 of one padded batch of token ids (``[batch, seq]``).

        The one inference path: ``backend`` (default :attr:`backend`) runs the transformer,
        then pooling and normalisation exactly as :meth:`forward` does in training.
        """
        with torch.inference_mode():
            states = (backend or self.backend).last_hidden_state(
                input_ids, attention_mask, torch.zeros_like(input_ids)
            )  # [batch, seq, hidden]
            pooled = pool(states, attention_mask.to(states.device), self.config.pooling)  # [batch, hidden]
            if self.config.normalize:
                pooled = l2_normalize(pooled)
        return pooled.float().cpu().numpy()

    def encode_tokens(self, texts: Sequence[str], kind: TextKind, batch_size: int = 32) -> list[TokenEmbeddings]:
        """Token-level embeddings with character offsets, one :class:`TokenEmbeddings` per text."""
        results: list[TokenEmbeddings | None] = [None] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = list(texts[start : start + batch_size])
                batch = self.tokenize(chunk, kind, return_offsets=True)
                _, states = self.forward(batch)  # [batch, seq, hidden]
                for row in range(len(chunk)):
                    n = int(batch["attention_mask"][row].sum())
                    results[start + row] = TokenEmbeddings(
                        embeddings=states[row, :n].float().cpu().numpy(),
                        offsets=batch["offset_mapping"][row, :n].cpu().numpy(),
                        special=batch["special_tokens_mask"][row, :n].cpu().numpy().astype(bool),
                    )
        return [r for r in results if r is not None]

    def _prefix_and_length(self, kind: TextKind) -> tuple[str, int]:
        if kind == "query":
            return self.config.query_prefix, self.config.max_query_length
        if kind == "passage":
            return self.config.passage_prefix, self.config.max_passage_length
        raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")

    # ------------------------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write weights, tokenizer, ``encoder_config.json`` (with a fresh fingerprint) and the
        sentence-transformers module files, so the directory loads here and in sentence-transformers.

        Afterwards :attr:`source` and :attr:`fingerprint` describe the saved directory.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if self.config.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
            (out / "2_Normalize").mkdir(exist_ok=True)
        (out / "modules.json").write_text(json.dumps(modules, indent=2))
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": self.dimension,
                    "pooling_mode_cls_token": self.config.pooling == "cls",
                    "pooling_mode_mean_tokens": self.config.pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
                indent=2,
            )
        )
        (out / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": self.config.max_passage_length, "do_lower_case": False}, indent=2)
        )
        config = self.config.model_copy(update={"fingerprint": ""})
        config = config.model_copy(update={"fingerprint": compute_fingerprint(out, config)})
        (out / ENCODER_CONFIG_FILE).write_text(config.model_dump_json(indent=2))
        # From now on this encoder *is* the saved artifact: an index built with it records the
        # saved directory and its fingerprint (the weights may have been trained since loading).
        self.config = config
        self.source = str(out)
        return out
