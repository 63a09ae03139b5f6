"""``md2pr-serve`` / ``python -m service``: run the API with uvicorn (settings from ``MD2PR_*``)."""

from __future__ import annotations

import argparse

from retrieval.runtime import configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="md2pr-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    configure_logging()
    import uvicorn

    from retrieval.index_versions import resolve_index_dir
    from retrieval.runtime import run_main

    from .settings import Settings

    # Fail fast with one line when there is nothing to serve, before uvicorn starts.
    code = run_main(lambda: resolve_index_dir(Settings().index) and 0)
    if code:
        return code

    uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
