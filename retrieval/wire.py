"""The service's wire schema: request and response bodies of the HTTP API, and their limits.

Defined once, here in ``retrieval`` because both sides of the wire use it: the service
(:mod:`service.schemas` re-exports these models for its routes, which publish them with their
limits and examples in OpenAPI) and its clients (:mod:`evaluation.service_client` reads
:data:`MAX_TOP_K` and the answer models from here, so a limit is never copied by hand).

Conventions follow the search services application teams already run: one query or a batch
of queries per request (Qdrant's ``search`` / ``search/batch``), ``top_k`` hits with score and
rank, per-request search-time parameters of the index family (``nprobe`` for IVF, ``efSearch``
for HNSW), and every response says which index version and model answered it.

Types in a JSON body are strict: an integer field takes a JSON integer only (``5``, or ``5.0``,
which JSON Schema counts as the same integer; never ``"5"`` or ``true``), a boolean field
``true``/``false`` only (not ``"yes"``, ``1``), a number field a JSON number (not a string or a
boolean). A client that sends the wrong type has a bug that coercion would hide, so it gets a 422
naming the field. Query-string parameters (``GET /search``) are text by nature and are parsed,
but as strictly as text allows: an integer is plain decimal digits (``top_k=%0A2`` is refused).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .fusion import MAX_DEPTH, MAX_WEIGHT

MAX_TOP_K = 100
MAX_QUERY_CHARS = 2048
MAX_NPROBE = 4096
MAX_EF_SEARCH = 4096

SCIFACT_CLAIM = "A deficiency of vitamin B12 increases blood levels of homocysteine."


# Characters that count as blank: Python's whitespace (str.isspace, which also counts the
# separators U+001C-U+001F), control characters (category Cc: NUL, DEL, C1 controls) and format
# characters (category Cf: zero-width space and joiners, soft hyphen, U+FEFF, ...), none of
# which carries text an encoder or BM25 could match. Basic Multilingual Plane only, so that the
# schema's pattern below reads the same in every regex dialect (JavaScript without the `u` flag
# splits astral characters into surrogates). One set serves the server's check and the schema's
# pattern, so a schema-valid query is never refused as blank, and a blank one is refused by both.
BLANK_CHARS = "".join(
    c for c in map(chr, range(0x10000)) if c.isspace() or unicodedata.category(c) in ("Cc", "Cf")
)


def _char_class(chars: str) -> str:
    """``chars`` as the body of a regex character class: ``\\uXXXX`` escapes and ranges (valid in
    ECMA-262, Python and Rust regexes alike, and readable in the published schema)."""
    codes = sorted(map(ord, chars))
    ranges: list[list[int]] = []
    for code in codes:
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(f"\\u{a:04X}" if a == b else f"\\u{a:04X}-\\u{b:04X}" for a, b in ranges)


#: JSON Schema pattern (unanchored search) of a query that is not blank: one character outside
#: :data:`BLANK_CHARS`.
NOT_BLANK_PATTERN = f"[^{_char_class(BLANK_CHARS)}]"


def _check_query_text(value: str) -> str:
    if not value.strip(BLANK_CHARS):
        raise ValueError("query must contain non-whitespace text (control and format characters count as whitespace)")
    # (Lone surrogates that JSON can smuggle in, "\ud800", are already refused by pydantic's
    # str validation: "unable to parse raw data as a unicode string".)
    return value


#: A query: 1..MAX_QUERY_CHARS characters with at least one that is not whitespace.
QueryText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description=f"natural-language query, 1-{MAX_QUERY_CHARS} characters, not blank",
        examples=[SCIFACT_CLAIM],
        json_schema_extra={"pattern": NOT_BLANK_PATTERN},
    ),
    AfterValidator(_check_query_text),
]


def _json_integer(value: Any) -> Any:
    """A ``mode="before"`` validator of integer body fields: a JSON integer (``5``, or ``5.0``,
    the same integer in JSON Schema), never a boolean or a string (``true``, ``"5"``)."""
    # Before pydantic's int parsing, which would read true as 1 and "5" as 5. An integral float
    # (5.0) passes: JSON Schema's "integer" is any number without a fractional part.
    if isinstance(value, (bool, str)):
        kind = "boolean" if isinstance(value, bool) else "string"
        raise PydanticCustomError("int_type", "Input should be a JSON integer, not a {kind}", {"kind": kind})
    return value


_DECIMAL_INTEGER = re.compile(r"-?[0-9]+")


def _decimal_integer(value: Any) -> Any:
    # Query-string text only: pydantic's lax int parsing would also take " 2", "\n2", "2.0" and "1_0".
    if isinstance(value, str) and not _DECIMAL_INTEGER.fullmatch(value):
        raise ValueError("must be an integer written in decimal digits, without spaces or other characters")
    return value


#: The metadata that makes an ``int`` query-string parameter take plain decimal digits only
#: (``top_k=3``; not ``top_k=%0A3`` or ``top_k=3.0``). Put it after FastAPI's ``Query(...)`` in the
#: ``Annotated`` (before it, the limits would be published as ``ge``/``le`` instead of
#: ``minimum``/``maximum``).
DECIMAL_DIGITS_ONLY = BeforeValidator(_decimal_integer)


def _not_null(value: Any) -> Any:
    """A ``mode="before"`` validator of optional fields: omit them, never send null."""
    if value is None:
        raise ValueError("may be omitted but not null")
    return value


def _optional_means_omitted(schema: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Advertise optional fields as "may be omitted" rather than "may be null".

    A null is refused too (:func:`_not_null`), so the schema describes exactly the bodies that
    succeed, which is what generated clients and schema fuzzers go by.
    """
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches:
            (kept,) = [b for b in branches if b != {"type": "null"}]
            del prop["anyOf"]
            prop.update(kept)
            if prop.get("default", "") is None:
                del prop["default"]
    schema.update(extra or {})


class SearchParams(BaseModel):
    """Search-time parameters of approximate index families; omit for the index's defaults."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _optional_means_omitted(
            schema, {"examples": [{"nprobe": 16}, {"efSearch": 128}]}
        ),
    )

    nprobe: int | None = Field(
        None, ge=1, le=MAX_NPROBE, description=f"IVF indexes: inverted lists probed per query, 1-{MAX_NPROBE}"
    )
    efSearch: int | None = Field(
        None, ge=1, le=MAX_EF_SEARCH, description=f"HNSW indexes: candidate list size during search, 1-{MAX_EF_SEARCH}"
    )

    _json_integers = field_validator("nprobe", "efSearch", mode="before")(_json_integer)
    _omitted_not_null = field_validator("nprobe", "efSearch", mode="before")(_not_null)

    def as_mapping(self) -> dict[str, int] | None:
        """The parameters that were given, or ``None`` for the index's defaults."""
        given = self.model_dump(exclude_none=True)
        return given or None


SearchMode = Literal["dense", "bm25", "hybrid"]


class FusionParams(BaseModel):
    """Per-request overrides of the index version's hybrid fusion defaults (``GET /info`` shows them).

    Only for ``mode: hybrid``. ``zscore`` adds the weighted z-normalised scores of both sides
    (a side that did not return a passage counts its lowest returned score); ``rrf`` adds
    ``weight / (60 + rank)``. Weights may not both be 0.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _optional_means_omitted(
            schema, {"examples": [{"dense_weight": 0.45, "bm25_weight": 0.55}, {"method": "rrf"}]}
        ),
    )

    method: Literal["zscore", "rrf"] | None = Field(None, description="fusion method")
    dense_weight: float | None = Field(None, strict=True, ge=0, le=MAX_WEIGHT, description=f"weight of the dense side, 0-{MAX_WEIGHT:g}")
    bm25_weight: float | None = Field(None, strict=True, ge=0, le=MAX_WEIGHT, description=f"weight of the BM25 side, 0-{MAX_WEIGHT:g}")
    dense_depth: int | None = Field(None, ge=1, le=MAX_DEPTH, description=f"dense candidates, 1-{MAX_DEPTH}")
    bm25_depth: int | None = Field(None, ge=1, le=MAX_DEPTH, description=f"BM25 candidates, 1-{MAX_DEPTH}")

    _json_integers = field_validator("dense_depth", "bm25_depth", mode="before")(_json_integer)

    @model_validator(mode="before")
    @classmethod
    def _omitted_not_null(cls, data: Any) -> Any:
        # The schema says "may be omitted"; a null is refused rather than read as "not given".
        if isinstance(data, dict) and any(value is None for value in data.values()):
            raise ValueError("fusion fields may be omitted but not null")
        return data

    def as_overrides(self) -> dict[str, Any]:
        """The fields that were given."""
        return self.model_dump(exclude_none=True)


class SearchRequest(BaseModel):
    """``POST /search`` body: exactly one of ``query`` or ``queries``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=lambda schema: _optional_means_omitted(
            schema,
            {
                "examples": [
                    {"query": SCIFACT_CLAIM, "top_k": 3},
                    {
                        "queries": [SCIFACT_CLAIM, "0-dimensional biomaterials show inductive properties."],
                        "top_k": 5,
                        "return_text": False,
                    },
                ],
                # Exactly one of the two, stated in the schema so that generated clients and
                # fuzzers know it (pydantic cannot derive this from the model below).
                "oneOf": [{"required": ["query"]}, {"required": ["queries"]}],
            },
        ),
    )

    query: QueryText | None = Field(None, description="one query (answered as `hits`)")
    queries: list[QueryText] | None = Field(
        None,
        min_length=1,
        description="a batch of queries (answered as `results`, in order); at most MD2PR_MAX_QUERIES_PER_REQUEST "
        "(default 32), more get 413",
        examples=[[SCIFACT_CLAIM, "0-dimensional biomaterials show inductive properties."]],
    )
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description=f"hits per query, 1-{MAX_TOP_K}", examples=[10])
    return_text: bool = Field(True, strict=True, description="include each hit's title and text", examples=[True])
    search_params: SearchParams | None = Field(
        None, description="search-time parameters of the index family (422 if the served family has no such parameter)"
    )
    mode: SearchMode = Field(
        "dense",
        description="dense (the encoder and FAISS), bm25 (the lexical side index) or hybrid (both, fused); "
        "422 if the served version lacks the mode (GET /info lists its modes)",
        examples=["hybrid"],
    )
    fusion: FusionParams | None = Field(
        None, description="overrides of the version's fusion defaults (used by mode hybrid, ignored by the others)"
    )
    include_scores: bool = Field(
        False, strict=True, description="report each hit's dense_score and bm25_score (the components of hybrid scores)"
    )

    _json_integers = field_validator("top_k", mode="before")(_json_integer)

    _omitted_not_null = field_validator("query", "queries", "search_params", "fusion", mode="before")(_not_null)

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> "SearchRequest":
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of `query` (one query) or `queries` (a batch)")
        return self

    @property
    def texts(self) -> list[str]:
        """The query texts in request order."""
        return [self.query] if self.query is not None else list(self.queries or [])


class SearchQueryParams(BaseModel):
    """``GET /search`` query string: one query with the body's limits (``?q=...&top_k=3&mode=hybrid``).

    Unknown parameters are refused, as unknown body fields are; ``top_k`` takes plain decimal
    digits only (query-string text: no ``2.0``, no ``%0A2``). The route refuses a parameter given twice.
    """

    model_config = ConfigDict(extra="forbid")

    q: QueryText
    top_k: Annotated[
        int, Field(ge=1, le=MAX_TOP_K, description=f"hits, 1-{MAX_TOP_K}", examples=[10]), DECIMAL_DIGITS_ONLY
    ] = 10
    return_text: bool = Field(True, description="include each hit's title and text", examples=[True])
    mode: SearchMode = Field("dense", description="dense, bm25 or hybrid (GET /info lists the served modes)")


class SearchHit(BaseModel):
    """One ranked passage."""

    docid: str = Field(..., description="external passage id", examples=["11705328"])
    score: float = Field(
        ...,
        description="inner product of query and passage vectors (cosine similarity for normalised encoders)",
        examples=[0.6483],
    )
    rank: int = Field(..., ge=1, description="1-based rank", examples=[1])
    title: str | None = Field(None, description="passage title (when return_text)")
    text: str | None = Field(None, description="passage text (when return_text)")
    dense_score: float | None = Field(
        None, description="inner product with the query (when include_scores and the dense side returned it)"
    )
    bm25_score: float | None = Field(
        None, description="BM25 score (when include_scores and the BM25 side returned it)"
    )


class QueryResult(BaseModel):
    """The hits of one query of a batch."""

    query: str = Field(..., description="the query, as sent")
    hits: list[SearchHit] = Field(..., description="at most top_k hits, best first")


# Fields every search answer ends with (declared per class to keep the hits first in the JSON).
IndexVersion = Annotated[
    str, Field(description="name of the index version that answered", examples=["20261128T044506-b098a7"])
]
ModelId = Annotated[str, Field(description="encoder fingerprint (first 12 hex digits)", examples=["be5b7392f359"])]
TookMs = Annotated[float, Field(ge=0, description="server-side time: queueing, encoding and search, milliseconds")]


class SearchResponse(BaseModel):
    """Answer to a request with ``query``."""

    query: str = Field(..., description="the query, as sent")
    hits: list[SearchHit] = Field(..., description="at most top_k hits, best first")
    index_version: IndexVersion
    model: ModelId
    took_ms: TookMs


class BatchSearchResponse(BaseModel):
    """Answer to a request with ``queries``."""

    results: list[QueryResult] = Field(..., description="one entry per query, in request order")
    index_version: IndexVersion
    model: ModelId
    took_ms: TookMs


class HealthResponse(BaseModel):
    status: str = Field("ok", description="always 'ok' while the process serves HTTP")


class ReadyResponse(BaseModel):
    status: str = Field("ready", description="'ready' once an index and its encoder are loaded")
    index_version: str = Field(..., description="the served index version")


class ModelInfo(BaseModel):
    fingerprint: str = Field(..., description="encoder fingerprint (SHA-256 hex)")
    source: str = Field(..., description="where the encoder was loaded from")
    dimension: int = Field(..., description="embedding dimension")
    pooling: str = Field(..., description="pooling of token states: mean or cls")
    normalize: bool = Field(..., description="whether embeddings are unit length")
    max_query_length: int = Field(..., description="query tokens kept (special tokens included)")
    backend: str = Field(
        ..., description="what runs the query encoder: torch, onnx or onnx-int8 (what MD2PR_BACKEND=auto chose)"
    )


class IndexInfo(BaseModel):
    version: str = Field(..., description="served index version")
    family: str = Field(..., description="FAISS factory string, e.g. Flat, HNSW32, IVF1024,PQ32")
    backend: str = Field(..., description="where the vectors are searched: faiss (a file) or milvus (a collection)")
    metric: str = Field(..., description="similarity of the index")
    dimension: int = Field(..., description="vector dimension")
    count: int = Field(..., description="passages in the index")
    created_at: str = Field(..., description="UTC time the build finished")
    build_quality: dict[str, object] = Field(
        default_factory=dict, description="quality figures the build recorded (e.g. recall@10 against exact search)"
    )
    search_params: dict[str, object] = Field(
        default_factory=dict, description="default search-time parameters of the family"
    )
    loaded_at: str = Field(..., description="UTC time this version was loaded")
    modes: list[str] = Field(..., description="search modes this version supports (bm25/hybrid need its lexical index)")
    lexical: dict[str, object] | None = Field(None, description="the BM25 side index: parameters and tokenisation")
    fusion: dict[str, object] = Field(..., description="hybrid fusion defaults of this version")


class ServingInfo(BaseModel):
    batch_max_queries: int = Field(..., description="most queries in one encoder forward (MD2PR_BATCH_MAX_QUERIES)")
    batch_wait_ms: float = Field(..., description="longest wait for a batch to fill (MD2PR_BATCH_WAIT_MS)")
    queue_max_queries: int = Field(..., description="queries that may wait before 429 (MD2PR_QUEUE_MAX_QUERIES)")
    max_queue_wait_ms: float = Field(
        ..., description="longest predicted wait for the model that is still accepted, else 429; 0: no limit (MD2PR_MAX_QUEUE_WAIT_MS)"
    )
    max_queries_per_request: int = Field(..., description="largest `queries` batch (MD2PR_MAX_QUERIES_PER_REQUEST)")
    request_timeout_s: float = Field(..., description="search deadline before 504 (MD2PR_REQUEST_TIMEOUT_S)")
    torch_threads: int = Field(..., description="torch and FAISS threads in use")
    reloads: int = Field(..., description="index versions loaded since start (the first load included)")


class InfoResponse(BaseModel):
    """``GET /info``: what is being served."""

    model: ModelInfo = Field(..., description="the query encoder")
    index: IndexInfo = Field(..., description="the served index version")
    serving: ServingInfo = Field(..., description="serving settings")


class ReloadResponse(BaseModel):
    """``POST /admin/reload`` result."""

    status: str = Field(
        ..., description="'swapped' (a new version serves now) or 'unchanged' (CURRENT names the served one)"
    )
    index_version: str = Field(..., description="the version serving after the call")
    previous_version: str | None = Field(None, description="the version served before the call")
    encoder_reused: bool = Field(..., description="the encoder was kept (same fingerprint) rather than loaded again")
    took_ms: float = Field(..., ge=0, description="time to load and check the new version, milliseconds")
