"""Errors of the training jobs; subclasses of :class:`retrieval.errors.RetrievalError`, so the CLIs
(``retrieval.runtime.run_main``) print them as one line and exit 2."""

from __future__ import annotations

from retrieval.errors import RetrievalError


class TrainingError(RetrievalError):
    """A training job cannot go on (bad settings, a missing or inconsistent artifact)."""


class TrainingFileError(TrainingError):
    """A training (mining/annotation) file is missing or malformed; the message names file and line."""


def check_settings(what: str, settings: object, checks: dict[str, bool]) -> None:
    """Raise one :class:`TrainingError` naming every setting whose check failed, with its value:
    ``invalid <what> settings: lr=0.0, epochs=0``."""
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise TrainingError(f"invalid {what} settings: {', '.join(f'{n}={getattr(settings, n)!r}' for n in bad)}")
