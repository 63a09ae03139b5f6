"""Seeds of the query-tower distillation variants on SciFact: full test split and unseen-positive subset.

Each variant is a ``md2pr-distill`` configuration (:data:`CORE` plus the variant's settings:
:data:`VARIANTS`) trained on SciFact ``train:fit``, selected on ``train:dev`` (epoch 0, the base,
included), then evaluated on the test split: dense alone (the student's query vectors against the
base index's frozen passage vectors, exact search) and the no-training hybrid's recipe with the
student (z(BM25) + z(dense), 1:1, each side's top 100). Every figure twice: all 300 test queries
and the 104 whose positives are none of the train positives
(:func:`retrieval.metrics.unseen_positive_queries`).

Runs live in ``--runs-root/<variant>-s<seed>``; a finished run (``report.json`` and its test
evaluation ``test.json``) is skipped, a killed one resumed, so the script can run in chunks
under the shared lock::

    flock /tmp/heavy.lock timeout 840 .venv/bin/python benchmarks/distill_seeds.py \\
        --base-index artifacts/experiments/scifact-cpu/indexes/base \\
        --teacher artifacts/experiments/scifact-cpu/teacher/model --variants supervised kd --seeds 0 1 2

Variants with a teacher take iteration 1's mining and annotation (the slow part) from the first
run that has it (``first_iteration_from``); seeds then cost training only. Writes
``benchmarks/results/scifact-distill-seeds.json`` (each run, and mean ± sd per variant).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.service_common import command_line, machine_facts  # noqa: E402

logger = logging.getLogger("distill_seeds")

#: The strong core (the calibration recipe of issue 14): query tower against the whole corpus,
#: 16 queries a step, lr 3e-5 with 10% warm-up and linear decay, tau 0.05, queries cut at 64
#: tokens, 6 epochs, one iteration; candidates for KD: union of BM25 and dense top 30.
CORE: dict[str, Any] = {
    "split": "train", "train_tower": "query", "iterations": 1, "epochs": 6, "queries_per_batch": 16,
    "accumulation_steps": 1, "lr": 3e-5, "warmup": 0.1, "tau": 0.05, "query_length": 64, "mining_depth": 30,
    "negative_depth": 30, "contrastive_weight": 1.0, "word_weight": 0.0, "select": "best", "select_on": "dev",
    "save_every": 50, "dev_depth": 100, "encode_batch_size": 64, "teacher_batch_size": 32, "device": "cpu",
}
#: Variant -> settings over CORE. ``teacher: True`` means the run reads the teacher.
VARIANTS: dict[str, dict[str, Any]] = {
    "supervised": {"teacher": False, "sentence_weight": 0.0, "filter_mode": "none"},
    "kd": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none"},
    "kd-ce": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none", "kd_score": "cross_encoder"},
    "kd-filter": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "dynamic"},
    # the dynamic filter as MD2PR runs it: 2 iterations, the second re-mined (BM25 + the iteration-1
    # student) and re-scored, the threshold recomputed (the gap rule: benchmarks/filter_check.py)
    "kd-filter2": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "dynamic", "iterations": 2, "mine_bm25": "always"},
    # MarginMSE over every pair of the list instead of the listwise KL (issue 14: "KL, or MarginMSE if it measures better")
    "kd-mmse": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none", "kd_loss": "margin_mse"},
    "kd-mmse-w0.3": {"teacher": True, "sentence_weight": 0.3, "filter_mode": "none", "kd_loss": "margin_mse"},
    "kd-mmse-e12": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none", "kd_loss": "margin_mse", "epochs": 12},
    # training length: the KL at 12 and 20 epochs, and the 12-epoch core without a teacher (controls for kd-mmse-e12)
    "kd-e12": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none", "epochs": 12},
    "kd-e20": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none", "epochs": 20},
    "supervised-e12": {"teacher": False, "sentence_weight": 0.0, "filter_mode": "none", "epochs": 12},
    "kd-mmse-w3": {"teacher": True, "sentence_weight": 3.0, "filter_mode": "none", "kd_loss": "margin_mse"},
    "kd-t2": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none", "kd_teacher_temperature": 2.0},
    "kd-w3": {"teacher": True, "sentence_weight": 3.0, "filter_mode": "none"},
    # the dev sweep of the core's lr and tau (selection by train:dev only)
    "supervised-lr6e-5": {"teacher": False, "sentence_weight": 0.0, "filter_mode": "none", "lr": 6e-5},
    "supervised-tau0.02": {"teacher": False, "sentence_weight": 0.0, "filter_mode": "none", "tau": 0.02},
    # 500 passage titles as queries labelled with their own passage (no teacher): every passage can be a positive
    "supervised-titles": {"teacher": False, "sentence_weight": 0.0, "filter_mode": "none", "title_queries": 500},
    # GPL-style: 500 passage titles of the corpus as pseudo-queries, labelled by the teacher
    "kd-titles": {"teacher": True, "sentence_weight": 1.0, "filter_mode": "none",
                  "unlabelled_queries": ["corpus-titles"], "max_unlabelled": 500},
}
MEASURES = ("nDCG@10", "MRR@10", "R@100")


def run_settings(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    settings = {**CORE, **{k: v for k, v in VARIANTS[variant].items() if k != "teacher"}}
    settings.update(dataset=str(args.dataset), base_index=str(args.base_index), seed=seed,
                    teacher=str(args.teacher) if VARIANTS[variant]["teacher"] else "")
    return settings


def _mining_key(variant: str) -> tuple[Any, ...]:
    v = VARIANTS[variant]
    return v["teacher"], tuple(v.get("unlabelled_queries", ())), v.get("max_unlabelled"), v.get("title_queries", 0)


def teacher_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` with a teacher-annotated file: a new run's score cache
    (``score_cache_from``; pairs of the same teacher and dataset are not scored again)."""
    found = []
    for directory in sorted(p for p in root.glob("*") if (p / "config.json").is_file()):
        teacher = json.loads((directory / "config.json").read_text()).get("teacher") or {}
        if teacher.get("fingerprint") and any(directory.glob("iter-*/annotated.jsonl")):
            found.append(directory)
    return found


def shared_source(variant: str, runs: dict[str, Path]) -> Path | None:
    """An earlier run whose iteration 1 this one can take: same teacher use and the same queries
    (the mining and annotation do not depend on the seed or the loss settings)."""
    for name, directory in runs.items():
        other = name.rsplit("-s", 1)[0]
        state = directory / "state.json"
        if _mining_key(other) == _mining_key(variant) and state.is_file():
            s = json.loads(state.read_text())
            if s.get("iteration", 1) > 1 or s.get("phase") not in ("mine", "annotate") or s.get("finished"):
                return directory
    return None


def evaluate_student(model_dir: Path, args: argparse.Namespace, cache: dict[str, Any]) -> dict[str, Any]:
    """Test figures of a query encoder over the base bank: dense and hybrid, full and unseen subset."""
    from retrieval.datasets import load_dataset
    from retrieval.encoder import DualEncoder
    from retrieval.fusion import FusionConfig, fuse
    from retrieval.metrics import DEFAULT_MEASURES, evaluate_run, subset, unseen_positive_queries
    from training.distill.bank import PassageBank, bank_run

    if "test" not in cache:
        cache["test"] = load_dataset(args.dataset, "test")
        cache["unseen"] = unseen_positive_queries(cache["test"].qrels, load_dataset(args.dataset, "train").qrels)
        cache["bank"] = PassageBank.from_index(_index_dir(args.base_index))
        from retrieval.bm25 import BM25Config, BM25Index

        # unstemmed, as every run in the table was measured (before stemming became BM25Config's default)
        bm25 = BM25Index.build(cache["test"].iter_corpus(), BM25Config(stemmer=None), show_progress=False)
        qids = list(cache["test"].queries)
        hits = bm25.search([cache["test"].queries[q] for q in qids], 100)
        cache["bm25"] = {q: h for q, h in zip(qids, hits)}
    test, unseen, bank = cache["test"], cache["unseen"], cache["bank"]
    measures = {name: DEFAULT_MEASURES[name] for name in MEASURES}
    encoder = DualEncoder.from_pretrained(model_dir)
    dense = bank_run(encoder, bank, test.queries, 1000)
    fusion = FusionConfig()
    hybrid = {}
    for q, docs in dense.items():
        ranked = sorted(docs.items(), key=lambda x: -x[1])
        hybrid[q] = {h.docid: h.score for h in fuse(ranked, cache["bm25"][q], fusion, 100)}
    out: dict[str, Any] = {"queries": len(test.qrels), "unseen_queries": len(unseen), "fusion": fusion.to_dict()}
    for name, run in (("dense", dense), ("hybrid", hybrid)):
        out[name] = {"full": evaluate_run(test.qrels, run, measures), "unseen": evaluate_run(subset(test.qrels, unseen), run, measures)}
    return out


def _index_dir(path: Path) -> Path:
    from retrieval.index_versions import resolve_index_dir

    return resolve_index_dir(path)


def _mean_sd(values: list[float]) -> dict[str, float | None]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}


def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd (over seeds) of every figure, per variant."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for name, run in runs.items():
        if run.get("test"):
            by_variant.setdefault(name.rsplit("-s", 1)[0], []).append(run)
    summary: dict[str, Any] = {}
    for variant, items in by_variant.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in items]}
        for system in ("dense", "hybrid"):
            for part in ("full", "unseen"):
                for m in MEASURES:
                    values = [r["test"][system][part][m] for r in items]
                    entry[f"{system}/{part}/{m}"] = _mean_sd(values)
        entry["dev_nDCG@10"] = statistics.fmean(r["selected_dev"]["nDCG@10"] for r in items if r.get("selected_dev"))
        if all(r.get("test_iterations") for r in items):  # dense nDCG@10 of each iteration's student
            entry["iterations"] = {
                t: {part: _mean_sd([r["test_iterations"][t][part]["nDCG@10"] for r in items]) for part in ("full", "unseen")}
                for t in items[0]["test_iterations"]}
            entry["selected_iterations"] = [r["selected_iteration"] for r in items]
        entry["selected_epochs"] = [r["selected_epoch"] for r in items]
        summary[variant] = entry
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=PROJECT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--base-index", type=Path, required=True, help="the base student's Flat index of the corpus (root or version)")
    parser.add_argument("--teacher", type=Path, help="cross-encoder directory (variants with a teacher)")
    parser.add_argument("--variants", nargs="+", default=["supervised", "kd"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-root", type=Path, default=PROJECT / "artifacts" / "distill-seeds")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "scifact-distill-seeds.json")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from training.distill import DistillConfig, distill

    if any(VARIANTS[v]["teacher"] for v in args.variants) and not args.teacher:
        print("error: --teacher is needed by the variants with a teacher", file=sys.stderr)
        return 2
    report: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}
    runs: dict[str, dict[str, Any]] = report.get("runs", {})
    cache: dict[str, Any] = {}
    run_dirs = {name: Path(r["run_dir"]) for name, r in runs.items()}
    base_entry = report.get("base")
    commands = [c for c in report.get("commands", [report["command"]] if "command" in report else []) if c != command_line(argv)]
    commands.append(command_line(argv))  # every invocation that added runs (each runs some variants and seeds)
    for variant in args.variants:
        for seed in args.seeds:
            name = f"{variant}-s{seed}"
            out = args.runs_root / name
            run_dirs.setdefault(name, out)
            settings = run_settings(variant, seed, args)
            if name in runs and runs[name].get("test") and runs[name]["settings"] == settings:
                continue
            source = shared_source(variant, {k: v for k, v in run_dirs.items() if k != name})
            if (out / "config.json").is_file():
                settings_run = json.loads((out / "config.json").read_text())["distill"]
            else:
                settings_run = dict(settings)
                if source is not None:
                    settings_run["first_iteration_from"] = str(source)
                if VARIANTS[variant]["teacher"]:  # teacher time only for pairs no earlier run scored
                    settings_run["score_cache_from"] = [str(d) for d in teacher_runs(args.runs_root) if d != out]
            started = time.monotonic()
            logger.info("run %s (iteration 1 from %s)", name, settings_run.get("first_iteration_from"))
            result = distill(DistillConfig.from_dict(settings_run), out, resume=(out / "state.json").is_file(), show_progress=True)
            if not result.get("finished"):
                return 3
            chosen = result["selected_iteration"]
            iteration = next((i for i in result["iterations"] if i["iteration"] == chosen), None)
            train = (result["iterations"][0].get("train") or {})
            runs[name] = {
                "variant": variant, "seed": seed, "run_dir": str(out), "settings": settings,
                "teacher_fingerprint": teacher_fingerprint(out),
                "first_iteration_from": settings_run.get("first_iteration_from"),
                "selected_iteration": chosen, "selected_epoch": train.get("selected_epoch"),
                "selected_dev": iteration["dev"] if iteration else result["base_dev"],
                "selected_dev_unseen": iteration.get("dev_unseen") if iteration else result.get("base_dev_unseen"),
                "epochs": train.get("epochs"), "train_seconds": (result["iterations"][0].get("seconds") or {}).get("train"),
                "seconds": round(time.monotonic() - started, 1),
                "test": evaluate_student(out / "model", args, cache),
            }
            if len(result["iterations"]) > 1:  # each iteration's student too: what the later iterations added
                runs[name]["test_iterations"] = {
                    str(i["iteration"]): evaluate_student(Path(i["student"]["dir"]), args, cache)["dense"]
                    for i in result["iterations"]}
            if base_entry is None:
                base_entry = {"encoder": CORE.get("student", "builtin:all-MiniLM-L6-v2"),
                              "test": evaluate_student(Path(_base_model_dir()), args, cache)}
            report = {
                "kind": "distill-seeds", "dataset": str(args.dataset), "command": command_line(argv),
                "commands": commands,
                "machine": {**machine_facts(args.threads), "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
                "core": CORE, "variants": {v: VARIANTS[v] for v in sorted({r["variant"] for r in runs.values()})},
                "base": base_entry, "base_dev": result["base_dev"], "base_dev_unseen": result.get("base_dev_unseen"),
                "runs": runs, "summary": summarise(runs),
            }
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n")
            logger.info("%s: test dense %s / unseen %s", name, runs[name]["test"]["dense"]["full"]["nDCG@10"],
                        runs[name]["test"]["dense"]["unseen"]["nDCG@10"])
    return 0


def teacher_fingerprint(run_dir: Path) -> str | None:
    """The fingerprint of the teacher a finished run read (from its ``config.json``), None without one."""
    teacher = json.loads((run_dir / "config.json").read_text()).get("teacher") or {}
    return teacher.get("fingerprint") or None


def _base_model_dir() -> str:
    from retrieval.encoder import DualEncoder

    return str(DualEncoder.from_pretrained("builtin:all-MiniLM-L6-v2").model_dir)


if __name__ == "__main__":
    raise SystemExit(main())
