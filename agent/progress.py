"""Progress of a command that can run for more than a second (compile, apply, verify): one line
on stderr naming the stage (parse, validate, compile, render, apply, ...), a spinner, a bar when
the stage knows how much is left, and the time so far.

Shown only on a terminal, and only once the command has run for :data:`DELAY` seconds, so that a
quick command prints nothing more than before; the line is erased when the command is done.
Never in a pipe, with ``--json``, or in the daemon (which never makes one).  The line is drawn by
a thread, so that it moves while the command computes."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Sequence

from .console import is_terminal

DELAY = 1.0          # seconds before anything is drawn
INTERVAL = 0.1       # seconds between two drawings
SPINNER = "|/-\\"
BAR = 20             # characters of the bar


class Progress:
    """``with Progress(stages, enabled=...) as p: p.stage("compile"); ...; p.stage("probe",
    total=400); p.advance()``.  Disabled, every call does nothing."""

    def __init__(self, stages: Sequence[str], *, enabled: bool, stream: IO | None = None,
                 delay: float = DELAY) -> None:
        self.stages = list(stages)
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.delay = delay
        self._name = ""
        self._done = 0
        self._total: int | None = None
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._drawn = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stage(self, name: str, total: int | None = None) -> None:
        with self._lock:
            self._name, self._done, self._total = name, 0, total

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._done += n

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._drawn:
            self._write("\r\x1b[2K")

    # -- drawing ------------------------------------------------------------------------------
    def text(self, tick: int = 0) -> str:
        """The line as drawn at ``tick`` (without the carriage return)."""
        with self._lock:
            name, done, total = self._name, self._done, self._total
        elapsed = time.monotonic() - self._start
        where = ""
        if name in self.stages:
            where = f" [{self.stages.index(name) + 1}/{len(self.stages)}]"
        out = f"{SPINNER[tick % len(SPINNER)]} {name or 'starting'}{where}"
        if total:
            filled = min(BAR, BAR * done // total)
            out += f" [{'#' * filled}{'.' * (BAR - filled)}] {done}/{total}"
        return f"{out}  {elapsed:.1f}s"

    def _run(self) -> None:
        if self._stop.wait(self.delay):
            return
        tick = 0
        while not self._stop.is_set():
            self._write("\r\x1b[2K" + self.text(tick))
            self._drawn = True
            tick += 1
            self._stop.wait(INTERVAL)

    def _write(self, s: str) -> None:
        try:
            self.stream.write(s)
            self.stream.flush()
        except (OSError, ValueError):
            self._stop.set()


def for_command(stages: Sequence[str], *, as_json: bool = False) -> Progress:
    """The progress of a one-shot command: drawn on stderr when it is a terminal and the
    command prints no JSON."""
    return Progress(stages, enabled=not as_json and is_terminal(sys.stderr))
