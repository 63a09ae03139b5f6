"""The Milvus backend of an index version: the vectors live in a Milvus collection, not in ``index.faiss``.

Mapping of the project's versioning onto Milvus:

- **one collection per version**, named ``<prefix>_<version>`` (the version directory's name with
  ``-`` as ``_``; ``prefix`` defaults to the index root's name), written by the build job and never
  modified once the version is published (an update is a new version, so a new collection);
- **an alias** ``<prefix>_current`` **as** ``CURRENT``: publishing, rollback and ``md2pr-index
  set-current`` switch it (``alter_alias``, atomic in Milvus) right before the ``CURRENT`` file, so
  a client reading Milvus directly and the service reading the index root agree on the version;
- pruning a version drops its collection.

The version directory still holds the manifest, ``docids.txt``, the passage store (passage text
is served from it, as for FAISS), ``vectors.f32`` (exact vectors: the quality gate and
incremental updates read them) and the BM25 side index. The service searches the *version's*
collection by name (not the alias), so a version loaded beside another for a hot swap answers
from its own vectors until its last lease ends.

Collection schema: ``row_id`` INT64 primary key (= the row id, a position in ``docids.txt``),
``docid`` VARCHAR (the external id, for clients of Milvus itself), ``vector`` FLOAT_VECTOR
``[dimension]``; metric IP (inner product, as for FAISS). Index families are named with the
FAISS factory strings the rest of the project uses: ``Flat`` -> ``FLAT`` (exact), ``HNSW<M>`` ->
``HNSW`` (``M``, ``efConstruction``; search parameter ``efSearch`` is Milvus's ``ef``),
``IVF<nlist>,Flat`` -> ``IVF_FLAT`` (``nlist``; ``nprobe``).

Tested against milvus-lite (pip, embedded; ``python -m milvus_lite server`` for a server shared
by processes, or a local ``.db`` path for one process); operators run the official Milvus
standalone image (docker-compose profile ``milvus``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import ArtifactError

logger = logging.getLogger(__name__)

METRIC = "IP"
#: Rows per insert call (a few MB per gRPC message at 384 dimensions; Milvus's limit is 64 MB).
INSERT_ROWS = 4096
DOCID_MAX_LENGTH = 1024
_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Our search-parameter names -> Milvus's.
PARAM_NAMES = {"efSearch": "ef", "nprobe": "nprobe"}


class MilvusError(ArtifactError):
    """Milvus unreachable, or a collection missing or out of step with its version."""


class MilvusRef(BaseModel):
    """Where a version's vectors live in Milvus (the manifest's ``milvus``)."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(..., description="Milvus URI: http://host:19530, or a milvus-lite .db path (absolute)")
    collection: str = Field(..., description="this version's collection (one per version)")
    alias: str = Field(..., description="the alias that names the CURRENT version's collection")
    index_type: Literal["FLAT", "HNSW", "IVF_FLAT"]
    index_params: dict[str, int] = Field(default_factory=dict, description="Milvus build parameters: M, efConstruction, nlist")
    metric: Literal["IP"] = METRIC


def milvus_name(text: str) -> str:
    """``text`` as a Milvus collection/alias name (letters, digits, ``_``; not starting with a digit)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = "v_" + name
    return name[:255]


def collection_names(prefix: str, version: str) -> tuple[str, str]:
    """``(collection, alias)`` for ``version`` of an index root whose Milvus prefix is ``prefix``."""
    if not _NAME_OK.fullmatch(prefix):
        raise MilvusError(f"Milvus prefix {prefix!r} must be letters, digits and _ (not starting with a digit)")
    return milvus_name(f"{prefix}_{version}"), f"{prefix}_current"


def milvus_index_for(factory: str, ef_construction: int | None = None) -> tuple[str, dict[str, int]]:
    """The Milvus index type and build parameters for a FAISS factory string (Flat, HNSW<M>, IVF<n>,Flat)."""
    from .index import DEFAULT_EF_CONSTRUCTION

    if factory == "Flat":
        return "FLAT", {}
    if m := re.fullmatch(r"HNSW(\d+)", factory):
        return "HNSW", {"M": int(m.group(1)), "efConstruction": ef_construction or DEFAULT_EF_CONSTRUCTION}
    if m := re.fullmatch(r"IVF(\d+),Flat", factory):
        return "IVF_FLAT", {"nlist": int(m.group(1))}
    raise MilvusError(f"index family {factory!r} is not available on the milvus backend (use Flat, HNSW<M> or IVF<nlist>,Flat)")


def resolve_uri(uri: str) -> str:
    """A network URI as given; a milvus-lite file path made absolute (the manifest must not depend on the cwd)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri):
        return uri
    return str(Path(uri).expanduser().resolve())


#: Attempts of :func:`connect` and the pause between them: a server may refuse one new channel
#: (gRPC's GOAWAY "too_many_pings" right after another client of the process closed) and take the next.
CONNECT_ATTEMPTS = 3
CONNECT_PAUSE_S = 0.5


def connect(uri: str):
    """A ``pymilvus.MilvusClient`` for ``uri``; a server still unreachable after
    :data:`CONNECT_ATTEMPTS` tries is :class:`MilvusError` (one line)."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:  # pragma: no cover - pymilvus is a declared dependency
        raise MilvusError("the milvus backend needs pymilvus (pip install pymilvus milvus-lite)") from exc
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return MilvusClient(uri=uri, timeout=30)
        except Exception as exc:
            if attempt == CONNECT_ATTEMPTS:
                raise MilvusError(f"cannot connect to Milvus at {uri}: {_reason(exc)}") from exc
            logger.warning("Milvus at %s refused a connection (%s); retrying", uri, _reason(exc))
            time.sleep(CONNECT_PAUSE_S)
    raise AssertionError("unreachable")


@contextmanager
def connected(uri: str) -> Iterator[Any]:
    """A client of :func:`connect` for the length of a ``with`` block, closed after it."""
    client = connect(uri)
    try:
        yield client
    finally:
        client.close()


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    lines = str(message).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def write_collection(
    ref: MilvusRef,
    dimension: int,
    chunks: Iterator[tuple[int, np.ndarray]],
    docids: Sequence[str],
) -> dict[str, Any]:
    """(Re)create ``ref.collection`` and fill it: rows from ``chunks`` (``(first_row, [n, dim] float32)``
    in row order), then flush, index and load. An existing collection of that name (an earlier,
    interrupted attempt at the same unpublished version) is dropped first. Returns timings."""
    import time

    from pymilvus import DataType, MilvusClient

    with connected(ref.uri) as client:
        try:
            t0 = time.monotonic()
            if client.has_collection(ref.collection):
                logger.info("dropping %s left by an earlier attempt", ref.collection)
                client.drop_collection(ref.collection)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("row_id", DataType.INT64, is_primary=True)
            schema.add_field("docid", DataType.VARCHAR, max_length=DOCID_MAX_LENGTH)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
            client.create_collection(ref.collection, schema=schema)
            count = 0
            for first, chunk in chunks:
                for start in range(0, len(chunk), INSERT_ROWS):
                    part = np.ascontiguousarray(chunk[start : start + INSERT_ROWS], dtype=np.float32)  # [n, dim]
                    base = first + start
                    client.insert(
                        ref.collection,
                        [{"row_id": base + i, "docid": docids[base + i], "vector": v} for i, v in enumerate(part)],
                    )
                    count += len(part)
            client.flush(ref.collection)
            insert_s = time.monotonic() - t0
            t0 = time.monotonic()
            params = client.prepare_index_params()
            params.add_index(field_name="vector", index_type=ref.index_type, metric_type=ref.metric, params=dict(ref.index_params))
            client.create_index(ref.collection, params)
            client.load_collection(ref.collection)
            stored = int(client.get_collection_stats(ref.collection)["row_count"])
            if stored != count:
                raise MilvusError(f"collection {ref.collection} holds {stored} rows after inserting {count}")
            return {"milvus_insert_s": round(insert_s, 3), "milvus_index_s": round(time.monotonic() - t0, 3)}
        except MilvusError:
            raise
        except Exception as exc:
            raise MilvusError(f"writing collection {ref.collection} to {ref.uri} failed: {_reason(exc)}") from exc


def drop_collection(ref: MilvusRef) -> None:
    """Drop ``ref.collection`` if it exists (a build given up, a pruned version); never the aliased one."""
    with connected(ref.uri) as client:
        if not client.has_collection(ref.collection):
            return
        try:
            if client.describe_alias(ref.alias).get("collection_name") == ref.collection:
                raise MilvusError(f"collection {ref.collection} is aliased as {ref.alias}; not dropped")
        except MilvusError:
            raise
        except Exception:
            pass  # no such alias yet
        client.drop_collection(ref.collection)


def switch_alias(ref: MilvusRef) -> None:
    """Point ``ref.alias`` at ``ref.collection`` (create the alias the first time); atomic in Milvus."""
    with connected(ref.uri) as client:
        if not client.has_collection(ref.collection):
            raise MilvusError(f"collection {ref.collection} is missing from {ref.uri}; cannot make it current")
        try:
            exists = ref.alias in client.list_aliases().get("aliases", [])
            if exists:
                client.alter_alias(ref.collection, ref.alias)
            else:
                client.create_alias(ref.collection, ref.alias)
        except Exception as exc:
            raise MilvusError(f"switching alias {ref.alias} to {ref.collection} failed: {_reason(exc)}") from exc


def aliased_collection(uri: str, alias: str) -> str | None:
    """The collection ``alias`` names, or ``None`` when there is no such alias."""
    with connected(uri) as client:
        if alias not in client.list_aliases().get("aliases", []):
            return None
        return client.describe_alias(alias).get("collection_name")


class MilvusIndex:
    """A version's collection, searched like a FAISS index: ``search(queries, k, params) -> (scores, rows)``.

    ``ntotal`` and ``d`` mirror FAISS's attributes, so the quality gate and the artifact code
    treat both backends alike.
    """

    def __init__(self, ref: MilvusRef, dimension: int, client=None) -> None:
        self.ref = ref
        self.d = dimension
        self._client = client or connect(ref.uri)
        try:
            if not self._client.has_collection(ref.collection):
                raise MilvusError(f"collection {ref.collection} is missing from {ref.uri}")
            self._client.load_collection(ref.collection)
            self.ntotal = int(self._client.get_collection_stats(ref.collection)["row_count"])
        except MilvusError:
            self._client.close()
            raise
        except Exception as exc:
            self._client.close()
            raise MilvusError(f"opening collection {ref.collection} at {ref.uri} failed: {_reason(exc)}") from exc

    def search(self, queries: np.ndarray, k: int, params: Mapping[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``queries [n, d]``: ``(scores [n, k] float32, rows [n, k] int64)``, -1 / -inf padded."""
        milvus_params = {PARAM_NAMES[name]: int(value) for name, value in (params or {}).items()}
        if self.ref.index_type == "HNSW" and "ef" in milvus_params:
            milvus_params["ef"] = max(milvus_params["ef"], k)  # Milvus refuses ef < limit
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        try:
            results = self._client.search(
                self.ref.collection,
                data=list(queries),
                limit=k,
                anns_field="vector",
                output_fields=["row_id"],
                search_params={"metric_type": METRIC, "params": milvus_params},
            )
        except Exception as exc:
            raise MilvusError(f"search in {self.ref.collection} failed: {_reason(exc)}") from exc
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, hits in enumerate(results):
            for j, hit in enumerate(list(hits)[:k]):
                rows[i, j] = int(hit["row_id"])
                scores[i, j] = float(hit["distance"])
        return scores, rows

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a dead connection is not an error worth raising
            pass
