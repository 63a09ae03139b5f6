"""JSON files, written atomically and read with one-line errors: the one implementation.

- :func:`write_json_atomic` / :func:`write_text_atomic`: write a temporary file beside the target,
  then ``os.replace`` it, so a reader (or a run killed half-way) sees the old file or the new one,
  never half of one. JSON is written with ``indent=2`` and a final newline.
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
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InvalidValueError, RetrievalError

Model = TypeVar("Model", bound=BaseModel)

logger = logging.getLogger(__name__)


def write_text_atomic(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file beside it and ``os.replace``;
    ``fsync`` flushes the temporary file to disk first (state a resumed job must find whole after a crash)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


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
