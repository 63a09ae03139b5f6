"""First-iteration reuse (``first_iteration_from``): hard-link sharing of another run's iteration 1
mining and annotation, and the checks that refuse a source that does not match this run."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from retrieval.encoder import DualEncoder
from retrieval.jsonio import read_json_object

from ..checkpoint import replace_dir as _replace_dir
from ..data import TrainingHeader
from ..errors import TrainingError
from .config import (
    _PATH_FIELDS,
    CONFIG_FILE,
    FIRST_ITERATION_ATTENTION_FIELDS,
    FIRST_ITERATION_FIELDS,
    FIRST_ITERATION_SEED_FIELDS,
    PHASES,
    STATE_FILE,
    DistillConfig,
)

logger = logging.getLogger(__name__)


def _link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Hard-link ``src`` at ``dst``; copy it where links fail (another filesystem, no link support).

    Sharing by hard link is safe because no phase rewrites a finished file in place: every
    writer here puts a new file in place with ``os.replace``, which leaves the other link alone.
    """
    try:
        os.link(src, dst)
    except OSError as exc:
        logger.debug("hard link %s -> %s failed (%s): copying", src, dst, exc)
        shutil.copy2(src, dst)


def share_file(src: Path, dst: Path) -> None:
    """Put ``src``'s content at ``dst`` (:func:`_link_or_copy`) atomically: a kill leaves ``dst``
    either absent (or as it was) or complete, never half copied."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _link_or_copy(src, tmp)
    os.replace(tmp, dst)
    # renaming a link over another link of the same file is a no-op that keeps the source name
    tmp.unlink(missing_ok=True)


def share_dir(src: Path, dst: Path) -> None:
    """Put a copy of the directory ``src`` at ``dst`` made of links to its files (copies where
    links fail), built beside it and moved into place whole."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # a killed writer's leftovers (``*.tmp.npz`` of the attention cache) are not part of the result
    shutil.copytree(src, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns("*.tmp", "*.tmp.*"))
    _replace_dir(tmp, dst)


def _read_header(path: Path) -> TrainingHeader:
    """Line 1 of a training file, without reading its records."""
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    try:
        return TrainingHeader.model_validate_json(first)
    except ValueError:
        raise TrainingError(f"{path}:1: not an md2pr-training header") from None


def _comparable(name: str, value: Any) -> Any:
    """A setting as compared between runs: paths resolved, sequences as lists."""
    if name in _PATH_FIELDS and isinstance(value, str) and value and not value.startswith("builtin:"):
        return str(Path(value).resolve())
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True)
class FirstIterationSource:
    """A checked ``first_iteration_from`` run: its directory and what this run takes from it."""

    directory: Path  # resolved
    state: dict[str, Any]  # its state.json
    mine_summary: dict[str, Any]  # its iteration 1 "mine" summary

    @property
    def iteration_dir(self) -> Path:
        return self.directory / "iter-01"


class FirstIterationSharing:
    """The :class:`training.distill.trainer.Distiller` methods that check and take a
    ``first_iteration_from`` run's iteration 1 (a mixin: it uses the run's config, paths and state)."""

    config: DistillConfig
    out: Path
    state: dict[str, Any]
    teacher_config: Any
    _base_fingerprint: str | None

    def _shares_pending(self) -> bool:
        """Whether iteration 1's mine or annotate phase, taken from ``first_iteration_from``, is still to do."""
        pending = self.state.get("iteration") == 1 and self.state.get("phase") in ("mine", "annotate")
        return bool(self.config.first_iteration_from) and pending

    def base_fingerprint(self) -> str:
        """The base student's fingerprint (loaded once)."""
        if self._base_fingerprint is None:
            self._base_fingerprint = DualEncoder.from_pretrained(self.config.student).fingerprint
        return self._base_fingerprint

    def first_iteration_source(self) -> FirstIterationSource:
        """Check the ``first_iteration_from`` run; raises :class:`TrainingError` (one line) when this
        run may not take its iteration 1 mining and annotation from it.

        Refused: a directory that is not a run, a run that has not finished annotating its
        iteration 1, a run whose settings in :data:`FIRST_ITERATION_FIELDS` (and the seed with
        hidden positives, the attention settings when this run uses the maps) or whose teacher or
        base student fingerprints differ, and a run without attention maps when this run needs them.
        """
        assert self.config.first_iteration_from
        directory = Path(self.config.first_iteration_from).resolve()
        where = f"--first-iteration-from {self.config.first_iteration_from}"
        if directory == self.out.resolve():
            raise TrainingError(f"{where}: that is this run's own output directory")
        if not (directory / CONFIG_FILE).is_file() or not (directory / STATE_FILE).is_file():
            raise TrainingError(f"{where}: not a distillation run directory (no {CONFIG_FILE} and {STATE_FILE})")
        try:
            record = read_json_object(directory / CONFIG_FILE, error=TrainingError)
            state = read_json_object(directory / STATE_FILE, error=TrainingError)
            theirs: dict[str, Any] = record["distill"]
            iteration, phase = int(state["iteration"]), str(state["phase"])
        except TrainingError as exc:
            raise TrainingError(f"{where}: {exc}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{where}: unreadable {CONFIG_FILE} or {STATE_FILE} ({exc!r})") from None
        annotated = iteration > 1 or phase in PHASES[PHASES.index("annotate") + 1 :] or bool(state.get("finished"))
        summary = state.get("iterations", {}).get("1", {}).get("mine")
        iteration_dir = directory / "iter-01"
        mined, annotated_file = iteration_dir / "mined.jsonl", iteration_dir / "annotated.jsonl"
        if not annotated or summary is None:
            raise TrainingError(f"{where}: that run has not finished annotating its iteration 1 "
                                f"(it is at iteration {iteration}, phase {phase})")
        if not mined.is_file() or not annotated_file.is_file():
            raise TrainingError(f"{where}: {iteration_dir} lacks mined.jsonl or annotated.jsonl")

        ours = self.config.to_dict()
        defaults = {f.name: f.default for f in fields(DistillConfig)}  # for a source saved before a setting existed
        compared = list(FIRST_ITERATION_FIELDS)
        if self.config.hide_positives > 0:
            compared += FIRST_ITERATION_SEED_FIELDS
        word = self.config.word_weight > 0
        if word:
            compared += FIRST_ITERATION_ATTENTION_FIELDS
        differ = [
            f"{name} ({ours[name]!r} here, {theirs.get(name, defaults[name])!r} there)"
            for name in compared
            if _comparable(name, ours[name]) != _comparable(name, theirs.get(name, defaults[name]))
        ]
        if differ:
            raise TrainingError(f"{where}: iteration 1 was mined or annotated with other settings: {'; '.join(differ)}")
        their_teacher = (record.get("teacher") or {}).get("fingerprint")
        our_teacher = self.teacher_config.fingerprint if self.teacher_config else None
        if their_teacher != our_teacher:
            raise TrainingError(f"{where}: its teacher has fingerprint {str(their_teacher)[:12]}, this run's "
                                f"{str(our_teacher)[:12]} (the teacher changed since)")
        mined_header, annotated_header = _read_header(mined), _read_header(annotated_file)
        their_student = mined_header.sources.get("dense", {}).get("fingerprint")
        if their_student != self.base_fingerprint():
            raise TrainingError(f"{where}: iteration 1 was mined with student {str(their_student)[:12]}, this run's base "
                                f"student is {self.base_fingerprint()[:12]} (the student changed since)")
        if (annotated_header.teacher or {}).get("fingerprint") != our_teacher:
            raise TrainingError(f"{where}: {annotated_file} was annotated by another teacher")
        if word and (not (annotated_header.teacher or {}).get("attention") or not (iteration_dir / "attention").is_dir()):
            raise TrainingError(f"{where}: that run has no teacher attention maps for iteration 1 (it ran without "
                                "word-level KD) and this one needs them (word_weight > 0)")
        return FirstIterationSource(directory, state, dict(summary))


    def _share_base_index(self, shared: FirstIterationSource) -> None:
        """Take the base student's index the source mined with: its resolved ``base_index``
        version, or links to its ``indexes/s0`` (rebuilt here, as without sharing, if it is gone)."""
        if self.config.base_index:
            if shared.state.get("base_index"):
                self.state["base_index"] = shared.state["base_index"]
            return
        source = shared.directory / "indexes" / "s0"
        if (source / "manifest.json").is_file() and not (self.index_dir(0) / "manifest.json").is_file():
            self.index_dir(0).parent.mkdir(parents=True, exist_ok=True)
            share_dir(source, self.index_dir(0))

