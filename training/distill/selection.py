"""Model selection on dev: which epoch of an iteration, and which iteration of a run, is kept.

The base student (iteration 0, epoch 0 of iteration 1) always takes part, so a run never ships a
model worse on dev than the one it started from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def selection_score(dev: Mapping[str, float] | None, dev_unseen: Mapping[str, float] | None, select_on: str) -> float:
    """The figure model selection maximises: dev nDCG@10 (``"dev"``), that of the dev queries whose
    positives are unseen in the fitting queries (``"dev-unseen"``), or their mean (``"dev-mean"``).
    Falls back to the full dev figure when the subset is empty."""
    if dev is None:
        return float("-inf")
    full = float(dev["nDCG@10"])
    if select_on == "dev" or dev_unseen is None:
        return full
    unseen = float(dev_unseen["nDCG@10"])
    return unseen if select_on == "dev-unseen" else (full + unseen) / 2


def select_iteration(base: Mapping[str, Any] | None, iterations: Sequence[Mapping[str, Any]], select: str, select_on: str) -> Mapping[str, Any]:
    """The iteration to ship: each entry has ``iteration``, ``dev`` and ``dev_unseen`` (measures or
    ``None``). ``select="last"`` takes the last iteration; ``"best"`` the highest
    :func:`selection_score` among ``base`` (iteration 0, when measured) and ``iterations``, a tie
    going to the later one. Without dev measures for every iteration, the last one."""
    if not iterations:
        raise ValueError("no iteration to select from")
    if select != "best" or not all(d.get("dev") for d in iterations):
        return iterations[-1]
    candidates = [base, *iterations] if base is not None and base.get("dev") else list(iterations)
    return max(candidates, key=lambda d: (selection_score(d["dev"], d.get("dev_unseen"), select_on), d["iteration"]))
