"""What every source hands the reconcile loop, and the retry delays they share.

A source runs on its own thread(s) and calls ``emit`` with one of:

* :class:`Snapshot` -- a complete, validated host document (and the exact text to save);
* :class:`Unchanged` -- the source confirmed that the last document is still current;
* :class:`Invalid` -- the source has a document, but it fails validation (paths in ``.error``);
* :class:`Unavailable` -- the source cannot be reached or has nothing for this host.

``emit`` must be safe to call from any thread (the daemon passes ``SimpleQueue.put``).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Union

from ..load import DocumentError
from ..model import Document
from .config import Backoff as BackoffConfig
from .config import SourceConfig
from .state import digest as _digest


@dataclass(frozen=True)
class Snapshot:
    doc: Document
    raw: bytes
    origin: str
    version: str | None = None          # ETag, etcd revision, ...
    at: float = field(default_factory=time.monotonic)

    @property
    def digest(self) -> str:
        return _digest(self.raw)


@dataclass(frozen=True)
class Unchanged:
    origin: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Invalid:
    error: DocumentError
    origin: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Unavailable:
    reason: str
    origin: str
    kind: str = "unreachable"   # unreachable | missing | auth | http | protocol
    at: float = field(default_factory=time.monotonic)


SourceEvent = Union[Snapshot, Unchanged, Invalid, Unavailable]
Emit = Callable[[SourceEvent], None]


class Backoff:
    """Exponential backoff with jitter: ``min(max, initial * 2**n) * U(1 - jitter, 1)``."""

    def __init__(self, cfg: BackoffConfig, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        base = min(self.cfg.max, self.cfg.initial * (2 ** min(self.failures, 30)))
        self.failures += 1
        return base * (1.0 - self.cfg.jitter * self._rng.random())

    def reset(self) -> None:
        self.failures = 0


class Source:
    """Base class: ``start()``, ``refresh(force)``, ``stop()``."""

    kind = "?"

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def description(self) -> str:
        return self.kind

    def start(self) -> None:
        raise NotImplementedError

    def refresh(self, force: bool = False) -> None:
        """Check the source now (``force``: also re-read what looks unchanged)."""
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        t = threading.Thread(target=self._guard(target, name), name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def _guard(self, target: Callable[[], None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # a dying source thread must be visible
                import logging
                logging.getLogger(__name__).exception("source thread %s died", name)
                self._emit(Unavailable(f"source thread {name} died: {exc!r}", self.description,
                                       "protocol"))
        return run


def make_source(cfg: SourceConfig, emit: Emit) -> Source:
    if cfg.file is not None:
        from .source_file import FileSource
        return FileSource(cfg.file, emit)
    if cfg.https is not None:
        from .source_https import HttpsSource
        return HttpsSource(cfg.https, emit)
    assert cfg.etcd is not None
    from .source_etcd import EtcdSource
    return EtcdSource(cfg.etcd, emit)
