"""Export a dual encoder's transformer to ONNX, and check each exported backend against torch.

:func:`export_onnx` writes an export directory (layout in :mod:`retrieval.backends`):

1. ``torch.onnx.export`` (the TorchScript tracer) of the transformer alone, wrapped to return
   ``last_hidden_state``, with dynamic batch and sequence axes, traced with the model's
   ``eager`` attention on a padded example (two texts of different lengths, so the mask path is
   in the graph); pooling and normalisation are not in the graph. The tracer is used because
   ONNX Runtime's optimiser recognises the attention and embedding subgraphs it writes (the
   dynamo exporter's graph keeps them unfused; in a side-by-side probe the fused graph was
   faster on query batches and 256-token passages, mixed at batch 1: faster on one thread,
   slower on two in int8); the parity
   check below measures the result on real padded batches either way.
2. ONNX Runtime's transformer optimiser (``onnxruntime.transformers``, hardware-independent
   fusions: Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu) ->
   ``model.onnx`` (fp32).
3. ONNX Runtime's dynamic quantization (int8 weights, activations quantized per call) of that
   graph -> ``model-int8.onnx``.

An export is reused while its manifest's ``exporter`` is :data:`EXPORTER` and the weights are
the same; one made another way is redone (and re-checked).

:func:`check_parity` measures one backend against torch on real queries and passages
(largest absolute difference and smallest cosine of the embedding vectors) and by nDCG@10 on a
judged split, with the backend on both sides and on the query side only (over torch's corpus
vectors); :func:`write_parity` records the verdict in ``parity.json`` beside the export.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import torch

from .backends import (
    EXPORT_FILE,
    INPUT_NAMES,
    ONNX_FILES,
    PARITY_FILE,
    BackendParity,
    ExportedFile,
    ExportManifest,
    ParityRecord,
    export_dir,
    file_sha256,
    read_record,
    write_record,
)
from .encoder import DualEncoder
from .errors import EncoderError
from .metrics import evaluate_run
from .types import Qrels, Run

logger = logging.getLogger(__name__)

OPSET = 17
#: How the graph is made; an export recorded with another recipe is redone.
EXPORTER = (
    f"torch.onnx.export(TorchScript, eager attention, opset {OPSET}) + onnxruntime.transformers optimizer "
    "(bert, opt_level 1: Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu); "
    "int8: onnxruntime.quantization.quantize_dynamic(QInt8)"
)
#: fp32 must reproduce torch's vectors to this (largest absolute difference of any component).
FP32_MAX_ABS = 1e-4
#: A backend is offered only if nDCG@10 drops by at most this against torch (both sides and query side).
MAX_NDCG_DROP = 0.005


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _LastHiddenState(torch.nn.Module):
    """The transformer as a function of its three int64 inputs, returning only the token states."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # [batch, seq, hidden]


@contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """The model with transformers' ``eager`` attention for the length of the block (then as it was)."""
    previous = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or previous in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(previous)


def export_onnx(encoder: DualEncoder, out_dir: Path | None = None, force: bool = False) -> tuple[Path, ExportManifest]:
    """Export ``encoder`` (its torch model) to ``out_dir`` (default :func:`~retrieval.backends.export_dir`).

    An existing export of the same weights is kept (cached) unless ``force``; one of other
    weights is replaced, and with it its parity record. Returns the directory and its manifest.
    """
    directory = out_dir or export_dir(encoder.model_dir, encoder.fingerprint)
    manifest_path = directory / EXPORT_FILE
    if manifest_path.is_file() and not force:
        existing: ExportManifest = read_record(manifest_path, ExportManifest)
        if existing.source_fingerprint == encoder.fingerprint and existing.exporter == EXPORTER and all(
            (directory / f.file).is_file() for f in existing.files.values()
        ):
            logger.info("export of %s is up to date at %s", encoder.fingerprint[:12], directory)
            return directory, existing
    directory.mkdir(parents=True, exist_ok=True)
    for stale in (EXPORT_FILE, PARITY_FILE, *ONNX_FILES.values()):
        (directory / stale).unlink(missing_ok=True)  # the manifest goes first: a half export is no export
    model = encoder.model
    if model.device.type != "cpu":
        raise EncoderError("export from a CPU model (load it with device='cpu')")
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    # Two texts of different lengths: batch and sequence sizes other than 0/1, padding present.
    example = encoder.tokenize(["an example query for the export", "a second and rather longer example text here"], "passage")
    inputs = tuple(example[name] if name in example else torch.zeros_like(example["input_ids"]) for name in INPUT_NAMES)
    axes = {name: {0: "batch", 1: "seq"} for name in (*INPUT_NAMES, "last_hidden_state")}
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        raw = Path(scratch) / "raw.onnx"
        with warnings.catch_warnings(), _eager_attention(model), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHiddenState(model).eval(),
                inputs,
                str(raw),
                input_names=list(INPUT_NAMES),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                verbose=False,
            )
        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(model.config.num_attention_heads),
            hidden_size=int(model.config.hidden_size),
            opt_level=1,  # hardware-independent fusions only: the file is valid on any CPU
        )
        fp32 = directory / ONNX_FILES["onnx"]
        optimized.save_model_to_file(str(fp32), use_external_data_format=False)
        int8 = directory / ONNX_FILES["onnx-int8"]
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.WARNING))  # the quantizer logs a line per tensor on the root logger
        try:
            # DefaultTensorType: shape inference cannot type the fused nodes' outputs (com.microsoft domain)
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            root.setLevel(level)
    files = {
        name: ExportedFile(file=path.name, sha256=file_sha256(path), bytes=path.stat().st_size)
        for name, path in (("onnx", fp32), ("onnx-int8", int8))
    }
    manifest = ExportManifest(
        source=encoder.source,
        source_fingerprint=encoder.fingerprint,
        files=files,
        exporter=EXPORTER,
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        created_at=_utc_now(),
    )
    write_record(manifest_path, manifest)
    logger.info("exported %s to %s (%s)", encoder.fingerprint[:12], directory,
                ", ".join(f"{f.file} {f.bytes / 1e6:.1f} MB" for f in files.values()))
    return directory, manifest


# ------------------------------------------------------------------------------------- parity


def _vector_agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Largest absolute difference and smallest cosine between matching rows of ``[n, dim]`` arrays."""
    if len(reference) == 0:
        return 0.0, 1.0
    diff = float(np.abs(reference - other).max())
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)  # [n]
    cosine = (reference * other).sum(axis=1) / np.maximum(norms, 1e-12)  # [n]
    return diff, float(cosine.min())


def _ndcg_at_10(query_vectors: np.ndarray, corpus_vectors: np.ndarray, qids: Sequence[str],
                docids: Sequence[str], qrels: Qrels) -> float:
    """nDCG@10 of exact inner-product search of ``[q, dim]`` queries over ``[n, dim]`` passages."""
    index = faiss.IndexFlatIP(corpus_vectors.shape[1])
    index.add(np.ascontiguousarray(corpus_vectors, dtype=np.float32))
    scores, rows = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), min(10, len(docids)))  # [q, 10]
    run: Run = {
        qid: {docids[r]: float(s) for s, r in zip(srow, irow) if r >= 0}
        for qid, srow, irow in zip(qids, scores.tolist(), rows.tolist())
    }
    return float(evaluate_run(qrels, run, {"nDCG@10": "nDCG@10"})["nDCG@10"])


def check_parity(
    reference: DualEncoder,
    candidate: DualEncoder,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Qrels,
    dataset: str,
    split: str,
    model_sha256: str,
    reference_vectors: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 32,
) -> tuple[BackendParity, tuple[np.ndarray, np.ndarray]]:
    """Measure ``candidate`` (an ONNX backend) against ``reference`` (torch) and give the verdict.

    ``queries``: qid -> text; ``corpus``: docid -> passage text (``Passage.full_text``);
    ``qrels`` judge them. ``reference_vectors`` (torch's ``(query [q, dim], corpus [n, dim])``
    vectors of the same texts, in mapping order) saves encoding them again; they are returned
    for the next backend. The fp32 limit on vectors applies to backend ``onnx``; every backend
    must keep nDCG@10 within :data:`MAX_NDCG_DROP` of torch's on both sides and the query side.
    """
    qids, query_texts = list(queries), list(queries.values())
    docids, passage_texts = list(corpus), list(corpus.values())
    if reference_vectors is None:
        reference_vectors = (
            reference.encode_queries(query_texts, batch_size),
            reference.encode_passages(passage_texts, batch_size),
        )
    ref_q, ref_p = reference_vectors
    cand_q = candidate.encode_queries(query_texts, batch_size)
    cand_p = candidate.encode_passages(passage_texts, batch_size)
    q_diff, q_cos = _vector_agreement(ref_q, cand_q)
    p_diff, p_cos = _vector_agreement(ref_p, cand_p)
    ndcg = {
        "torch": _ndcg_at_10(ref_q, ref_p, qids, docids, qrels),
        "both_sides": _ndcg_at_10(cand_q, cand_p, qids, docids, qrels),
        "query_only": _ndcg_at_10(cand_q, ref_p, qids, docids, qrels),
    }
    name = candidate.backend.name
    max_abs = FP32_MAX_ABS if name == "onnx" else None
    failures = []
    if max_abs is not None and max(q_diff, p_diff) > max_abs:
        failures.append(f"max abs difference {max(q_diff, p_diff):.2e} > {max_abs:.0e}")
    for side in ("both_sides", "query_only"):
        drop = ndcg["torch"] - ndcg[side]
        if drop > MAX_NDCG_DROP:
            failures.append(f"nDCG@10 {side} {ndcg[side]:.4f} is {drop:.4f} below torch's {ndcg['torch']:.4f} (limit {MAX_NDCG_DROP})")
    summary = (f"max abs {max(q_diff, p_diff):.2e}, min cosine {min(q_cos, p_cos):.6f}, nDCG@10 torch "
               f"{ndcg['torch']:.4f} / both sides {ndcg['both_sides']:.4f} / query side {ndcg['query_only']:.4f}")
    parity = BackendParity(
        backend=name,
        model_sha256=model_sha256,
        dataset=dataset,
        split=split,
        queries=len(qids),
        passages=len(docids),
        max_abs_diff={"query": q_diff, "passage": p_diff},
        min_cosine={"query": q_cos, "passage": p_cos},
        ndcg_at_10={k: round(v, 6) for k, v in ndcg.items()},
        limits={"max_abs": max_abs, "max_ndcg_drop": MAX_NDCG_DROP},
        passed=not failures,
        reason=("failed: " + "; ".join(failures)) if failures else f"passed: {summary}",
        checked_at=_utc_now(),
    )
    return parity, reference_vectors


def write_parity(directory: Path, source_fingerprint: str, results: Sequence[BackendParity]) -> ParityRecord:
    """Record ``results`` in ``directory/parity.json``, keeping other backends' entries of the same export."""
    path = directory / PARITY_FILE
    record = ParityRecord(source_fingerprint=source_fingerprint)
    if path.is_file():
        old: ParityRecord = read_record(path, ParityRecord)
        if old.source_fingerprint == source_fingerprint:
            record = old
    for parity in results:
        record.backends[parity.backend] = parity
    write_record(path, record)
    return record
