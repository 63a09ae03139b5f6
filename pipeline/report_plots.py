"""The experiment report's figures (matplotlib, Agg backend): training curves, dev nDCG@10 and
negatives flagged per iteration, test nDCG@10 by system.

:func:`write_plots` draws those whose data exists as ``<out_dir>/<prefix>-<name>.png`` (one per
name in :data:`PLOTS`); :func:`plot_curves` draws one distillation run's loss terms and dev metric.
The report they read is :func:`pipeline.report.collect`'s.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from pathlib import Path

from retrieval.jsonio import read_jsonl

#: Loss terms of a distillation run's ``log.jsonl`` (training.losses.MD2PRLoss).
TERMS = ("loss", "contrastive", "sentence_kd", "word_kd")
#: Plots written by :func:`write_plots`, as ``<prefix>-<name>.png``.
PLOTS = ("curves", "dev-ndcg", "false-negatives", "ablation")


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display; safe in jobs and tests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(name: str, log: list[dict], iterations: list[dict], base_dev: dict | None, output: Path) -> bool:
    """One PNG: each loss term per optimizer step (iterations end-to-end), dev nDCG@10 per iteration.

    ``log``: a run's ``log.jsonl`` lines; ``iterations``: its iteration records; ``base_dev``:
    the base student's dev metrics (iteration 0). Returns False (nothing written) without log lines.
    """
    terms = [t for t in TERMS if any(t in x for x in log)]
    if not terms:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(terms) + 1, figsize=(4 * (len(terms) + 1), 3.2))
    steps = list(range(1, len(log) + 1))
    # dotted lines where one iteration's training ends and the next one's begins
    boundaries = [i + 0.5 for i in range(1, len(log)) if log[i].get("iteration") != log[i - 1].get("iteration")]
    for ax, term in zip(axes, terms):
        values = [x.get(term) for x in log]
        ax.plot(steps, [math.nan if v is None else v for v in values], linewidth=0.6, alpha=0.5)
        window = max(1, len(values) // 30)
        smooth = []
        for i in range(len(values)):
            recent = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
            smooth.append(sum(recent) / len(recent) if recent else math.nan)
        ax.plot(steps, smooth, linewidth=1.5)
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(term)
        ax.set_xlabel("step (all iterations)")
    ax = axes[-1]
    xs = [0] + [it.get("iteration") for it in iterations]
    ys = [(base_dev or {}).get("nDCG@10")] + [(it.get("dev") or {}).get("nDCG@10") for it in iterations]
    ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o")
    ax.set_title("dev nDCG@10")
    ax.set_xlabel("iteration (0 = base student)")
    fig.suptitle(name)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return True


def plot_links(paths: Iterable[Path], prefix: str, base: Path) -> dict[str, str]:
    """``{plot name: path relative to base}`` for the files :func:`write_plots` returned."""
    out = {}
    for path in paths:
        name = path.stem[len(prefix) + 1 :] if path.stem.startswith(prefix + "-") else path.stem
        try:
            out[name] = Path(path).resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:  # outside base: an absolute path still links on this machine
            out[name] = str(Path(path).resolve())
    return out


def write_plots(report: dict, run_root: Path, out_dir: Path, prefix: str) -> list[Path]:
    """Draw the report's figures as ``out_dir/<prefix>-<name>.png`` (names: :data:`PLOTS`); returns the files.

    ``curves``: each loss term per step of the main variant's lowest seed (its ``log.jsonl``);
    ``dev-ndcg``: dev nDCG@10 per iteration of every variant and seed; ``false-negatives``: the
    negatives the filter flagged per iteration; ``ablation``: test nDCG@10 of every row (mean
    with sample std as error bars; published references hatched). A plot without data is skipped.
    """
    out_dir = Path(out_dir)
    written: list[Path] = []
    runs = [r for r in (report.get("runs") or {}).values()]
    main = report.get("main_variant")
    main_runs = sorted((r for r in runs if r["variant"] == main), key=lambda r: r["seed"])
    if main_runs:
        run = main_runs[0]
        log = read_jsonl(Path(run_root) / "students" / f"{main}-s{run['seed']}" / "log.jsonl")
        path = out_dir / f"{prefix}-curves.png"
        if plot_curves(f"{main} (seed {run['seed']}): {run['ablation']}", log, run["iterations"], run.get("base_dev"), path):
            written.append(path)
    for name, key, title in (("dev-ndcg", "dev", "dev nDCG@10 per iteration"),
                             ("false-negatives", "flagged", "suspected false negatives removed per iteration (flagged by the filter)")):
        path = out_dir / f"{prefix}-{name}.png"
        if _plot_iterations(runs, report.get("variants") or {}, key, title, path):
            written.append(path)
    path = out_dir / f"{prefix}-ablation.png"
    if _plot_ablation(report.get("rows") or [], path):
        written.append(path)
    return written


def _plot_iterations(runs: list[dict], variants: dict, key: str, title: str, output: Path) -> bool:
    """One line per run: a per-iteration number (dev nDCG@10 from iteration 0, or flagged negatives)."""
    lines = []
    for run in runs:
        if key == "dev":
            xs = [0] + [it["iteration"] for it in run["iterations"]]
            ys = [(run.get("base_dev") or {}).get("nDCG@10")] + [(it.get("dev") or {}).get("nDCG@10") for it in run["iterations"]]
        else:
            xs = [it["iteration"] for it in run["iterations"]]
            ys = [it.get("flagged") for it in run["iterations"]]
        if any(y is not None for y in ys[1 if key == "dev" else 0 :]):
            lines.append((run, xs, [math.nan if y is None else y for y in ys]))
    if not lines:
        return False
    plt = _pyplot()
    order = list(variants) or sorted({r["variant"] for r, _, _ in lines})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for run, xs, ys in lines:
        index = order.index(run["variant"]) if run["variant"] in order else len(order)
        styles = ("-", "--", ":", "-.")
        ax.plot(xs, ys, marker="o", color=colours[index % len(colours)], linestyle=styles[run["seed"] % len(styles)],
                label=f"{run['variant']} s{run['seed']}")
    ax.set_xlabel("iteration" + (" (0 = base student)" if key == "dev" else ""))
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return True


def _plot_ablation(rows: list[dict], output: Path) -> bool:
    """Horizontal bars of test nDCG@10: measured rows with std error bars, published rows hatched in grey."""
    rows = [r for r in rows if "nDCG@10" in r.get("metrics", {})]
    if not any(r["kind"] == "measured" for r in rows):
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.2))
    ys = list(range(len(rows)))[::-1]  # first row on top
    for y, row in zip(ys, rows):
        published = row["kind"] == "published"
        value = row["metrics"]["nDCG@10"]
        err = (row.get("std") or {}).get("nDCG@10")
        ax.barh(y, value, xerr=err, capsize=3,
                color="lightgrey" if published else ("tab:orange" if row.get("main") else "tab:blue"),
                hatch="//" if published else None, edgecolor="grey" if published else None)
        ax.text(value + (err or 0) + 0.005, y, f"{value:.3f}", va="center", fontsize=7)
    labels = [f"{r['system']} (published)" if r["kind"] == "published" else
              (f"{r['system']} [n={r['n_seeds']}]" if r.get("group") == "variant" else r["system"]) for r in rows]
    ax.set_yticks(ys)
    ax.set_yticklabels([textwrap.fill(label, 45) for label in labels], fontsize=7)
    ax.set_xlim(0, max(r["metrics"]["nDCG@10"] + ((r.get("std") or {}).get("nDCG@10") or 0) for r in rows) * 1.12)
    ax.set_xlabel("test nDCG@10 (mean over seeds; error bars: sample std)")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return True
