"""Versioned index roots and the atomic ``CURRENT`` pointer.

Layout of an index root::

    CURRENT                 one line: the name of the served version
    versions/<version>/     complete index directories (see :mod:`retrieval.index`)
    staging/<name>/         builds in progress; never read by a server

A version directory is complete before ``CURRENT`` can name it, and is never modified once
published: a new index is a new version. ``CURRENT`` is replaced atomically
(temp file + ``os.replace``), so a reader sees the old or the new name, never half of one.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

from .errors import ArtifactError
from .index import MANIFEST_FILE, read_manifest

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = "staging"


def resolve_index_dir(path: str | os.PathLike[str]) -> Path:
    """An index directory from either an index root (follows ``CURRENT``) or an index directory."""
    path = Path(path)
    pointer = path / CURRENT_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        target = path / VERSIONS_DIR / name
        if not name or not (target / MANIFEST_FILE).is_file():
            raise ArtifactError(f"{pointer} names version {name!r}, which is not a complete index")
        return target
    if (path / MANIFEST_FILE).is_file():
        return path
    if not path.exists():
        raise ArtifactError(f"{path}: no such index (build one with md2pr-build-index)")
    raise ArtifactError(f"{path}: neither an index root (no {CURRENT_FILE}) nor an index directory (no {MANIFEST_FILE})")


def current_version(index_root: Path) -> str | None:
    """Name of the published version, or ``None`` when nothing is published yet."""
    pointer = index_root / CURRENT_FILE
    return pointer.read_text().strip() if pointer.is_file() else None


def new_staging_dir(index_root: Path) -> Path:
    """A fresh, empty directory to build a version in."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    staging = index_root / STAGING_DIR / f"{stamp}-{secrets.token_hex(3)}"
    staging.mkdir(parents=True)
    return staging


def publish(index_root: Path, staged: Path) -> str:
    """Move a finished staged build into ``versions/`` and point ``CURRENT`` at it; returns the version."""
    read_manifest(staged)  # refuse to publish an incomplete build
    versions = index_root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    version = staged.name
    os.replace(staged, versions / version)
    tmp = index_root / f".{CURRENT_FILE}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, index_root / CURRENT_FILE)
    return version
