"""Length-sorted, padded batches of token ids: the one batching of every encoder here.

The dual encoder's queries and passages (:meth:`retrieval.encoder.DualEncoder.encode`), the index
build's windows (``index_build.encoding``) and the cross-encoder's pairs
(:meth:`retrieval.cross_encoder.CrossEncoder.score`) are tokenised once, without padding, into a
:class:`TokenIds`; its rows are sorted by token count (longest first, stable), cut into batches,
and each batch is padded in numpy only to its own longest member, which after the sort is
(nearly) every member's length. Building the arrays directly avoids a second pass through the
tokenizer's ``pad`` (whose Python overhead is most of a one-query request's tokenisation cost).

Invariants: ``ids[i]`` are the token ids of text ``i`` (special tokens included, already
truncated); ``lengths[i] == len(ids[i])``; ``order`` is a permutation of ``range(n)``; padded
arrays are int64 ``[batch, width]`` with ``width`` the longest row of the batch, ``attention_mask``
1 on real tokens and 0 on padding, padding ids ``pad_id`` and padding token types 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class TokenIds:
    """Token ids of ``n`` texts (or text pairs), unpadded, and the order that groups equal lengths."""

    ids: list[list[int]]
    lengths: np.ndarray  # [n] int64 token counts, special tokens included
    order: np.ndarray  # [n] row indices, longest first (stable)
    type_ids: list[list[int]] | None = None  # per-token segment ids (pairs), else all 0

    @classmethod
    def of(cls, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> "TokenIds":
        """Wrap a tokenizer's unpadded ``input_ids`` (and ``token_type_ids`` for pairs)."""
        ids = [list(x) for x in ids] if not isinstance(ids, list) else ids
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        if type_ids is not None and [len(t) for t in type_ids] != lengths.tolist():
            raise ValueError("token_type_ids must have one entry per token")
        return cls(ids, lengths, np.argsort(-lengths, kind="stable"), None if type_ids is None else list(type_ids))

    def __len__(self) -> int:
        return len(self.ids)

    def batches(self, batch_size: int) -> list[np.ndarray]:
        """Row indices of each batch of at most ``batch_size``, longest texts first."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        return [self.order[start : start + batch_size] for start in range(0, len(self.order), batch_size)]

    def pad(self, rows: np.ndarray, pad_id: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask, token_type_ids)``, each int64 ``[len(rows), width]``, for ``rows``;
        ``pad_id`` is the tokenizer's ``pad_token_id`` (``None``, a tokenizer without one: 0)."""
        width = int(self.lengths[rows].max()) if len(rows) else 0
        input_ids = np.full((len(rows), width), 0 if pad_id is None else pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            length = int(self.lengths[row])
            input_ids[i, :length] = self.ids[row]
            mask[i, :length] = 1
            if self.type_ids is not None:
                types[i, :length] = self.type_ids[row]
        return input_ids, mask, types
