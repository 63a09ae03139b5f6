"""Index families: what a FAISS index of one ``index_factory`` string (or a Milvus index type) can
do, and its search-time parameters (``nprobe`` for IVF, ``efSearch`` for HNSW): their defaults,
their validation, and the per-call ``SearchParameters`` objects that
:meth:`retrieval.index.IndexArtifact.search` passes to FAISS. Re-exported by :mod:`retrieval.index`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import faiss
import numpy as np

from .errors import ArtifactError

#: Upper bound of ``efSearch`` accepted per query (the cost of a query grows with it).
MAX_EF_SEARCH = 4096
DEFAULT_EF_SEARCH = 64
DEFAULT_EF_CONSTRUCTION = 80
#: ``nprobe`` for IVF indexes built without tuning (FAISS's own default of 1 is rarely useful).
DEFAULT_NPROBE = 16

Family = Literal["flat", "ivf", "hnsw", "codes", "other"]


class SearchParamsError(ArtifactError):
    """Search-time parameters the index cannot take: an unknown name, one its family lacks, or a bad value."""


@dataclass(frozen=True)
class FamilyInfo:
    """What a FAISS index of one factory string can do.

    ``exact``: search is exhaustive and exact (recall 1 by construction). ``removable``:
    ``remove_ids`` works (Flat/PQ/SQ compact ids themselves; IVF needs ids remapped).
    ``reconstructable``: the index gives the exact vectors back. ``params``: names of
    search-time parameters. ``nlist``: IVF cells (``None`` for other families).
    """

    family: Family
    exact: bool
    needs_training: bool
    removable: bool
    reconstructable: bool
    params: tuple[str, ...]
    nlist: int | None = None


def _inner(index: faiss.Index) -> tuple[faiss.Index, bool]:
    """The index under a pre-transform (OPQ, PCA, ...), and whether there was one."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.downcast_index(index.index), True
    return index, False


def describe_index(index: faiss.Index) -> FamilyInfo:
    """Classify an index object (see :class:`FamilyInfo`)."""
    inner, transformed = _inner(index)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        exact_vectors = isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat) and not transformed
        return FamilyInfo("ivf", False, True, True, exact_vectors, ("nprobe",), int(ivf.nlist))
    if isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        exact_vectors = isinstance(storage, faiss.IndexFlat) and not transformed
        return FamilyInfo("hnsw", False, not inner.is_trained, False, exact_vectors, ("efSearch",))
    if isinstance(inner, faiss.IndexFlat) and not transformed:
        return FamilyInfo("flat", True, False, True, True, ())
    if isinstance(inner, faiss.IndexFlatCodes) and not transformed:
        return FamilyInfo("codes", False, not inner.is_trained, True, False, ())
    return FamilyInfo("other", False, not index.is_trained, False, False, ())


# FAISS prefixes its C++ exceptions with where they were thrown, "Error in <signature> at
# /project/faiss/impl/index_read.cpp:3251: ", and a failed assertion with its condition,
# "Error: 'ret == (1)' failed: ". Only the reason after them means anything to a user.
_FAISS_THROW_SITE = re.compile(r"Error in .*? at \S+?:\d+: |Error: '.*?' failed: ")


def describe_milvus(index_type: str, index_params: Mapping[str, int]) -> FamilyInfo:
    """What a Milvus index of ``index_type`` can do (exact vectors come from ``vectors.f32``, never from Milvus)."""
    if index_type == "FLAT":
        return FamilyInfo("flat", True, False, False, False, ())
    if index_type == "HNSW":
        return FamilyInfo("hnsw", False, False, False, False, ("efSearch",))
    return FamilyInfo("ivf", False, True, False, False, ("nprobe",), int(index_params.get("nlist", 1)))


def default_family_params(info: FamilyInfo) -> dict[str, int]:
    """Untuned search defaults of a family, whatever the backend: ``nprobe`` = min(nlist, 16), ``efSearch`` = 64."""
    if info.family == "ivf":
        return {"nprobe": max(1, min(info.nlist or 1, DEFAULT_NPROBE))}
    if info.family == "hnsw":
        return {"efSearch": DEFAULT_EF_SEARCH}
    return {}


def faiss_reason(exc: BaseException, fallback: str) -> str:
    """The cause in a FAISS exception's message, without FAISS's C++ function and source location."""
    lines = str(exc).strip().splitlines()
    reason = _FAISS_THROW_SITE.sub("", lines[-1]).strip() if lines else ""
    return reason or fallback


def new_faiss_index(dimension: int, factory: str) -> faiss.Index:
    """An empty inner-product index for ``factory``; a bad string raises :class:`ArtifactError` (one line)."""
    if not factory or factory != factory.strip() or "\n" in factory:
        raise ArtifactError(f"invalid FAISS factory string {factory!r}")
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ArtifactError(f"invalid FAISS factory string {factory!r}: {faiss_reason(exc, 'rejected by FAISS')}") from exc
    if describe_index(index).family == "hnsw":
        set_ef_construction(index, DEFAULT_EF_CONSTRUCTION)
    inner, _ = _inner(index)
    ivf = faiss.try_extract_index_ivf(index)
    for candidate in (inner, faiss.downcast_index(ivf) if ivf is not None else None):
        if hasattr(candidate, "do_polysemous_training"):
            candidate.do_polysemous_training = False  # only polysemous search needs it, and it is slow (minutes)
    return index


def describe_factory(dimension: int, factory: str) -> FamilyInfo:
    """Classify a factory string without building anything big."""
    return describe_index(new_faiss_index(dimension, factory))


def set_ef_construction(index: faiss.Index, value: int) -> None:
    """Set HNSW's ``efConstruction`` (graph quality at build time); an error for other families."""
    inner, _ = _inner(index)
    if not isinstance(inner, faiss.IndexHNSW):
        raise ArtifactError("efConstruction applies to HNSW indexes only")
    if value < 1:
        raise ArtifactError(f"efConstruction must be positive, got {value}")
    inner.hnsw.efConstruction = int(value)


def default_search_params(index: faiss.Index) -> dict[str, int]:
    """Untuned defaults: ``nprobe`` = min(nlist, 16) for IVF, ``efSearch`` = 64 for HNSW."""
    return default_family_params(describe_index(index))


def validate_search_params(info: FamilyInfo, factory: str, params: Mapping[str, int]) -> dict[str, int]:
    """Check names and values; returns a plain dict. Raises :class:`SearchParamsError` (one line)."""
    out: dict[str, int] = {}
    for name, value in params.items():
        if name not in ("nprobe", "efSearch"):
            raise SearchParamsError(f"unknown search parameter {name!r} (known: nprobe for IVF indexes, efSearch for HNSW)")
        if name not in info.params:
            supported = ", ".join(info.params) or "none"
            raise SearchParamsError(f"search parameter {name!r} does not apply to index family {factory!r} (supported: {supported})")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise SearchParamsError(f"search parameter {name!r} must be an integer, got {value!r}")
        value = int(value)
        upper = info.nlist if name == "nprobe" else MAX_EF_SEARCH
        if not 1 <= value <= (upper or 1):
            raise SearchParamsError(f"search parameter {name!r} must be between 1 and {upper} for {factory!r}, got {value}")
        out[name] = value
    return out


def make_search_parameters(index: faiss.Index, params: Mapping[str, int]) -> faiss.SearchParameters | None:
    """A FAISS ``SearchParameters`` object for ``params`` (validated names), or ``None`` for none.

    Parameters travel with each call, so concurrent searches with different values are safe
    (the index object is never modified).
    """
    if not params:
        return None
    _, transformed = _inner(index)
    if "nprobe" in params:
        inner_params = faiss.SearchParametersIVF()
        inner_params.nprobe = int(params["nprobe"])
    elif "efSearch" in params:
        inner_params = faiss.SearchParametersHNSW()
        inner_params.efSearch = int(params["efSearch"])
    else:
        return None
    if not transformed:
        return inner_params
    outer = faiss.SearchParametersPreTransform()
    outer.index_params = inner_params
    outer._keep = inner_params  # the SWIG object does not own index_params: keep it alive
    return outer


def set_index_params(index: faiss.Index, params: Mapping[str, int]) -> None:
    """Store ``params`` in the index object itself (so a plain ``faiss.read_index`` gets the defaults)."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, int(value))
