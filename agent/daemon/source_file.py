"""The file source: one host document on the local filesystem, followed with inotify.

The *directory* is watched (not the file), so that editors and tools that replace the file by
renaming a new one over it, or swap a symlink (Kubernetes ConfigMaps), are followed too. Any
change in the directory re-reads the file; a document is emitted only when its bytes changed.
A missing directory is waited for (polled once a second). A read that raises what it does not
expect is reported (kind ``internal``) and the watch goes on; see :mod:`.sources`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import watchfiles

from ..load import MAX_BYTES, DocumentCache, DocumentError
from .config import FileSource as FileConfig
from .sources import (BEAT_EVERY, Emit, Invalid, Snapshot, Source, Unavailable, Unchanged,
                      parse_guarded)
from .state import digest

log = logging.getLogger(__name__)


class FileSource(Source):
    kind = "file"

    def __init__(self, cfg: FileConfig, emit: Emit) -> None:
        super().__init__(emit)
        self.cfg = cfg
        self.path = Path(cfg.path)
        self._lock = threading.Lock()
        self._last_digest: str | None = None
        self._docs = DocumentCache()  # a members-only change is not parsed whole again
        self._last: Snapshot | Invalid | Unavailable | None = None

    @property
    def description(self) -> str:
        return f"file:{self.path}"

    def start(self) -> None:
        self.read(force=True)
        self._thread(self._watch, "source-file")

    def refresh(self, force: bool = False) -> None:
        self.read(force=force)

    def step_bound(self) -> float:
        # watchfiles hands back control at least every second, after at most the debounce
        return 1.0 + self._debounce() / 1000 + BEAT_EVERY

    # ---------------------------------------------------------------------------------------
    def read(self, force: bool = False) -> None:
        """Read the file; emit a new event if it changed (or always with ``force``)."""
        try:
            self._read(force)
        except Exception as exc:  # noqa: BLE001 - reported; the next change reads it again
            with self._lock:
                self._last_digest, self._last = None, None
            self.internal_error(exc, "read")

    def _read(self, force: bool) -> None:
        with self._lock:
            try:
                with self.path.open("rb") as fh:
                    raw = fh.read(MAX_BYTES + 1)
            except FileNotFoundError:
                self._set(None, Unavailable("no such file", self.description, "missing"), force)
                return
            except IsADirectoryError:
                self._set(None, Unavailable("is a directory, not a file", self.description,
                                            "missing"), force)
                return
            except OSError as exc:
                self._set(None, Unavailable(exc.strerror or str(exc), self.description,
                                            "unreachable"), force)
                return
            d = digest(raw)
            if d == self._last_digest and not force:
                return
            if d == self._last_digest and isinstance(self._last, Snapshot):
                self._emit(Unchanged(self.description))
                return
            try:
                doc = parse_guarded(lambda: self._docs.parse_bytes(raw, self.description),
                                    self.description)
            except DocumentError as exc:
                self._set(d, Invalid(exc, self.description), True)
                return
            self._set(d, Snapshot(doc, raw, self.description, d[:12]), True)

    def _set(self, d: str | None, event: Snapshot | Invalid | Unavailable, emit: bool) -> None:
        changed = d != self._last_digest or type(event) is not type(self._last) or (
            isinstance(event, Unavailable) and isinstance(self._last, Unavailable)
            and event.reason != self._last.reason)
        self._last_digest = d
        self._last = event
        if emit or changed:
            self._emit(event)

    def _step(self) -> int:
        return max(1, int(self.cfg.settle * 1000))

    def _debounce(self) -> int:
        return max(self._step(), 1600)

    def _watch(self) -> None:
        directory = self.path.parent
        while not self._stop.is_set():
            if not directory.is_dir():
                self.wait(1.0)
                self.read()
                self.stepped()
                continue
            # A change made before the watch was set up is seen by no event: the first time
            # the watch hands back control (a change, or a second without), read anyway.
            first = True
            try:
                for _changes in watchfiles.watch(
                        directory, watch_filter=None, debounce=self._debounce(),
                        step=self._step(), stop_event=self._stop, rust_timeout=1000,
                        yield_on_timeout=True, recursive=False,
                        force_polling=self.cfg.force_polling or None, poll_delay_ms=300,
                        raise_interrupt=False):
                    if self._stop.is_set():
                        return
                    if _changes or first:
                        self.read()
                        first = False
                    self.stepped()
                    if not _changes and not directory.is_dir():
                        break  # the directory went away: wait for it to come back
            except (FileNotFoundError, OSError, RuntimeError) as exc:
                # watchfiles raises when the directory disappears under it
                log.debug("watching %s: %s", directory, exc)
                self.wait(0.5)
                self.read()
                self.stepped()
