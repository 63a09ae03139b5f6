"""kill -9 in the middle of a SciFact build, the same command again, and a comparison with an uninterrupted build.

Runs ``md2pr-build-index`` (the default encoder unless ``--encoder``) on SciFact in a child
process, sends SIGKILL once ``--kill-after`` passages are recorded in finished shards, runs the
identical command again (it resumes), builds the same corpus uninterrupted into another root,
and compares the two published versions byte for byte (``index.faiss``, ``docids.txt``) and
row for row (the passage store).

Run: ``python benchmarks/index_resume.py`` -> ``benchmarks/results/index-resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from index_families import machine  # noqa: E402

from index_build.progress import recorded_passages  # noqa: E402
from retrieval.index_versions import resolve_index_dir  # noqa: E402
from retrieval.paths import BUILTIN_MODEL, data_dir  # noqa: E402


def rows(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT * FROM passages ORDER BY row_id").fetchall()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=data_dir() / "scifact")
    parser.add_argument("--passages", type=int, default=None, help="only the first N passages of a .jsonl corpus (default: all)")
    parser.add_argument("--encoder", default=BUILTIN_MODEL)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--kill-after", type=int, default=1024, help="passages in finished shards before the kill")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "index-resume.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="resume-"))
    if args.passages:
        source = args.corpus / "corpus.jsonl" if args.corpus.is_dir() else args.corpus
        args.corpus = work / f"{args.corpus.stem}-{args.passages}.jsonl"
        with source.open(encoding="utf-8") as lines:
            args.corpus.write_text("".join(line for _, line in zip(range(args.passages), lines)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}

    def command(root: Path) -> list[str]:
        cmd = ["md2pr-build-index", "--corpus", str(args.corpus), "--index-root", str(root), "--encoder", args.encoder,
               "--shard-size", str(args.shard_size), "--no-progress"]
        return cmd + (["--threads", str(args.threads)] if args.threads else [])

    def run(root: Path) -> float:
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "index_build", *command(root)[1:]], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        return time.monotonic() - t0

    try:
        killed = work / "killed"
        t0 = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "index_build", *command(killed)[1:]], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while recorded_passages(killed) < args.kill_after:
            if process.poll() is not None:
                raise SystemExit("the build ended before it could be killed")
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        first_s = time.monotonic() - t0
        at_kill = recorded_passages(killed)
        resume_s = run(killed)
        whole = work / "whole"
        whole_s = run(whole)
        a, b = resolve_index_dir(killed), resolve_index_dir(whole)
        ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
        report = {
            "kind": "index_resume",
            "command": " ".join(command(Path("ROOT"))),
            "script": "python benchmarks/index_resume.py" + (f" --passages {args.passages}" if args.passages else "")
            + (f" --kill-after {args.kill_after} --shard-size {args.shard_size}"),
            "machine": {**machine(), "threads": args.threads or os.cpu_count()},
            "passages": ma["count"],
            "killed_with": "SIGKILL",
            "killed_after_s": round(first_s, 1),
            "passages_in_finished_shards_at_kill": at_kill,
            "resumed_run": {"seconds": round(resume_s, 1), "reused": ma["build"]["reused"], "encoded": ma["build"]["encoded"]},
            "uninterrupted_run": {"seconds": round(whole_s, 1), "encoded": mb["build"]["encoded"]},
            "identical": {
                "index.faiss": (a / "index.faiss").read_bytes() == (b / "index.faiss").read_bytes(),
                "docids.txt": (a / "docids.txt").read_bytes() == (b / "docids.txt").read_bytes(),
                "passages.sqlite rows": rows(a / "passages.sqlite") == rows(b / "passages.sqlite"),
                "manifest files": ma["files"] == mb["files"],
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(report["identical"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
