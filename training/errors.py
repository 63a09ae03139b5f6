"""Errors of the training jobs; subclasses of :class:`retrieval.errors.RetrievalError`, so the CLIs
(``retrieval.runtime.run_main``) print them as one line and exit 2."""

from __future__ import annotations

from retrieval.errors import RetrievalError


class TrainingError(RetrievalError):
    """A training job cannot go on (bad settings, a missing or inconsistent artifact)."""


class TrainingFileError(TrainingError):
    """A training (mining/annotation) file is missing or malformed; the message names file and line."""
