"""Errors of the experiment pipeline; subclasses of :class:`retrieval.errors.RetrievalError`, so
``md2pr-experiment`` (``retrieval.runtime.run_main``) prints them as one line and exits 2."""

from __future__ import annotations

from retrieval.errors import RetrievalError


class PipelineError(RetrievalError):
    """A pipeline run cannot go on: a bad configuration, a failed or stale step."""
