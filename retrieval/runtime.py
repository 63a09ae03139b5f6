"""Process-level setup shared by every entry point: logging, thread counts, user-facing errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from .errors import RetrievalError

logger = logging.getLogger(__name__)


#: Loggers of the libraries underneath, kept at WARNING unless ``-v``: FAISS announces every
#: SIMD build it could not load at INFO ("faiss.loader", ten lines a start), bm25s logs its
#: progress at DEBUG (and sets its own logger to DEBUG when imported), the HTTP clients log
#: every request at INFO. A child logger ("faiss.loader") follows its parent's level.
QUIET_LIBRARY_LOGGERS = (
    "faiss",
    "bm25s",
    "httpx",
    "httpcore",
    "urllib3",
    "transformers",
    "sentence_transformers",
    "huggingface_hub",
    "filelock",
    "fsspec",
    "torch",
    "onnxruntime",
    "matplotlib",
    "PIL",
    "numexpr",
    "ray",
    "pymilvus",
    "milvus_lite",
)


class _BelowWarning(logging.Filter):
    """Drops records under WARNING: a logger filter holds where a library resets its own level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_QUIET = _BelowWarning()


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with ``verbose``); libraries' loggers at WARNING unless ``verbose``.

    The one logging configuration of the entry points. Our own packages log at INFO; the
    loggers in :data:`QUIET_LIBRARY_LOGGERS` (and their children) only show warnings and errors,
    so a command's output starts with its own lines. ``verbose`` (``-v``) shows everything.
    transformers' own verbosity stays at ERROR either way (its model-loading chatter). Loggers
    with their own handlers (the service's JSON access log, uvicorn's) are not touched.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in QUIET_LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if verbose:
            library.setLevel(logging.NOTSET)
            library.removeFilter(_QUIET)
        else:
            library.setLevel(logging.WARNING)
            library.addFilter(_QUIET)  # a no-op when already added
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
