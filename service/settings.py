"""Service settings, read from the environment (prefix ``MD2PR_``) or a ``.env`` file.

Only deployment choices live here; what the index and encoder record about themselves
(dimension, pooling, lengths, metric) is read from their artifacts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from retrieval.paths import artifacts_dir


class Settings(BaseSettings):
    """One definition per option; environment variable = ``MD2PR_`` + upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="MD2PR_", env_file=".env", extra="ignore")

    index: Path = Field(
        default_factory=lambda: artifacts_dir() / "indexes" / "scifact",
        description="index root (with CURRENT) or one index directory",
    )
    encoder_path: str | None = Field(
        None,
        description="load the encoder from here instead of the path in the index manifest "
        "(relocation only: its fingerprint must still match)",
    )
    torch_threads: int | None = Field(None, ge=1, description="torch/FAISS threads; default: all cores")
