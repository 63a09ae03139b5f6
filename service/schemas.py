"""Request and response bodies of the HTTP API, as the routes use them.

The wire schema is defined once, in :mod:`retrieval.wire` (the service's clients read the
same models and limits, such as :data:`MAX_TOP_K`); this module only names what the service
imports from it, so routes keep importing ``service.schemas``.
"""

from __future__ import annotations

from retrieval.wire import (
    BLANK_CHARS,
    DECIMAL_DIGITS_ONLY,
    MAX_EF_SEARCH,
    MAX_NPROBE,
    MAX_QUERY_CHARS,
    MAX_TOP_K,
    NOT_BLANK_PATTERN,
    SCIFACT_CLAIM,
    BatchSearchResponse,
    FusionParams,
    HealthResponse,
    IndexInfo,
    InfoResponse,
    ModelInfo,
    QueryResult,
    QueryText,
    ReadyResponse,
    ReloadResponse,
    SearchHit,
    SearchMode,
    SearchParams,
    SearchQueryParams,
    SearchRequest,
    SearchResponse,
    ServingInfo,
)

__all__ = [
    "BLANK_CHARS",
    "DECIMAL_DIGITS_ONLY",
    "MAX_EF_SEARCH",
    "MAX_NPROBE",
    "MAX_QUERY_CHARS",
    "MAX_TOP_K",
    "NOT_BLANK_PATTERN",
    "SCIFACT_CLAIM",
    "BatchSearchResponse",
    "FusionParams",
    "HealthResponse",
    "IndexInfo",
    "InfoResponse",
    "ModelInfo",
    "QueryResult",
    "QueryText",
    "ReadyResponse",
    "ReloadResponse",
    "SearchHit",
    "SearchMode",
    "SearchParams",
    "SearchQueryParams",
    "SearchRequest",
    "SearchResponse",
    "ServingInfo",
]
