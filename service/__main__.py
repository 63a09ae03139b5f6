"""``md2pr-serve`` / ``python -m service``: run the API with uvicorn (settings from ``MD2PR_*``)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

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

    # Fail fast with one line on a bad setting or when there is nothing to serve, before uvicorn starts.
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MD2PR_" + "_".join(str(x) for x in first["loc"]).upper()
        print(f"error: {name}: {first['msg']}", file=sys.stderr)
        return 2
    code = run_main(lambda: resolve_index_dir(settings.index) and 0)
    if code:
        return code

    # The app writes its own access line (JSON, with request id and latency): no second one from uvicorn.
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        server_header=False,  # no "server: uvicorn" advertised on every answer
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
