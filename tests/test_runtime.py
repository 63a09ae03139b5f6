"""The entry-point helpers every job CLI's ``main`` goes through (retrieval/runtime.py): threads,
user-facing errors, and logging that keeps the libraries underneath quiet unless ``-v``."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retrieval.errors import RetrievalError
from evaluation.evaluate import main as evaluate_main
from retrieval.runtime import QUIET_LIBRARY_LOGGERS, configure_threads, run_job

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    configure_threads(before)


def test_run_job_sets_threads_before_the_body_and_passes_their_count(restore_threads) -> None:
    wanted = 2 if torch.get_num_threads() == 1 else 1  # a count that differs from the current one
    seen: list[tuple[int, int]] = []

    def body(threads: int) -> int:
        seen.append((threads, torch.get_num_threads()))
        return 3

    assert run_job(argparse.Namespace(verbose=False, threads=wanted), body) == 3
    assert seen == [(wanted, wanted)]


def test_run_job_turns_a_user_mistake_into_one_error_line_and_exit_2(restore_threads, capsys) -> None:
    def body(threads: int) -> int:
        raise RetrievalError("no such dataset")

    assert run_job(argparse.Namespace(verbose=False, threads=1), body) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: no such dataset"]


# ------------------------------------------------------------------------------ quiet commands
@pytest.fixture
def restore_library_loggers():
    """Put the library loggers' levels and filters back (configure_logging changes process state)."""
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).filters)) for name in QUIET_LIBRARY_LOGGERS}
    yield
    for name, (level, filters) in saved.items():
        library = logging.getLogger(name)
        library.setLevel(level)
        library.filters[:] = filters


def _library_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The captured records below WARNING from library loggers, as ``LEVEL name: message``."""
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno < logging.WARNING and r.name.split(".")[0] in QUIET_LIBRARY_LOGGERS
    ]


@pytest.mark.parametrize("verbose", [False, True])
def test_a_command_shows_library_chatter_only_with_v(
    verbose: bool, tiny_index: Path, noveleval: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    restore_library_loggers, restore_threads,
) -> None:
    # The root level a command's own configure_logging sets outside pytest (which keeps its handlers).
    caplog.set_level(logging.DEBUG if verbose else logging.INFO)
    argv = ["--dataset", str(noveleval), "--index", str(tiny_index), "--retriever", "bm25", "--depth", "10",
            "--output", str(tmp_path / "eval.json"), "--threads", "1"]
    assert evaluate_main(argv + (["-v"] if verbose else [])) == 0
    # FAISS's loader speaks once, when faiss is first imported (long done in this process): the
    # record it logs then ("faiss.loader" at INFO) stands in for it.
    logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
    chatter = _library_records(caplog)
    ours = [r.getMessage() for r in caplog.records if r.name == "evaluate"]
    assert any("left out (at most 10 hits per query)" in m for m in ours), "the command's own lines stay"
    if verbose:
        assert "DEBUG bm25s: Building index from tokens" in chatter  # bm25s's own DEBUG line, really logged
        assert "INFO faiss.loader: Could not load library with AVX512 support" in chatter
    else:
        assert chatter == []


def _start_lines(verbose: bool) -> list[str]:
    """stderr of a fresh process that configures logging as a command does and then imports faiss."""
    code = f"from retrieval.runtime import configure_logging; configure_logging({verbose}); import faiss"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_the_faiss_loader_lines_of_a_start_show_only_with_v() -> None:
    assert not [line for line in _start_lines(False) if "faiss" in line]
    assert [line for line in _start_lines(True) if "INFO faiss.loader:" in line]
