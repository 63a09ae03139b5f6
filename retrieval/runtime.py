"""Process-level setup shared by every entry point: logging, thread counts, user-facing errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from .errors import RetrievalError

logger = logging.getLogger(__name__)


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr; quiet the model-loading chatter of transformers."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def configure_threads(threads: int | None) -> int:
    """Set torch and FAISS intra-op threads deliberately (default: all cores); returns the count.

    Oversubscribed threads spin against each other: on 2 cores a query went from ~20 ms to
    ~500 ms with another busy process. One setting for both libraries keeps runs comparable.
    """
    import faiss
    import torch

    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return n


def run_main(body: Callable[[], int]) -> int:
    """Run a CLI body: a :class:`RetrievalError` (a user mistake) becomes one line on stderr and exit 2."""
    try:
        return body()
    except RetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
