"""Request and response bodies of the HTTP API (documented in the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOP_K = 100
MAX_QUERY_CHARS = 2048


class SearchRequest(BaseModel):
    """``POST /search`` body."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "0-dimensional biomaterials show inductive properties.", "top_k": 3}]},
    )

    query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS, description="natural-language query")
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description=f"number of hits, 1..{MAX_TOP_K}")
    return_text: bool = Field(True, description="include each hit's title and text")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain non-whitespace text")
        return value


class SearchHit(BaseModel):
    """One ranked passage."""

    docid: str = Field(..., description="external passage id")
    score: float = Field(..., description="inner product of query and passage vectors (cosine for normalised encoders)")
    rank: int = Field(..., ge=1, description="1-based rank")
    title: str | None = Field(None, description="passage title (when return_text)")
    text: str | None = Field(None, description="passage text (when return_text)")


class SearchResponse(BaseModel):
    """``POST /search`` result."""

    query: str
    hits: list[SearchHit]
    index_version: str = Field(..., description="name of the served index version")
    model: str = Field(..., description="encoder fingerprint (first 12 hex digits)")
    took_ms: float = Field(..., description="server-side time for encoding and search, milliseconds")


class HealthResponse(BaseModel):
    status: str = "ok"
