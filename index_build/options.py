"""What a build is asked to do (:class:`BuildOptions`), what it produced (:class:`BuildResult`),
its defaults, and the check of the family, backend and search parameters before any work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.bm25 import BM25Config
from retrieval.errors import ArtifactError
from retrieval.index import FamilyInfo, IndexManifest, describe_index, describe_milvus, new_faiss_index, validate_search_params
from retrieval.milvus_index import milvus_index_for

DEFAULT_SHARD_SIZE = 1024
DEFAULT_MIN_RECALL = 0.9
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_GATE_QUERIES = 1000
#: Queries the gate uses for exact families (exact by construction: a cheap sanity check only).
EXACT_GATE_QUERIES = 100


class QualityGateError(ArtifactError):
    """The built index's recall is below the configured threshold; it was not published."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything about a build but the corpus and the encoder.

    ``search_params``: explicit defaults (``nprobe``/``efSearch``); a family parameter not given
    is tuned by the quality gate to reach ``target_recall``. ``store_vectors``: keep
    ``vectors.f32`` (``None``: whenever the index cannot give the exact vectors back).
    ``query_vectors``: the gate's query vectors (``query_label`` says what they are); ``None``
    uses held-aside passage vectors. :func:`build_index` fills in encoded passage snippets.
    ``lexical``: the BM25 side index's configuration (``None``: dense search only).
    """

    factory: str = "Flat"
    batch_size: int = 32
    shard_size: int = DEFAULT_SHARD_SIZE
    search_params: dict[str, int] = field(default_factory=dict)
    ef_construction: int | None = None
    train_size: int | None = None
    min_recall: float = DEFAULT_MIN_RECALL
    target_recall: float = DEFAULT_TARGET_RECALL
    gate_queries: int = DEFAULT_GATE_QUERIES
    query_vectors: np.ndarray | None = None
    query_label: str = "encoded queries"
    store_vectors: bool | None = None
    mmap: bool = False
    keep: int | None = None
    publish: bool = True
    seed: int = 0
    #: BM25 side index for the bm25 and hybrid search modes; ``None`` builds none.
    lexical: BM25Config | None = field(default_factory=BM25Config)
    #: Where the vectors are searched: ``faiss`` (index.faiss) or ``milvus`` (a collection at ``milvus_uri``).
    index_backend: str = "faiss"
    milvus_uri: str | None = None
    #: Collection and alias names start with this (default: ``md2pr_<index root name>``).
    milvus_prefix: str | None = None


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: the version name, its directory and manifest (``published`` false with ``publish=False``)."""

    version: str
    directory: Path
    manifest: IndexManifest
    published: bool = True


def check_family(dimension: int, options: BuildOptions) -> FamilyInfo:
    """Validate the factory string, the backend and explicit search parameters before any work is done."""
    if options.index_backend == "milvus":
        if not options.milvus_uri:
            raise ArtifactError("the milvus backend needs a Milvus URI (--milvus-uri)")
        info = describe_milvus(*milvus_index_for(options.factory, options.ef_construction))
        if options.mmap:
            raise ArtifactError("--mmap applies to FAISS files; a Milvus collection lives in the Milvus server")
    elif options.index_backend == "faiss":
        info = describe_index(new_faiss_index(dimension, options.factory))
    else:
        raise ArtifactError(f"unknown index backend {options.index_backend!r} (faiss or milvus)")
    validate_search_params(info, options.factory, options.search_params)
    if options.ef_construction is not None and info.family != "hnsw":
        raise ArtifactError(f"--ef-construction applies to HNSW families, not {options.factory!r}")
    if not 0.0 <= options.min_recall <= 1.0 or not 0.0 < options.target_recall <= 1.0:
        raise ArtifactError("recall thresholds must be between 0 and 1")
    return info
