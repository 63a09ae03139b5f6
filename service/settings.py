"""Service settings, read from the environment (prefix ``MD2PR_``) or a ``.env`` file.

Only deployment choices live here; what the index and encoder record about themselves
(dimension, pooling, lengths, metric) is read from their artifacts. Every option is listed,
with its default, in the README's settings table (a test keeps the two in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retrieval.backends import BackendChoice
from retrieval.paths import artifacts_dir


class Settings(BaseSettings):
    """One definition per option; environment variable = ``MD2PR_`` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="MD2PR_", env_file=".env", extra="ignore")

    # --------------------------------------------------------------------------- what to serve
    index: Path = Field(
        default_factory=lambda: artifacts_dir() / "indexes" / "scifact",
        description="index root (with CURRENT) or one index directory",
    )
    encoder_path: str | None = Field(
        None,
        description="load the encoder from here instead of the path in the index manifest "
        "(relocation only: its fingerprint must still match)",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch/FAISS threads (and ONNX Runtime's, on an ONNX backend); default: all cores"
    )
    backend: BackendChoice = Field(
        "auto",
        description="what runs the query encoder: auto (the fastest backend whose export passed its parity check, "
        "else torch), torch, onnx (ONNX Runtime fp32) or onnx-int8 (int8 weights); an explicit ONNX backend needs "
        "the encoder's export with a passing parity record (md2pr-export), else the index is refused",
    )

    # ------------------------------------------------------------------------- micro-batching
    batch_max_queries: int = Field(
        32,
        ge=1,
        le=1024,
        description="most queries merged into one encoder forward and FAISS search; 1 turns batching off",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="longest a batch waits for company (from its oldest request's arrival), and only right after a "
        "batch of several requests: a request at an idle model runs at once",
    )

    # ------------------------------------------------------------------------ overload, limits
    queue_max_queries: int = Field(
        256, ge=1, description="queries that may wait for the model; beyond that requests get 429 with Retry-After"
    )
    max_queue_wait_ms: float = Field(
        250.0,
        ge=0,
        description="refuse a search at once (429 with Retry-After) when its predicted wait for the model, from the "
        "measured cost per query, the rest of the running batch and the whole batches queued ahead of it, exceeds "
        "this; 0: no limit",
    )
    max_queries_per_request: int = Field(
        32, ge=1, le=1024, description="largest `queries` batch in one request (more: 413)"
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body in bytes (more: 413)")
    request_timeout_s: float = Field(10.0, gt=0, description="a search not answered in this time gets 504")

    # ---------------------------------------------------------------------- index hot swapping
    watch_interval_s: float = Field(
        0.0, ge=0, description="poll the index root's CURRENT every this many seconds and reload on change; 0: off"
    )
    probe_query: str = Field(
        "effect of vitamin D on bone density",
        min_length=1,
        description="query a new index version must answer before it is swapped in",
    )

    # ------------------------------------------------------------------------------- security
    admin_api_key: SecretStr | None = Field(
        None, description="key for /admin routes (header X-API-Key); unset: admin routes answer 403"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS; empty: CORS off"
    )

    # -------------------------------------------------------------------------------- logging
    access_log: bool = Field(True, description="one JSON log line per request (id, route, status, latency)")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value
