"""The FastAPI search service (built on ``retrieval``).

Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``, unless the
environment says otherwise): between requests, spinning torch threads would take the cores
that the event loop and other processes need (on 2 cores, a query went from ~20 ms to
~500 ms next to a busy process). Set here because OpenMP reads it once, when torch loads,
and this package is imported before torch by both ``md2pr-serve`` and
``uvicorn service.app:create_app --factory``.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
