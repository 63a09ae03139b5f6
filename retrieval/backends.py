"""Encoder backends: what runs the transformer forward of a :class:`~retrieval.encoder.DualEncoder`.

Only the forward pass is swapped; tokenisation, length-sorted batching, pooling and
normalisation stay in the encoder, so a text embedded on any backend goes through the same code.

Backends (:data:`BACKENDS`):

- ``torch``: the eager PyTorch model (the reference; training always uses it).
- ``onnx``: ONNX Runtime on the fp32 export of the same weights.
- ``onnx-int8``: ONNX Runtime on its dynamically quantized (int8 weights) export.

An ONNX backend reads an **export directory** (written by :mod:`retrieval.onnx_export`,
command ``md2pr-export``)::

    export.json    ExportManifest: the fingerprint of the weights it was made from, and the
                   SHA-256 and size of every ONNX file
    model.onnx     fp32 graph: inputs input_ids, attention_mask, token_type_ids (int64
                   [batch, seq]); output last_hidden_state (float32 [batch, seq, hidden])
    model-int8.onnx  the same graph with int8 weights (dynamic quantization)
    parity.json    ParityRecord: each backend's measured agreement with torch and its verdict

Where it lives (:func:`export_dir`): ``<model dir>/onnx/`` for a model directory of our own
(beside the weights it was made from; the encoder fingerprint does not cover that folder), and
``<artifacts>/exports/<fingerprint[:16]>/`` for the packaged builtin model, whose directory is
inside site-packages and never written.

A backend is loaded only if its export is not stale (made from the weights with the encoder's
fingerprint, files unchanged since) and its parity record passed; otherwise
:class:`BackendError` says what to run. So the service never exports anything at startup.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import EncoderError
from .paths import artifacts_dir, builtin_model_dir

logger = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[BackendName, ...] = get_args(BackendName)
#: A backend setting: one of :data:`BACKENDS`, or ``auto`` (:data:`AUTO_ORDER`).
BackendChoice = Literal["auto", "torch", "onnx", "onnx-int8"]
#: What ``auto`` tries, fastest first (benchmarks/backend_parity.py measures the order): the first
#: that loads (export up to date, parity passed) is used; torch always loads.
AUTO_ORDER: tuple[BackendName, ...] = ("onnx-int8", "onnx", "torch")
#: The ONNX file of each exported backend, inside the export directory.
ONNX_FILES: dict[str, str] = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
EXPORT_FILE = "export.json"
PARITY_FILE = "parity.json"
#: Inputs of every exported graph, in this order (int64 ``[batch, seq]``).
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class BackendError(EncoderError):
    """A backend cannot be used: unknown, not exported, stale, or without a passing parity record."""


# ------------------------------------------------------------------------------------ records


class ExportedFile(BaseModel):
    """One ONNX file of an export: its name in the export directory, SHA-256 and size in bytes."""

    model_config = ConfigDict(extra="forbid")

    file: str
    sha256: str
    bytes: int = Field(..., ge=0)


class ExportManifest(BaseModel):
    """Contents of ``export.json``: which weights an export was made from, and how.

    ``source_fingerprint`` is the :attr:`EncoderConfig.fingerprint` of the model exported; an
    encoder with another fingerprint refuses the export as stale. ``files`` maps a backend
    name (``onnx``, ``onnx-int8``) to its file.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    source: str = Field(..., description="the model exported, as given (a directory or builtin:...)")
    source_fingerprint: str = Field(..., min_length=16)
    files: dict[str, ExportedFile]
    exporter: str = Field(..., description="how the graph was made (exporter, opset, optimisations)")
    versions: dict[str, str] = Field(default_factory=dict, description="torch, onnx, onnxruntime versions")
    created_at: str


class BackendParity(BaseModel):
    """The measured agreement of one backend with torch, and whether it passed.

    ``max_abs_diff`` / ``min_cosine``: over the embedding vectors of real queries and passages
    (keys ``query`` and ``passage``). ``ndcg_at_10``: on the dataset's split, with keys
    ``torch`` (torch on both sides), ``both_sides`` (this backend encodes queries and corpus)
    and ``query_only`` (this backend's queries over torch's corpus vectors). ``passed``
    requires ``max_abs_diff <= max_abs`` where a ``max_abs`` limit is set (fp32) and an nDCG@10
    drop of at most ``max_ndcg_drop`` on both ``both_sides`` and ``query_only``.
    """

    model_config = ConfigDict(extra="forbid")

    backend: str
    model_sha256: str = Field(..., description="the ONNX file this was measured on")
    dataset: str
    split: str
    queries: int = Field(..., ge=0)
    passages: int = Field(..., ge=0)
    max_abs_diff: dict[str, float]
    min_cosine: dict[str, float]
    ndcg_at_10: dict[str, float]
    limits: dict[str, float | None]
    passed: bool
    reason: str = Field(..., description="why it passed or failed, one line")
    checked_at: str


class ParityRecord(BaseModel):
    """Contents of ``parity.json``: the parity of each checked backend of one export."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    source_fingerprint: str
    backends: dict[str, BackendParity] = Field(default_factory=dict)


def read_record(path: Path, model: type[BaseModel]) -> Any:
    """Parse a JSON record file, or :class:`BackendError` naming the file."""
    try:
        return model.model_validate_json(path.read_text())
    except FileNotFoundError as exc:
        raise BackendError(f"{path}: missing") from exc
    except (ValidationError, ValueError) as exc:
        raise BackendError(f"{path}: invalid {model.__name__}: {exc}") from exc


def write_record(path: Path, record: BaseModel) -> None:
    """Write a record atomically (temp file, then ``os.replace``)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(record.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_dir(model_dir: Path, fingerprint: str) -> Path:
    """Where the ONNX export of the model in ``model_dir`` lives (see the module docstring)."""
    try:
        builtin = model_dir.resolve() == builtin_model_dir().resolve()
    except ImportError:  # the builtin package is not installed: nothing can be it
        builtin = False
    if builtin:
        return artifacts_dir() / "exports" / fingerprint[:16]
    return model_dir / "onnx"


# ----------------------------------------------------------------------------------- backends


class Backend(Protocol):
    """Runs the transformer: token ids in, last-layer states out (no pooling, no normalisation)."""

    #: One of :data:`BACKENDS`.
    name: str

    def last_hidden_state(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        """``[batch, seq, hidden]`` float32 for int64 ``[batch, seq]`` inputs (on the model's device)."""
        ...

    def single_threaded(self) -> "Backend":
        """The same backend computing each call on the calling thread only (for one batch per worker)."""
        ...


class TorchBackend:
    """The eager PyTorch model (thread count: torch's global setting)."""

    name = "torch"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def last_hidden_state(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # [batch, seq, hidden]

    def single_threaded(self) -> "TorchBackend":
        return self  # the caller sets torch.set_num_threads(1) on its own thread (per-thread in OpenMP)


class OnnxBackend:
    """An ONNX Runtime session on one exported graph (CPU).

    Threads are set deliberately: ``intra_op_num_threads`` = ``threads`` (the process's thread
    setting, the count :func:`retrieval.runtime.configure_threads` returned), one inter-op
    thread, sequential execution. ``session.run`` may be called from several threads at once.
    """

    def __init__(self, name: str, path: Path, threads: int) -> None:
        import onnxruntime as ort

        if threads < 1:
            raise ValueError("threads must be positive")
        self.name = name
        self.path = path
        self.threads = threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for a bad file
            raise BackendError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._single: OnnxBackend | None = None

    def last_hidden_state(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {name: given[name].cpu().numpy().astype(np.int64, copy=False) for name in self._inputs}
        (states,) = self.session.run(["last_hidden_state"], feed)  # [batch, seq, hidden]
        return torch.from_numpy(states)

    def single_threaded(self) -> "OnnxBackend":
        if self.threads == 1:
            return self
        if self._single is None:
            self._single = OnnxBackend(self.name, self.path, 1)
        return self._single


def load_backend(
    name: str,
    model: torch.nn.Module,
    model_dir: Path,
    fingerprint: str,
    threads: int | None = None,
    require_parity: bool = True,
) -> Backend:
    """The backend ``name`` for the encoder whose weights (in ``model_dir``) have ``fingerprint``.

    An ONNX backend is refused (:class:`BackendError`, one line saying what to run) when the
    export is missing, was made from other weights (stale), its file changed since, or (with
    ``require_parity``, always outside the parity check itself) its parity record is missing
    or failed. ``threads``: ONNX Runtime intra-op threads (default: torch's current count).

    ``auto`` is the first of :data:`AUTO_ORDER` that loads: the fastest backend that passed its
    parity check for these weights, else torch (each skipped backend is logged with its reason).
    """
    if name == "auto":
        for candidate in AUTO_ORDER:
            try:
                backend = load_backend(candidate, model, model_dir, fingerprint, threads, require_parity)
            except BackendError as exc:
                logger.info("backend auto: not %s: %s", candidate, exc)
                continue
            logger.info("backend auto: %s", candidate)
            return backend
    if name not in BACKENDS:
        raise BackendError(f"unknown encoder backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "torch":
        return TorchBackend(model)
    directory = export_dir(model_dir, fingerprint)
    fix = f"run: md2pr-export --encoder {model_dir}"
    manifest_path = directory / EXPORT_FILE
    if not manifest_path.is_file():
        raise BackendError(f"backend {name!r}: no ONNX export of this encoder at {directory} ({fix})")
    manifest: ExportManifest = read_record(manifest_path, ExportManifest)
    if manifest.source_fingerprint != fingerprint:
        raise BackendError(
            f"backend {name!r}: the export at {directory} is stale: made from weights "
            f"{manifest.source_fingerprint[:12]}, the encoder is {fingerprint[:12]} ({fix})"
        )
    entry = manifest.files.get(name)
    if entry is None or not (directory / entry.file).is_file():
        raise BackendError(f"backend {name!r}: the export at {directory} has no {ONNX_FILES[name]} ({fix})")
    path = directory / entry.file
    if require_parity:  # before hashing the file: a backend that failed parity costs no read
        check_parity_passed(directory, name, fingerprint, entry.sha256)
    if path.stat().st_size != entry.bytes or file_sha256(path) != entry.sha256:
        raise BackendError(f"backend {name!r}: {path} changed since it was exported (modified or corrupt; {fix})")
    return OnnxBackend(name, path, threads or torch.get_num_threads())


def check_parity_passed(directory: Path, name: str, fingerprint: str, sha256: str) -> BackendParity:
    """The passing parity record of backend ``name`` in ``directory``, or :class:`BackendError` saying why not."""
    fix = f"run: md2pr-export --encoder <model> --parity-dataset <BEIR dir> (writes {directory / PARITY_FILE})"
    path = directory / PARITY_FILE
    if not path.is_file():
        raise BackendError(f"backend {name!r} has no parity record ({path} is missing; {fix})")
    record: ParityRecord = read_record(path, ParityRecord)
    parity = record.backends.get(name)
    if parity is None:
        raise BackendError(f"backend {name!r} has no parity record in {path} ({fix})")
    if record.source_fingerprint != fingerprint or parity.model_sha256 != sha256:
        raise BackendError(f"backend {name!r}: the parity record in {path} was measured on another export ({fix})")
    if not parity.passed:
        raise BackendError(f"backend {name!r} failed its parity check ({path}): {parity.reason}")
    return parity
