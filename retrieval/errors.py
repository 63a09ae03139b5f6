"""The exception hierarchy of the shared library.

Every error a user can cause (a bad file, a missing artifact, a mismatched encoder) is a
subclass of :class:`RetrievalError` whose message is one readable line; CLIs print it and
exit non-zero, the service maps it to an HTTP status in one place.
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class of every error raised on purpose by ``retrieval``."""


class DatasetFormatError(RetrievalError):
    """A dataset file is missing or holds a malformed record (the message names file and line)."""


class ArtifactError(RetrievalError):
    """A model or index artifact is missing, corrupt or inconsistent."""


class ArtifactMismatchError(ArtifactError):
    """Two artifacts that must agree do not (e.g. an index built by another encoder)."""


class EncoderError(RetrievalError):
    """A model directory cannot be loaded as a dual encoder."""


class InvalidValueError(RetrievalError, ValueError):
    """A setting or input value is out of range or malformed (e.g. an unknown stemmer, an empty corpus)."""
