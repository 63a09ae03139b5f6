#!/usr/bin/env python3
"""Print the requirements of ``pyproject.toml``, one per line, for ``pip install -r``.

The Dockerfile installs the dependencies from ``pyproject.toml`` alone, before it copies the
source, so that the slow dependency layer is rebuilt only when the dependencies change and
not on every edit of the code. pyproject.toml stays the one list of dependencies.

Usage::

    requirements.py pyproject.toml            [project] dependencies
    requirements.py pyproject.toml --extra test   only the ``test`` optional dependencies
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extra: str | None = None) -> list[str]:
    """The ``[project] dependencies``, or the optional dependencies named ``extra``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    if extra is None:
        return list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"requirements.py: {pyproject} has no optional dependencies named {extra!r}")
    return list(extras[extra])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="requirements.py", description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", help="print this optional-dependency group instead")
    args = parser.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.extra)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
