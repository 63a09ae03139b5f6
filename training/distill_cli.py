"""``md2pr-distill``: distil the cross-encoder teacher into the dual-encoder student (MD2PR).

Example (the CPU configuration, SciFact)::

    md2pr-distill --preset cpu --dataset ../shared/data/scifact \\
        --teacher artifacts/teacher/minilm-cpu/model --output-dir artifacts/students/md2pr-cpu

Settings come from the preset (``training/configs/<preset>.json``) or ``--config FILE``, then
from flags: every field of :class:`training.distill.DistillConfig` has one (``--word-weight
0.2``, ``--iterations 2``, ...). Ablations: ``--no-word-kd``, ``--no-sentence-kd``,
``--no-filter``, ``--static-threshold [VALUE]`` (without a value: the first iteration's floor,
frozen). ``--unlabelled-queries dl21 dl22`` (a TREC DL dataset's topic sets) adds their unjudged
queries, trained on the teacher's labels; ``--max-unlabelled N`` caps them. ``--resume`` continues a killed run with its saved settings. ``--train-tower query``
trains the query encoder only, against the base index's frozen passage vectors (the whole corpus is
every query's negatives; the published index stays valid; the model directory's ``pairing.json``
names the passage encoder it pairs with); ``--train-tower both`` (default) trains the shared
encoder. ``--first-iteration-from
DIR`` takes iteration 1's mining and teacher annotation from the run in ``DIR`` (hard links, no
recomputation) when it mined and annotated them with the same settings: ablation runs share the
slow annotation. The distilled student is ``OUTPUT_DIR/model``, a dual-encoder directory for
``md2pr-build-index --encoder``.
"""

from __future__ import annotations

import argparse
import logging
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from retrieval.jsonio import read_json_object
from retrieval.runtime import run_job

from .distill import CONFIG_FILE, DistillConfig, distill
from .errors import TrainingError

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Fields with a dedicated flag below instead of the generic one.
_SPECIAL = {"static_threshold", "first_iteration_from"}


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _flag(kind: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a :class:`DistillConfig` field of type ``kind`` (a resolved type
    from :func:`typing.get_type_hints`, never the annotation's string): a tuple takes one or more
    values, ``X | None`` is read as ``X``, a bool as true/false. The default is always ``None``, so
    a flag left out keeps the preset's, the config file's or the saved run's value.

    Not ``transformers.HfArgumentParser``: it gives every flag its dataclass default (a preset's
    value could not be told from an untouched flag), requires the fields without one (``dataset``,
    ``teacher``) even with ``--config``, and adds flags of its own (``--no_<bool>``, ``--x_y``)."""
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return {"nargs": "+", "type": item, "metavar": "N" if item is int else "NAME"}
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        return {"type": _bool, "metavar": "BOOL"}
    return {"type": kind, "metavar": {int: "N", float: "X"}.get(kind)}


def presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="md2pr-distill", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, required=True, help="run directory (the student lands in OUTPUT_DIR/model)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=presets(), help="a shipped configuration (training/configs/NAME.json)")
    source.add_argument("--config", type=Path, help="a JSON configuration file (keys: DistillConfig fields)")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUTPUT_DIR with its saved settings")
    parser.add_argument(
        "--first-iteration-from", metavar="DIR", default=None,
        help="take iteration 1's mined negatives, teacher scores and attention maps from the distillation run in DIR "
             "(hard links, copies across filesystems) instead of computing them; refused unless DIR has finished "
             "annotating its iteration 1 with the same data, teacher, student and mining settings "
             "(training.distill.FIRST_ITERATION_FIELDS) and, with word-level KD, has attention maps",
    )
    settings = parser.add_argument_group("settings (override the preset or config file)")
    types_of = typing.get_type_hints(DistillConfig)
    for field in fields(DistillConfig):
        if field.name not in _SPECIAL:
            settings.add_argument("--" + field.name.replace("_", "-"), default=None, **_flag(types_of[field.name]))
    ablation = parser.add_argument_group("ablations")
    ablation.add_argument("--no-word-kd", action="store_true", help="word_weight = 0")
    ablation.add_argument("--no-sentence-kd", action="store_true", help="sentence_weight = 0")
    ablation.add_argument("--no-filter", action="store_true", help="filter_mode = none (train on every mined negative)")
    ablation.add_argument(
        "--static-threshold", nargs="?", const="frozen", default=None, metavar="VALUE",
        help="filter_mode = static: one threshold for every query and iteration (VALUE, or iteration 1's floor)",
    )
    ablation.add_argument("--relabel-false-negatives", action="store_true", help="filter_action = positive")
    parser.add_argument("--threads", type=int, default=None, help="torch and FAISS threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.no_filter and args.static_threshold is not None:
        parser.error("--no-filter and --static-threshold exclude each other")
    if args.static_threshold not in (None, "frozen"):
        try:
            float(args.static_threshold)
        except ValueError:
            parser.error(f"--static-threshold takes a number, not {args.static_threshold!r}")
    return args


def _load_json(path: Path) -> dict[str, Any]:
    """A configuration file's JSON object; a missing or malformed file is one ``TrainingError`` line."""
    return read_json_object(path, error=TrainingError, missing="configuration file not found")


def config_from_args(args: argparse.Namespace) -> DistillConfig:
    """Defaults <- preset / config file (or, with --resume, the run's saved settings) <- flags."""
    saved = args.output_dir / CONFIG_FILE
    if args.resume and saved.is_file() and not (args.preset or args.config):
        values = dict(_load_json(saved)["distill"])
    elif args.config:
        values = _load_json(args.config)
    else:
        values = _load_json(CONFIG_DIR / f"{args.preset or 'cpu'}.json")
    for field in fields(DistillConfig):
        given = getattr(args, field.name, None) if field.name not in _SPECIAL else None
        if given is not None:
            values[field.name] = given
    if args.no_word_kd:
        values["word_weight"] = 0.0
    if args.no_sentence_kd:
        values["sentence_weight"] = 0.0
    if args.no_filter:
        values["filter_mode"] = "none"
    if args.static_threshold is not None:
        values["filter_mode"] = "static"
        values["static_threshold"] = None if args.static_threshold == "frozen" else float(args.static_threshold)
    if args.relabel_false_negatives:
        values["filter_action"] = "positive"
    if args.first_iteration_from is not None:
        values["first_iteration_from"] = args.first_iteration_from
    if not values.get("dataset"):
        raise TrainingError("no dataset given (--dataset DIR)")
    return DistillConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 user error, 3 stopped before the end)."""
    args = parse_args(argv)

    def body(_threads: int) -> int:
        config = config_from_args(args)
        report = distill(config, args.output_dir, resume=args.resume, show_progress=not args.no_progress)
        if not report.get("finished"):
            return 3
        best = next((i for i in report["iterations"] if i["iteration"] == report["selected_iteration"]), {"dev": report["base_dev"]})
        logger.info("student saved to %s (iteration %d%s; dev %s; base student dev %s)",
                    report["model"], report["selected_iteration"], ": the base student" if report["selected_iteration"] == 0 else "",
                    best.get("dev"), report["base_dev"])
        return 0

    return run_job(args, body)


if __name__ == "__main__":
    raise SystemExit(main())
