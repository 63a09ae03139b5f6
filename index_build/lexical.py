"""The BM25 side index of a version: built beside the dense index, kept in step by re-indexing.

It lives in ``<version>/bm25/`` (bm25s files plus ``bm25_index.json``) and is described by
the manifest's ``lexical`` entry (:class:`retrieval.index.LexicalRef`). It is built from the
version's own passage store in row order, so both sides index exactly the same passages.
bm25s has no incremental update: a re-index rebuilds it from the new version's store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from retrieval.bm25 import BM25Config, BM25Index
from retrieval.index import LexicalRef
from retrieval.passage_store import STORE_FILE, PassageStore
from retrieval.types import Passage

logger = logging.getLogger(__name__)

LEXICAL_DIR = "bm25"


def _passages(store: PassageStore) -> Iterator[Passage]:
    rows = store.get_rows(range(store.count))
    return (rows[i] for i in range(store.count))


def build_lexical(version_dir: Path, config: BM25Config) -> LexicalRef:
    """Build and save the BM25 index over ``version_dir``'s passage store; returns its manifest entry."""
    started = time.monotonic()
    store = PassageStore(version_dir / STORE_FILE)
    try:
        index = BM25Index.build(_passages(store), config)
    finally:
        store.close()
    index.save(version_dir / LEXICAL_DIR)
    logger.info("BM25 side index: %d passages in %.1f s", len(index), time.monotonic() - started)
    return LexicalRef(directory=LEXICAL_DIR, config=config.to_dict(), count=len(index))


def rebuild_lexical(old: LexicalRef | None, staging: Path) -> LexicalRef:
    """Re-index: a new BM25 index over ``staging``'s (new) passage store, with the old configuration."""
    return build_lexical(staging, BM25Config.from_dict(old.config) if old else BM25Config())
