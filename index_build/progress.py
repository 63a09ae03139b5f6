"""How far a build staged under an index root has got, read from outside the build process.

For whoever watches a build without taking part in it (the kill-and-resume test and
benchmark stop a build once it has recorded enough). The build itself keeps its state in a
:class:`~index_build.shards.ShardStore`.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.index import BUILD_DIR
from retrieval.index_versions import STAGING_DIR

from .shards import STATE_FILE, BuildState


def recorded_passages(index_root: Path) -> int:
    """Passages in the finished shards of the build staged under ``index_root`` (0 when there is none yet).

    Reads ``<index_root>/staging/<name>/_build/state.json`` (:class:`~index_build.shards.BuildState`);
    with several staged builds, the first by name. A state file that does not parse counts as 0.
    """
    for state in sorted((Path(index_root) / STAGING_DIR).glob(f"*/{BUILD_DIR}/{STATE_FILE}")):
        try:
            return BuildState.model_validate_json(state.read_text()).rows_done
        except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
            return 0
    return 0
