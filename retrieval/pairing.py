"""Query-tower students and the passage vectors they pair with (``pairing.json``).

A query-tower student (``md2pr-distill --train-tower query``) trains only the query side; its
passages stay the vectors of the base encoder's index. Its fingerprint therefore differs from the
one in that index's manifest, and :class:`retrieval.retriever.Retriever` refuses the pair on
purpose. The model directory says which passage encoder it pairs with in :data:`PAIRING_FILE`::

    {"format": 1, "tower": "query",
     "passage_encoder": {"source": "<the base encoder>", "fingerprint": "<its fingerprint>"},
     "index": "<the index directory it was trained against>",
     "query_encoder_fingerprint": "<the student's own fingerprint>"}

Any index whose manifest names ``passage_encoder.fingerprint`` can serve the student's query
vectors (:func:`check_pairing`). A model directory without the file is a two-tower model: it
pairs with itself (the manifest must name its own fingerprint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ArtifactMismatchError

PAIRING_FILE = "pairing.json"


def write_pairing(model_dir: str | os.PathLike[str], passage_source: str, passage_fingerprint: str, index: str,
                  query_fingerprint: str) -> Path:
    """Write :data:`PAIRING_FILE` into a saved query-tower student's directory; returns its path."""
    path = Path(model_dir) / PAIRING_FILE
    data: dict[str, Any] = {
        "format": 1,
        "tower": "query",
        "passage_encoder": {"source": passage_source, "fingerprint": passage_fingerprint},
        "index": index,
        "query_encoder_fingerprint": query_fingerprint,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_pairing(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A model directory's pairing, or ``None`` (a two-tower model). A malformed file is an :class:`ArtifactError`."""
    path = Path(model_dir) / PAIRING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        str(data["passage_encoder"]["fingerprint"])
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{path}: not a pairing file") from None
    return data


def passage_fingerprint(model_dir: str | os.PathLike[str], own_fingerprint: str) -> str:
    """The fingerprint an index must name to serve this model's queries: the paired passage
    encoder's for a query-tower student, the model's own otherwise."""
    pairing = read_pairing(model_dir)
    return own_fingerprint if pairing is None else str(pairing["passage_encoder"]["fingerprint"])


def check_pairing(model_dir: str | os.PathLike[str], own_fingerprint: str, index_fingerprint: str, index: str = "the index") -> None:
    """Raise :class:`ArtifactMismatchError` unless ``index_fingerprint`` (from an index manifest) is
    the passage encoder this model pairs with."""
    wanted = passage_fingerprint(model_dir, own_fingerprint)
    if wanted != index_fingerprint:
        raise ArtifactMismatchError(
            f"{index} was built by encoder {index_fingerprint[:12]}; the query encoder {model_dir} pairs with "
            f"passages of {wanted[:12]}"
        )
