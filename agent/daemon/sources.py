"""What every source hands the reconcile loop, the retry delays they share, and the supervision
that keeps a source from dying silently.

A source runs on its own thread(s) and calls ``emit`` with one of:

* :class:`Snapshot` -- a complete, validated host document (and the exact text to save);
* :class:`Unchanged` -- the source confirmed that the last document is still current;
* :class:`Invalid` -- the source has a document, but it fails validation (paths in ``.error``);
* :class:`Unavailable` -- the source cannot be reached or has nothing for this host.

``emit`` must be safe to call from any thread (the daemon passes ``SimpleQueue.put``).

Supervision (:class:`Source`): every poll or watch step of a source catches what it raises and
reports it (an :class:`Unavailable` of kind ``internal``); a thread that ends anyway is logged,
reported (kind ``restarted``) and started again after a backoff. A thread shows it is alive
(:meth:`Source.beat`) after every step and at least once a second while it waits; the daemon
asks :meth:`Source.health` and stops feeding the systemd watchdog when the source makes no
progress: a thread that died more than ``MAX_RESTARTS`` times in a row without finishing a
step, or one stuck in a step far beyond what a step may take.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Union

from ..load import DocumentError
from ..model import Document
from .config import Backoff as BackoffConfig
from .state import digest as _digest

log = logging.getLogger(__name__)

BEAT_EVERY = 1.0     # seconds: a waiting source thread shows it is alive at least this often
# Seconds a step may overrun its own bound before the source counts as stuck: reading the
# largest document allowed (64 MiB) takes about 30 s on a 2-core machine, and a false alarm
# would restart the daemon into the same read again.
STALL_SLACK = 120.0
MAX_RESTARTS = 5     # a thread that dies this often in a row without finishing a step: dead


@dataclass(frozen=True)
class Snapshot:
    doc: Document
    raw: bytes
    origin: str
    version: str | None = None          # ETag, etcd revision, ...
    at: float = field(default_factory=time.monotonic)

    @cached_property
    def digest(self) -> str:
        # once per snapshot: the daemon compares it several times per event, and a hash of
        # a 30 MB document costs tens of milliseconds
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
    # unreachable | missing | auth | http | protocol | timeout | tls (the source's own),
    # internal (a step raised what its source did not expect), restarted, dead (supervision)
    kind: str = "unreachable"
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


def describe(exc: BaseException) -> str:
    """``Type: message``, the message cut to one line of at most 300 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_guarded(parse: Callable[[], Document], origin: str) -> Document:
    """``parse()``; whatever else than :class:`DocumentError` it raises refuses the document
    too (resource exhaustion on a hostile document, or a bug: logged with its traceback),
    instead of ending the source's step."""
    try:
        return parse()
    except DocumentError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise DocumentError([f"(document): too large or nested too deeply to read "
                             f"({type(exc).__name__})"], origin) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - e.g. a panic in pydantic-core
        log.error("reading the document from %s failed unexpectedly (%s); it is refused",
                  origin, describe(exc), exc_info=True)
        raise DocumentError([f"(document): cannot be read ({describe(exc)})"],
                            origin) from None


class Source:
    """Base class: ``start()``, ``refresh(force)``, ``stop()``, ``health()``."""

    kind = "?"

    def __init__(self, emit: Emit, restart_backoff: BackoffConfig | None = None) -> None:
        self._emit = emit
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._restart_backoff = restart_backoff or BackoffConfig()
        self._beat = time.monotonic()
        self._steps = 0
        self._supervised = 0
        self._dead: str | None = None
        self._last_internal: str | None = None

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

    def applied(self, snapshot: Snapshot) -> None:
        """The daemon enforces ``snapshot`` now (an etcd fleet's agent reports it)."""

    def join(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- progress -----------------------------------------------------------------------------
    def step_bound(self) -> float:
        """The longest a healthy thread of this source goes without :meth:`beat` (seconds):
        one step (a poll, a read, a wait for the next watch message) plus a wait slice."""
        return BEAT_EVERY

    def beat(self) -> None:
        """The calling source thread is alive and not stuck."""
        self._beat = time.monotonic()

    def stepped(self) -> None:
        """The calling source thread finished a step (whatever its outcome)."""
        self._steps += 1
        self._beat = time.monotonic()

    def wait(self, seconds: float, event: threading.Event | None = None) -> bool:
        """Sleep ``seconds`` (or until ``event`` or stop is set), beating at least every
        :data:`BEAT_EVERY`; True if the source is stopping."""
        end = time.monotonic() + max(0.0, seconds)
        ev = event or self._stop
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or ev.wait(min(left, BEAT_EVERY)):
                break
            self.beat()
        self.beat()
        return self._stop.is_set()

    @property
    def dead(self) -> bool:
        """A thread of this source died too often and is not restarted any more."""
        return self._dead is not None

    def health(self) -> str | None:
        """None while the source makes progress; otherwise why it does not."""
        if self._dead is not None:
            return self._dead
        if not self._supervised or self._stop.is_set():
            return None
        idle = time.monotonic() - self._beat
        if idle > self.step_bound() + STALL_SLACK:
            return f"no poll or watch step of the source finished for {idle:.0f}s"
        return None

    def internal_error(self, exc: BaseException, what: str) -> None:
        """Report a step that raised what its source did not expect (a bug, or a library's
        surprise): logged (with its traceback the first time), counted, the rules stay."""
        text = f"{what}: {describe(exc)}"
        log.error("%s: %s failed unexpectedly: %s", self.description, what, describe(exc),
                  exc_info=text != self._last_internal)
        self._last_internal = text
        self._emit(Unavailable(text, self.description, "internal"))

    # -- threads ------------------------------------------------------------------------------
    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        t = threading.Thread(target=self._supervise, args=(target, name), name=name,
                             daemon=True)
        self._threads.append(t)
        self._supervised += 1
        self.beat()
        t.start()
        return t

    def _supervise(self, target: Callable[[], None], name: str) -> None:
        """Run ``target``; if it ends before the source is stopped, start it again after a
        backoff -- unless it died :data:`MAX_RESTARTS` times in a row without finishing a step."""
        backoff = Backoff(self._restart_backoff)
        in_a_row = 0
        while True:
            steps = self._steps
            try:
                target()
                what = "ended"
                exc_info = False
            except BaseException as exc:  # noqa: BLE001 - a dying source thread must be visible
                what = f"died ({describe(exc)})"
                exc_info = True
            if self._stop.is_set():
                return
            in_a_row = 1 if self._steps != steps else in_a_row + 1
            if in_a_row > MAX_RESTARTS:
                self._dead = (f"source thread {name} {what}, {in_a_row} times in a row without "
                              "finishing a step; not restarted")
                log.critical("%s: %s", self.description, self._dead, exc_info=exc_info)
                self._emit(Unavailable(self._dead, self.description, "dead"))
                return
            delay = backoff.next()
            log.error("%s: source thread %s %s; restarting it in %.1fs", self.description, name,
                      what, delay, exc_info=exc_info)
            self._emit(Unavailable(f"source thread {name} {what}", self.description,
                                   "restarted"))
            if self.wait(delay):
                return
