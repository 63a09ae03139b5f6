"""Passage encoding for index builds: token-length-bucketed batches, no padding wasted.

The whole window (one shard) is tokenised once, sorted by token count, cut into batches of
``batch_size``, and each batch is padded only to its own longest member, which after the sort
is (nearly) every member's length. Batches are built straight from the token ids in numpy,
without a second tokeniser pass. Each batch goes through
:meth:`retrieval.encoder.DualEncoder.embed`, the one inference path (the encoder's backend runs
the transformer; pooling, normalisation and limits are the encoder's), so the vectors are the
ones the same encoder gives at query time.

Parallelism is across batches, not inside them: with ``workers`` threads (default: torch's
thread count, i.e. the cores), each worker runs whole batches with one intra-op thread (torch:
``set_num_threads(1)`` on the worker; ONNX Runtime: a one-thread session). On
CPU this beats one batch at a time on all cores (no per-operator fork/join, no threads
spinning at barriers: about 1.3x on 2 cores), and each batch is computed by a single thread,
so the vectors do not depend on scheduling: a resumed build gets the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from retrieval.backends import Backend
from retrieval.encoder import DualEncoder


@dataclass
class Tokenized:
    """Token ids of one window of texts, and the order that groups equal lengths."""

    ids: list[list[int]]
    lengths: np.ndarray  # [n] token counts, special tokens included
    order: np.ndarray  # [n] row indices, longest first (stable)


class PassageEncoder:
    """Encodes passage texts with a :class:`DualEncoder` for indexing."""

    def __init__(self, encoder: DualEncoder, batch_size: int = 32, workers: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.encoder = encoder
        self.batch_size = batch_size
        self.workers = max(1, workers or torch.get_num_threads())
        tokenizer = encoder.tokenizer
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._prefix = encoder.config.passage_prefix
        self._max_length = encoder.config.max_passage_length

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids (truncated to the encoder's passage length) and the length-sorted order."""
        ids = self.encoder.tokenizer(
            [self._prefix + t for t in texts],
            truncation=True,
            max_length=self._max_length,
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        return Tokenized(ids, lengths, order)

    def _batch(self, tokens: Tokenized, rows: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        """Vectors ``[len(rows), dimension]`` for one batch, padded to its longest member."""
        width = int(tokens.lengths[rows].max())
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            length = tokens.lengths[row]
            input_ids[i, :length] = tokens.ids[row]
            mask[i, :length] = 1
        device = self.encoder.model.device
        ids_t = torch.from_numpy(input_ids).to(device)
        mask_t = torch.from_numpy(mask).to(device)
        return self.encoder.embed(ids_t, mask_t, backend)  # [batch, dim]

    def _single_threaded_batch(self, tokens: Tokenized, rows: np.ndarray, backend: Backend) -> np.ndarray:
        torch.set_num_threads(1)  # per worker thread: OpenMP thread counts are per calling thread
        return self._batch(tokens, rows, backend)

    def encode_tokenized(self, tokens: Tokenized) -> np.ndarray:
        """Vectors ``[n, dimension]`` float32 in input order."""
        n = len(tokens.ids)
        out = np.empty((n, self.dimension), dtype=np.float32)
        batches = [tokens.order[start : start + self.batch_size] for start in range(0, n, self.batch_size)]
        if self.workers == 1 or len(batches) == 1 or self.encoder.model.device.type != "cpu":
            for rows in batches:
                out[rows] = self._batch(tokens, rows)
            return out
        previous = torch.get_num_threads()
        single = self.encoder.backend.single_threaded()
        try:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="encode") as workers:
                work = workers.map(lambda rows: self._single_threaded_batch(tokens, rows, single), batches)
                for rows, vectors in zip(batches, work):
                    out[rows] = vectors
        finally:
            torch.set_num_threads(previous)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors ``[len(texts), dimension]`` float32 for passage texts (use ``Passage.full_text``)."""
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        return self.encode_tokenized(self.tokenize(texts))
