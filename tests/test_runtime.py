"""The entry-point helpers every job CLI's ``main`` goes through (retrieval/runtime.py)."""

from __future__ import annotations

import argparse

import pytest
import torch

from retrieval.errors import RetrievalError
from retrieval.runtime import configure_threads, run_job


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
