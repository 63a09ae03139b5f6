"""Passage encoding for index builds: token-length-bucketed batches, no padding wasted.

The whole window (one shard) is tokenised once (:meth:`retrieval.encoder.DualEncoder.token_ids`)
and cut into length-sorted batches padded only to their own longest member
(:class:`retrieval.token_batches.TokenIds`, the batching every encoder here uses); each batch goes
through :meth:`retrieval.encoder.DualEncoder.embed_rows`, the one inference path (the encoder's
backend runs the transformer; pooling, normalisation and limits are the encoder's), so the
vectors are the ones the same encoder gives at query time.

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

import numpy as np
import torch

from retrieval.backends import Backend
from retrieval.encoder import DualEncoder
from retrieval.token_batches import TokenIds


#: A window of passages, tokenised (the name the build job and its engines use).
Tokenized = TokenIds


class PassageEncoder:
    """Encodes passage texts with a :class:`DualEncoder` for indexing."""

    def __init__(self, encoder: DualEncoder, batch_size: int = 32, workers: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.encoder = encoder
        self.batch_size = batch_size
        self.workers = max(1, workers or torch.get_num_threads())

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids (truncated to the encoder's passage length) and the length-sorted order."""
        return self.encoder.token_ids(texts, "passage")

    def _batch(self, tokens: Tokenized, rows: np.ndarray, backend: Backend | None = None) -> np.ndarray:
        """Vectors ``[len(rows), dimension]`` for one batch, padded to its longest member."""
        return self.encoder.embed_rows(tokens, rows, backend)  # [batch, dim]

    def _single_threaded_batch(self, tokens: Tokenized, rows: np.ndarray, backend: Backend) -> np.ndarray:
        torch.set_num_threads(1)  # per worker thread: OpenMP thread counts are per calling thread
        return self._batch(tokens, rows, backend)

    def encode_tokenized(self, tokens: Tokenized) -> np.ndarray:
        """Vectors ``[n, dimension]`` float32 in input order."""
        batches = tokens.batches(self.batch_size)
        if self.workers == 1 or len(batches) <= 1 or self.encoder.model.device.type != "cpu":
            return self.encoder.encode_token_ids(tokens, self.batch_size)
        out = np.empty((len(tokens), self.dimension), dtype=np.float32)
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
