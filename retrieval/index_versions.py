"""Versioned index roots and the atomic ``CURRENT`` pointer.

Layout of an index root::

    CURRENT                 one line: the name of the served version
    versions/<version>/     complete index directories (see :mod:`retrieval.index`)
    staging/<name>/         builds in progress (and finished builds not yet published); never served
    .lock                   serialises writers (publish, rollback, prune) across processes

A version on the Milvus backend (:mod:`retrieval.milvus_index`) also has a collection of its own;
the alias its manifest names is switched to that collection right before ``CURRENT`` (publish,
set-current, rollback), and pruning a version drops its collection unless a kept version shares it.

A version directory is complete before ``CURRENT`` can name it, and is never modified once
published: a new index is a new version. ``CURRENT`` is replaced atomically
(temp file + ``os.replace``), so a reader sees the old or the new name, never half of one.
Pruning moves a version out of ``versions/`` with one rename before deleting it, so a reader
never sees a half-deleted version either; the version ``CURRENT`` names is never pruned.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from .errors import ArtifactError
from .index import BUILD_DIR, MANIFEST_FILE, IndexManifest, check_files, read_manifest, utc_now, write_manifest
from .jsonio import atomic_path
from .milvus_index import MilvusError, drop_collection, switch_alias

logger = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = "staging"
TRASH_DIR = ".trash"
LOCK_FILE = ".lock"


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
    pointer = Path(index_root) / CURRENT_FILE
    return pointer.read_text().strip() if pointer.is_file() else None


def new_staging_dir(index_root: Path, label: str = "") -> Path:
    """A fresh, empty directory to build a version in; its name becomes the version name.

    Names start with the UTC time to the millisecond, so they sort in creation order.
    """
    now = datetime.now(timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}"
    suffix = f"-{label}" if label else ""
    staging = Path(index_root) / STAGING_DIR / f"{stamp}-{secrets.token_hex(3)}{suffix}"
    staging.mkdir(parents=True)
    return staging


@contextlib.contextmanager
def root_lock(index_root: Path) -> Iterator[None]:
    """Exclusive lock on the index root for writers (released by the OS if the process dies)."""
    index_root = Path(index_root)
    index_root.mkdir(parents=True, exist_ok=True)
    with open(index_root / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _follow_in_milvus(manifest: IndexManifest) -> None:
    """Switch the version's Milvus alias to its collection (a FAISS version: nothing to do)."""
    if manifest.backend == "milvus" and manifest.milvus is not None:
        switch_alias(manifest.milvus)


def _write_current(index_root: Path, version: str) -> None:
    # a temporary name of its own: two publishers never write the same temporary file
    with atomic_path(index_root / CURRENT_FILE, fsync=True, tmp=index_root / f".{CURRENT_FILE}.{secrets.token_hex(4)}.tmp") as tmp:
        tmp.write_text(version + "\n")
    _fsync_dir(index_root)


def publish_derived(
    index_root: Path, source: Path, update: dict, label: str, provenance: dict[str, dict] | None = None
) -> str:
    """Publish a version that differs from ``source`` (a version directory) only in its manifest.

    Every data file is hard-linked (no copy, no re-encoding: the FAISS file, docids, passages and
    BM25 index are shared, and never modified in place by anyone). The manifest is ``source``'s
    with ``update`` applied, ``parent`` = ``source``'s name, a fresh ``created_at`` and
    ``provenance`` merged into ``build``; the version's name ends in ``label``. Published only if
    ``CURRENT`` still names ``source`` (see :func:`publish`); returns the new version's name.
    """
    staging = new_staging_dir(index_root, label)
    for path in sorted(source.rglob("*")):
        target = staging / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.name != MANIFEST_FILE:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    manifest = read_manifest(source)
    build = {**manifest.build, **(provenance or {})}
    new = manifest.model_copy(update={**update, "parent": source.name, "created_at": utc_now(), "build": build})
    write_manifest(staging, IndexManifest.model_validate(new.model_dump()))
    return publish(index_root, staging, expect_current=source.name)


def check_complete(directory: Path) -> IndexManifest:
    """A finished index directory: valid manifest, every listed file at its size, no build scratch."""
    manifest = read_manifest(directory)
    check_files(directory, manifest)
    if (directory / BUILD_DIR).exists():
        raise ArtifactError(f"{directory}: still holds build scratch ({BUILD_DIR}/); the build did not finish")
    return manifest


def publish(index_root: Path, staged: Path, keep: int | None = None, expect_current: str | None = None) -> str:
    """Move a finished staged build into ``versions/`` and point ``CURRENT`` at it; returns the version.

    ``expect_current``: refuse (``ArtifactError``) unless ``CURRENT`` still names that version, so
    an update derived from one version never silently replaces a concurrent one. ``keep``: prune
    to the newest ``keep`` versions afterwards (see :func:`prune`).
    """
    index_root = Path(index_root)
    manifest = check_complete(staged)  # refuse to publish an incomplete build
    with root_lock(index_root):
        if expect_current is not None and current_version(index_root) != expect_current:
            raise ArtifactError(
                f"{index_root}: CURRENT moved from {expect_current} to {current_version(index_root)} while this "
                "version was built; not published (apply the change again)"
            )
        versions = index_root / VERSIONS_DIR
        versions.mkdir(parents=True, exist_ok=True)
        version = staged.name
        if (versions / version).exists():
            raise ArtifactError(f"{versions / version} already exists")
        _follow_in_milvus(manifest)  # may fail (Milvus down): then nothing is published
        os.replace(staged, versions / version)
        _fsync_dir(versions)
        _write_current(index_root, version)
        if keep is not None:
            _prune_locked(index_root, keep)
    return version


@dataclass(frozen=True)
class VersionInfo:
    """One directory under ``versions/``: its manifest (or why it could not be read)."""

    name: str
    directory: Path
    manifest: IndexManifest | None
    error: str | None
    current: bool


def _sort_key(info: VersionInfo) -> tuple[str, str]:
    return (info.manifest.created_at if info.manifest else "", info.name)


def list_versions(index_root: Path) -> list[VersionInfo]:
    """Every version under ``versions/``, oldest first (by build time, then name)."""
    index_root = Path(index_root)
    current = current_version(index_root)
    out: list[VersionInfo] = []
    versions = index_root / VERSIONS_DIR
    if not versions.is_dir():
        return out
    for directory in versions.iterdir():
        if not directory.is_dir():
            continue
        try:
            manifest, error = read_manifest(directory), None
        except ArtifactError as exc:
            manifest, error = None, str(exc)
        out.append(VersionInfo(directory.name, directory, manifest, error, directory.name == current))
    return sorted(out, key=_sort_key)


def set_current(index_root: Path, version: str) -> str:
    """Point ``CURRENT`` at an existing, complete version (roll back or forward); returns it."""
    index_root = Path(index_root)
    target = index_root / VERSIONS_DIR / version
    if not version or "/" in version or version in (".", "..") or not target.is_dir():
        raise ArtifactError(f"{index_root}: no version {version!r} (see md2pr-index list)")
    manifest = check_complete(target)
    with root_lock(index_root):
        _follow_in_milvus(manifest)
        _write_current(index_root, version)
    return version


def rollback(index_root: Path, version: str | None = None) -> str:
    """Re-point ``CURRENT`` to ``version``, or to the newest complete version older than the current one."""
    index_root = Path(index_root)
    if version is not None:
        return set_current(index_root, version)
    current = current_version(index_root)
    if current is None:
        raise ArtifactError(f"{index_root}: nothing is published, nothing to roll back")
    versions = list_versions(index_root)
    names = [v.name for v in versions]
    if current not in names:
        raise ArtifactError(f"{index_root}: CURRENT names {current!r}, which is not under {VERSIONS_DIR}/")
    older = [v for v in versions[: names.index(current)] if v.manifest is not None]
    for candidate in reversed(older):
        try:
            return set_current(index_root, candidate.name)
        except ArtifactError:
            continue  # damaged: try the one before
    raise ArtifactError(f"{index_root}: no complete version older than {current} to roll back to")


def _remove_tree(index_root: Path, directory: Path) -> None:
    """Delete ``directory`` after one atomic rename out of sight (no half-deleted version is ever visible)."""
    trash = index_root / TRASH_DIR
    trash.mkdir(exist_ok=True)
    target = trash / f"{directory.name}.{secrets.token_hex(3)}"
    os.replace(directory, target)
    shutil.rmtree(target, ignore_errors=True)


def _prune_locked(index_root: Path, keep: int) -> list[str]:
    if keep < 1:
        raise ArtifactError(f"keep must be at least 1, got {keep}")
    versions = list_versions(index_root)
    current = current_version(index_root)
    newest = {v.name for v in versions[-keep:]}
    kept_collections = {
        (v.manifest.milvus.uri, v.manifest.milvus.collection)
        for v in versions
        if (v.name in newest or v.name == current) and v.manifest is not None and v.manifest.milvus is not None
    }
    removed = []
    for info in versions:
        if info.name in newest or info.name == current:
            continue
        _remove_tree(index_root, info.directory)
        removed.append(info.name)
        ref = info.manifest.milvus if info.manifest is not None else None
        if ref is not None and (ref.uri, ref.collection) not in kept_collections:
            try:
                drop_collection(ref)
            except MilvusError as exc:  # the version is gone either way; say what is left in Milvus
                logger.warning("pruned %s but could not drop its Milvus collection: %s", info.name, exc)
    return removed


def prune(index_root: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the one ``CURRENT`` names); returns the removed names."""
    with root_lock(Path(index_root)):
        return _prune_locked(Path(index_root), keep)


def _staging_lock_path(staging: Path) -> Path:
    return staging.parent / f".{staging.name}.lock"


def lock_staging(staging: Path) -> IO[str] | None:
    """Lock a staging directory for this process (a sibling lock file, so the directory stays clean).

    Returns the open lock handle, or ``None`` when another live process holds it. The OS
    releases the lock when the process dies, however it dies.
    """
    handle = open(_staging_lock_path(staging), "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def unlock_staging(staging: Path, handle: IO[str] | None) -> None:
    """Release :func:`lock_staging`'s lock and remove its file."""
    if handle is None or handle.closed:
        return
    _staging_lock_path(staging).unlink(missing_ok=True)
    handle.close()


def staging_in_use(staging: Path) -> bool:
    """Whether a live process holds the lock of this staging directory."""
    if not _staging_lock_path(staging).is_file():
        return False
    handle = lock_staging(staging)
    if handle is None:
        return True
    handle.close()
    return False


def remove_staging(index_root: Path, name: str) -> None:
    """Delete one staging directory (a build given up)."""
    index_root = Path(index_root)
    directory = index_root / STAGING_DIR / name
    if directory.is_dir():
        _remove_tree(index_root, directory)
