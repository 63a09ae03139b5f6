"""Files written atomically, and JSON read with one-line errors: the one implementation.

- :func:`atomic_path` / :func:`atomic_open`: every atomic write of the project. The payload goes
  to a temporary file beside the target (``<name>.tmp``), which is ``os.replace``-d onto it when
  the write succeeds (and removed when it fails), so a reader (or a run killed half-way) sees the
  old file or the new one, never half of one. ``atomic_path`` yields the temporary path for
  writers that want a file name (``faiss.write_index``); ``atomic_open`` yields an open handle
  (text or binary: JSON lines, ``.npy``/``.npz``, raw vectors).
- :func:`write_json_atomic` / :func:`write_text_atomic`: a whole JSON or text payload through
  ``atomic_open``. JSON is written with ``indent=2`` and a final newline.
- :func:`read_json_object`: a JSON object from a file (a configuration, a record); a missing
  file, invalid JSON (with its line) or a non-object is one readable line.
- :func:`validate_json_object`: the same, validated by a pydantic model; the model's complaints
  become one line ``<path>: <field>: <problem>; ...``.
- :func:`read_jsonl`: the objects of a JSON-lines log; a line cut by a kill is skipped (logged).

Errors are raised as the caller's exception class (``error``; a :class:`RetrievalError`
subclass, so CLIs print the line and exit 2), so each package keeps its own hierarchy.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InvalidValueError, RetrievalError

Model = TypeVar("Model", bound=BaseModel)

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, fsync: bool = False, tmp: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``<name>.tmp``, or ``tmp``) to write; when the block
    ends, ``os.replace`` it onto ``path``; when the block raises, remove it and leave ``path`` as it was.

    ``fsync`` flushes the written file to disk before the rename (state a resumed job must find
    whole after a crash).
    """
    path = Path(path)
    temporary = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    try:
        yield temporary
        if fsync:
            with temporary.open("rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *, fsync: bool = False) -> Iterator[IO[Any]]:
    """:func:`atomic_path`, with the temporary file open for writing (``"w"``: UTF-8 text, ``"wb"``: bytes)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path, fsync=fsync) as temporary:
        with temporary.open(mode, encoding="utf-8" if mode == "w" else None) as handle:
            yield handle


def write_text_atomic(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, fsync=fsync) as handle:
        handle.write(text)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON (``indent=2``, final newline) atomically; a pydantic model is dumped first."""
    text = data.model_dump_json(indent=2) if isinstance(data, BaseModel) else json.dumps(data, indent=2)
    write_text_atomic(path, text + "\n")


def read_json_object(
    path: str | os.PathLike[str], *, error: type[RetrievalError] = InvalidValueError, missing: str = "no such file"
) -> dict[str, Any]:
    """The JSON object in ``path``; ``error(<one line>)`` when the file is absent (``<path>: <missing>``),
    is not valid JSON (``<path>:<line>: not valid JSON: <reason>``) or holds another JSON value."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a configuration is a JSON object")
    return data


def validation_problems(exc: ValidationError, root: str = "config") -> str:
    """A pydantic error as one line: ``field.path: problem; ...`` (``root`` names a top-level problem)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']}" for e in exc.errors())


def validate_json_object(
    path: str | os.PathLike[str],
    model: type[Model],
    *,
    error: type[RetrievalError] = InvalidValueError,
    missing: str = "no such file",
) -> Model:
    """:func:`read_json_object`, validated by ``model``; its complaints are ``error("<path>: <problems>")``."""
    data = read_json_object(path, error=error, missing=missing)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {validation_problems(exc)}") from None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file ([] when it is absent); a line cut by a kill is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: skipping an unreadable line", path)
    return out
