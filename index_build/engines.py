"""Execution engines for passage encoding: where the shards of a build (or a re-index) are encoded.

Both engines take shards ``(key, texts)`` in corpus order and give back ``(key, vectors)`` in the
same order, ``vectors`` float32 ``[len(texts), dimension]``; the caller (the build's shard loop,
:mod:`index_build.build`) writes the shard files, so resume, the quality gate, publishing and
versions do not depend on the engine.

- ``local`` (:class:`LocalEngine`): this process, :class:`~index_build.encoding.PassageEncoder`
  shard by shard (batches spread over the cores, one thread each).
- ``ray`` (:class:`RayEngine`): a Ray Data ``map_batches`` stage over a pool of actors, each
  loading the encoder once (from the manifest's source, on the same backend, one thread) and
  encoding one whole shard per call with the same :class:`PassageEncoder`. A shard is always
  encoded whole, with the same length-sorted batches and single-threaded batch computation as
  the local engine, so the two give the same vectors (tested bit for bit on a SciFact slice).

Ray specifics: the driver (this process) reads the corpus and sends it in *windows* of shards
(``window`` shards, default four per actor): the text in flight is bounded by a window, never
the whole corpus, and results come back as soon as each shard is done (a killed job keeps every
shard recorded so far). An actor pool lives for one window, so the model is loaded once per
actor per window. ``address`` (or ``RAY_ADDRESS``) names an existing cluster; with neither a
local cluster is started, sized to ``num_cpus`` (the build's thread setting), without the
dashboard. On a cluster the encoder's model directory must be readable at the same path on
every node (a shared file system, or the builtin model from the installed package).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal, Protocol, TypeVar, get_args

import numpy as np

from retrieval.encoder import DualEncoder
from retrieval.errors import ArtifactError

from .encoding import PassageEncoder

logger = logging.getLogger(__name__)

EngineName = Literal["local", "ray"]
ENGINES: tuple[EngineName, ...] = get_args(EngineName)
K = TypeVar("K")


class EngineError(ArtifactError):
    """An engine cannot run: Ray missing or unreachable, or an actor's encoder differs from the driver's."""


class EncodingEngine(Protocol):
    """Encodes shards of passage texts; see the module docstring for the contract."""

    name: str
    #: Wall seconds spent encoding so far (for ``passages_per_s`` in the build record).
    seconds: float

    def encode_shards(self, shards: Iterable[tuple[K, list[str]]]) -> Iterator[tuple[K, np.ndarray]]:
        """``(key, vectors [len(texts), dim] float32)`` for each ``(key, texts)``, in input order."""
        ...

    def describe(self) -> dict[str, Any]:
        """Facts for the manifest's ``build`` record (engine name, workers, cluster address)."""
        ...


class LocalEngine:
    """This process: :class:`PassageEncoder` on each shard, in order."""

    name = "local"

    def __init__(self, passage_encoder: PassageEncoder) -> None:
        self.passage_encoder = passage_encoder
        self.seconds = 0.0

    def encode_shards(self, shards: Iterable[tuple[K, list[str]]]) -> Iterator[tuple[K, np.ndarray]]:
        for key, texts in shards:
            t0 = time.monotonic()
            vectors = self.passage_encoder.encode(texts)  # [len(texts), dim]
            self.seconds += time.monotonic() - t0
            yield key, vectors

    def describe(self) -> dict[str, Any]:
        return {"engine": "local", "workers": self.passage_encoder.workers}


class ShardEncoderActor:
    """The Ray Data stage: loads the encoder once per actor, encodes one whole shard per call.

    A batch is one row ``{"key": int, "texts": [str, ...]}``; the answer is
    ``{"key": [int], "rows": [int], "vectors": [bytes]}`` with the float32 vectors as raw bytes
    (exact, and independent of Arrow's tensor types for ragged shard sizes).
    """

    def __init__(self, source: str, backend: str, fingerprint: str, batch_size: int) -> None:
        import torch

        torch.set_num_threads(1)  # one core per actor, like one worker thread of the local engine
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        encoder = DualEncoder.from_pretrained(source, backend=backend, threads=1)
        if encoder.fingerprint != fingerprint:
            raise EngineError(
                f"the Ray worker loaded encoder {encoder.fingerprint[:12]} from {source}, the build uses {fingerprint[:12]} "
                "(the model directory differs on that node)"
            )
        self.encoder = PassageEncoder(encoder, batch_size, workers=1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        keys, rows, blobs = [], [], []
        for key, texts in zip(batch["key"], batch["texts"]):
            vectors = self.encoder.encode([str(t) for t in texts])  # [n, dim]
            keys.append(int(key))
            rows.append(len(vectors))
            blobs.append(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        return {"key": np.asarray(keys, dtype=np.int64), "rows": np.asarray(rows, dtype=np.int64), "vectors": np.asarray(blobs, dtype=object)}


def init_ray(address: str | None, num_cpus: int) -> dict[str, Any]:
    """Connect to the cluster at ``address`` (else ``RAY_ADDRESS``), or start a local one of ``num_cpus`` CPUs.

    Reuses a Ray already initialised in this process. Returns ``{"address", "cpus"}`` of the cluster.
    """
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise EngineError("--engine ray needs the ray package (pip install 'ray[data]')") from exc
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address is None:
            kwargs.update(num_cpus=max(1, num_cpus), include_dashboard=False)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot connect to the Ray cluster at {address}: {reason}") from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the build has its own progress bar
    context.print_on_execution_start = False
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return {"address": ray.get_runtime_context().gcs_address, "cpus": cpus}


class RayEngine:
    """A Ray Data ``map_batches`` stage over a pool of :class:`ShardEncoderActor` (see the module docstring)."""

    name = "ray"

    def __init__(
        self,
        encoder: DualEncoder,
        batch_size: int,
        address: str | None = None,
        num_cpus: int = 1,
        actors: int | None = None,
        window: int | None = None,
    ) -> None:
        cluster = init_ray(address, num_cpus)
        self.address = cluster["address"]
        self.actors = max(1, actors or cluster["cpus"])
        self.window = max(1, window or 4 * self.actors)
        self._args = {
            "source": encoder.source,
            "backend": encoder.backend.name,
            "fingerprint": encoder.fingerprint,
            "batch_size": batch_size,
        }
        self.dimension = encoder.dimension
        self.seconds = 0.0

    def describe(self) -> dict[str, Any]:
        return {"engine": "ray", "workers": self.actors, "ray_address": self.address, "ray_window_shards": self.window}

    def encode_shards(self, shards: Iterable[tuple[K, list[str]]]) -> Iterator[tuple[K, np.ndarray]]:
        iterator = iter(shards)
        while True:
            window: list[tuple[K, list[str]]] = []
            for item in iterator:
                window.append(item)
                if len(window) >= self.window:
                    break
            if not window:
                return
            yield from self._encode_window(window)

    def _encode_window(self, window: list[tuple[K, list[str]]]) -> Iterator[tuple[K, np.ndarray]]:
        """One Ray Data run over a window; yields in window order as soon as each prefix is done."""
        import ray

        t0 = time.monotonic()
        dataset = ray.data.from_items([{"key": i, "texts": list(texts)} for i, (_, texts) in enumerate(window)])
        encoded = dataset.map_batches(
            ShardEncoderActor,
            fn_constructor_kwargs=self._args,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self.actors, len(window))),
            num_cpus=1,
        )
        done: dict[int, np.ndarray] = {}
        following = 0
        try:
            for row in encoded.iter_rows():
                key = int(row["key"])
                vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(int(row["rows"]), self.dimension)
                done[key] = vectors.copy()
                while following in done:
                    self.seconds += time.monotonic() - t0
                    t0 = time.monotonic()
                    yield window[following][0], done.pop(following)
                    following += 1
        except EngineError:
            raise
        except Exception as exc:  # a failed actor surfaces as a Ray task error: one readable line
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, EngineError):
                raise EngineError(str(cause)) from exc
            lines = str(cause).strip().splitlines()
            raise EngineError(f"Ray encoding failed: {lines[-1] if lines else type(cause).__name__}") from exc
        self.seconds += time.monotonic() - t0
        if following != len(window):
            raise EngineError(f"Ray returned {following} of {len(window)} shards")


def make_engine(
    name: str,
    encoder: DualEncoder,
    batch_size: int,
    ray_address: str | None = None,
    threads: int = 1,
) -> EncodingEngine:
    """The engine ``name`` (``local`` or ``ray``) for ``encoder``; ``threads`` sizes a local Ray cluster."""
    if name == "local":
        return LocalEngine(PassageEncoder(encoder, batch_size))
    if name == "ray":
        return RayEngine(encoder, batch_size, address=ray_address, num_cpus=threads)
    raise EngineError(f"unknown engine {name!r}; expected one of {', '.join(ENGINES)}")


def encode_texts(engine: EncodingEngine, texts: list[str], shard_size: int, dimension: int) -> np.ndarray:
    """Vectors ``[len(texts), dimension]`` of ``texts``, sent to ``engine`` in shards of ``shard_size``."""
    if not texts:
        return np.empty((0, dimension), dtype=np.float32)
    shards = ((start, texts[start : start + shard_size]) for start in range(0, len(texts), shard_size))
    return np.concatenate([vectors for _, vectors in engine.encode_shards(shards)])
