"""Process-level setup shared by every entry point: logging, thread counts, user-facing errors."""

from __future__ import annotations

import argparse
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


def run_job(args: argparse.Namespace, body: Callable[[int], int]) -> int:
    """The ``main`` of a job CLI after its arguments are parsed; returns the exit code.

    ``args`` must have ``verbose`` (bool) and ``threads`` (int or None), the ``-v/--verbose`` and
    ``--threads`` flags every job has. Logging is configured first; then, under
    :func:`run_main` (a user mistake is one ``error:`` line and exit 2), torch/FAISS threads
    are set and ``body`` runs with the thread count actually used.
    """
    configure_logging(args.verbose)

    def configured_body() -> int:
        # Inside run_main: loading torch/FAISS to set threads can be interrupted (exit 130) too.
        return body(configure_threads(args.threads))

    return run_main(configured_body)
