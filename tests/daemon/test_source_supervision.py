"""Sources cannot die silently (issue 9, item 4), in-process: every poll or watch step reports
what it raises and goes on; a source thread that ends is restarted with backoff, or declared
dead after too many deaths in a row; a thread stuck in a step shows in ``health()``; the HTTPS
timeout bounds the whole request; an ETag is echoed byte for byte, a malformed one not at all.
The daemon-level consequences (documents applied, watchdog pings stopping) are in
test_source_faults.py."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sgagent.daemon import source_file, source_https, sources
from sgagent.daemon.config import Backoff as BackoffConfig
from sgagent.daemon.config import FileSource as FileConfig
from sgagent.daemon.config import HttpsSource as HttpsConfig
from sgagent.daemon.sources import Invalid, Snapshot, Source, Unavailable, Unchanged

from .support import TrickleServer, document, dump, wait_until, write_atomic

FAST = BackoffConfig(initial=0.05, max=0.1)


class Events:
    """What a source emitted, in order (``emit`` is thread-safe: list.append)."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, ev: Any) -> None:
        self.items.append(ev)

    def of(self, kind: type) -> list[Any]:
        return [e for e in list(self.items) if isinstance(e, kind)]

    def wait(self, pred, what: str, timeout: float = 10.0) -> Any:
        return wait_until(lambda: next((e for e in list(self.items) if pred(e)), None),
                          timeout, what=what)


# -- supervision --------------------------------------------------------------------------------
class Scripted(Source):
    """A source whose thread runs ``script`` steps: "raise", "end", "step" (emit Unchanged and
    finish a step), "hang" (block without beating)."""

    kind = "scripted"

    def __init__(self, emit, script: list[str]) -> None:
        super().__init__(emit, FAST)
        self.script = list(script)
        self.release = threading.Event()

    def start(self) -> None:
        self._thread(self._run, "source-scripted")

    def refresh(self, force: bool = False) -> None:
        pass

    def _run(self) -> None:
        while not self._stop.is_set():
            what = self.script.pop(0) if self.script else "step"
            if what == "raise":
                raise RuntimeError("injected")
            if what == "end":
                return
            if what == "hang":
                self.release.wait()
                continue
            self._emit(Unchanged(self.description))
            self.stepped()
            self.wait(0.05)


def test_a_source_thread_that_dies_is_restarted_and_goes_on(caplog):
    ev = Events()
    src = Scripted(ev, ["raise", "end", "step"])
    src.start()
    try:
        ev.wait(lambda e: isinstance(e, Unchanged), "a step after two restarts")
        restarted = [e for e in ev.of(Unavailable) if e.kind == "restarted"]
        assert [e.reason for e in restarted] == [
            "source thread source-scripted died (RuntimeError: injected)",
            "source thread source-scripted ended"]
        assert src.health() is None and not src.dead
        assert "restarting it in" in caplog.text
    finally:
        src.stop()
        src.join()


def test_a_source_thread_that_keeps_dying_is_declared_dead():
    ev = Events()
    src = Scripted(ev, ["raise"] * 20)
    src.start()
    try:
        dead = ev.wait(lambda e: isinstance(e, Unavailable) and e.kind == "dead",
                       "the source declared dead")
        assert f"{sources.MAX_RESTARTS + 1} times in a row" in dead.reason
        assert src.dead and src.health() == dead.reason
        assert len([e for e in ev.of(Unavailable) if e.kind == "restarted"]) == \
            sources.MAX_RESTARTS
    finally:
        src.stop()
        src.join()


def test_dying_after_progress_is_not_counted_in_a_row():
    # raise, step, raise, step, ...: it always made progress in between: never dead
    ev = Events()
    src = Scripted(ev, ["raise", "step"] * (sources.MAX_RESTARTS + 2))
    src.start()
    try:
        wait_until(lambda: len([e for e in ev.of(Unavailable) if e.kind == "restarted"])
                   > sources.MAX_RESTARTS + 1, 10, what="many restarts")
        assert not src.dead and not [e for e in ev.of(Unavailable) if e.kind == "dead"]
    finally:
        src.stop()
        src.join()


def test_a_source_thread_stuck_in_a_step_shows_in_health(monkeypatch):
    monkeypatch.setattr(sources, "STALL_SLACK", 0.3)
    src = Scripted(Events(), ["step", "hang"])
    src.start()
    try:
        assert src.health() is None
        problem = wait_until(src.health, 10, what="the stall to show")
        assert problem.startswith("no poll or watch step of the source finished for")
        src.release.set()  # it gets going again: healthy again
        wait_until(lambda: src.health() is None, 10, what="health back")
    finally:
        src.release.set()
        src.stop()
        src.join()


# -- the file source ------------------------------------------------------------------------------
def test_file_source_reports_an_unexpected_error_and_reads_the_next_change(tmp_path: Path,
                                                                           monkeypatch):
    path = tmp_path / "host.yaml"
    path.write_text(dump(document([8080])))
    real = source_file.digest
    calls = {"n": 0}

    def flaky(raw: bytes) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected")
        return real(raw)

    monkeypatch.setattr(source_file, "digest", flaky)
    ev = Events()
    src = source_file.FileSource(FileConfig(path=str(path), settle=0.01), ev)
    src.start()  # the first read raises: reported, not raised
    try:
        bad = ev.wait(lambda e: isinstance(e, Unavailable), "the error reported")
        assert bad.kind == "internal" and bad.reason == "read: RuntimeError: injected"
        write_atomic(path, dump(document([9090])))
        snap = ev.wait(lambda e: isinstance(e, Snapshot), "the next document", 15)
        assert b"9090" in snap.raw
        assert src.health() is None
    finally:
        src.stop()
        src.join()


# -- the HTTPS source -----------------------------------------------------------------------------
class EtagServer:
    """Plain HTTP: serves ``body`` with the ETag header line ``etag`` (raw bytes, or None for
    none); 304 when If-None-Match is those very bytes. Records the raw If-None-Match."""

    def __init__(self) -> None:
        self.body = b""
        self.etag: bytes | list[bytes] | None = None
        self.inm: list[bytes | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                got = self.headers.get("If-None-Match")
                raw = got.encode("latin-1") if got is not None else None
                server.inm.append(raw)
                tags = server.etag if isinstance(server.etag, list) else \
                    [server.etag] if server.etag is not None else []
                if raw is not None and tags and raw == tags[0]:
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                for t in tags:  # latin-1: the very bytes go out, whatever they are
                    self.send_header("ETag", t.decode("latin-1"))
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/doc"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def etag_server():
    s = EtagServer()
    try:
        yield s
    finally:
        s.stop()


def https(url: str, **kw: Any) -> HttpsConfig:
    return HttpsConfig(url=url, allow_http=True, timeout=2, poll_interval=0.1, backoff=FAST, **kw)


def test_a_non_ascii_etag_is_echoed_byte_for_byte_and_the_next_document_applies(etag_server):
    etag_server.body = dump(document([8080])).encode()
    etag_server.etag = '"v1-été"'.encode()
    ev = Events()
    src = source_https.HttpsSource(https(etag_server.url), ev)
    src.start()
    try:
        ev.wait(lambda e: isinstance(e, Snapshot), "the first document")
        wait_until(lambda: len(ev.of(Unchanged)) >= 2, 10, what="conditional GETs answered 304")
        assert etag_server.inm[0] is None
        assert set(etag_server.inm[1:]) == {'"v1-été"'.encode()}
        etag_server.body = dump(document([9090])).encode()
        etag_server.etag = 'W/"v2-ü"'.encode()
        snaps = wait_until(lambda: len(ev.of(Snapshot)) >= 2 and ev.of(Snapshot), 10,
                           what="the second document")
        assert b"9090" in snaps[1].raw
        assert not [e for e in ev.of(Unavailable)], ev.of(Unavailable)
        assert src.health() is None
    finally:
        src.stop()
        src.join()


@pytest.mark.parametrize("etag", [b'"a\x01b"', b'"' + b"x" * 2000 + b'"', b"no-quotes",
                                  [b'"one"', b'"two"']],
                         ids=["control-byte", "too-long", "unquoted", "two-etags"])
def test_a_malformed_etag_is_not_used(etag_server, etag):
    etag_server.body = dump(document([8080])).encode()
    etag_server.etag = etag
    ev = Events()
    src = source_https.HttpsSource(https(etag_server.url), ev)
    src.start()
    try:
        ev.wait(lambda e: isinstance(e, Snapshot), "the document")
        wait_until(lambda: len(etag_server.inm) >= 3, 10, what="more polls")
        assert etag_server.inm[:3] == [None, None, None]  # unconditional GETs, no error
        assert not ev.of(Unavailable) and ev.of(Unchanged)
    finally:
        src.stop()
        src.join()


def test_an_unexpected_error_in_a_poll_is_reported_and_polling_goes_on(etag_server,
                                                                       monkeypatch):
    etag_server.body = dump(document([8080])).encode()
    real = source_https.digest
    calls = {"n": 0}

    def flaky(raw: bytes) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("injected")
        return real(raw)

    monkeypatch.setattr(source_https, "digest", flaky)
    ev = Events()
    src = source_https.HttpsSource(https(etag_server.url), ev)
    src.start()
    try:
        snap = ev.wait(lambda e: isinstance(e, Snapshot), "the document after the error")
        bad = ev.of(Unavailable)
        assert [(e.kind, e.reason) for e in bad] == [("internal", "poll: ValueError: injected")]
        assert ev.items.index(bad[0]) < ev.items.index(snap)
    finally:
        src.stop()
        src.join()


@pytest.mark.parametrize("mode", ["head", "body"])
def test_the_https_timeout_bounds_the_whole_request(mode):
    """One byte a second never trips a per-read timeout; the request's deadline does."""
    server = TrickleServer(mode, interval=0.5)
    ev = Events()
    timeout = 2.0
    src = source_https.HttpsSource(
        HttpsConfig(url=server.url, allow_http=True, timeout=timeout, poll_interval=60,
                    backoff=BackoffConfig(initial=60, max=60)), ev)
    try:
        t0 = time.monotonic()
        src.start()
        down = ev.wait(lambda e: isinstance(e, Unavailable), "the poll to fail",
                       timeout + 15)
        took = time.monotonic() - t0
        assert down.kind == "timeout", down
        assert "within timeout 2s" in down.reason
        # bounded by the timeout, not by the server: generous slack, but far from the
        # 100,000 seconds the server would take
        assert took < timeout + 2.0, took
        closed = wait_until(server.closed_after, 5, what="the client to close the connection")
        assert closed[0] < timeout + 2.0, closed
        assert src.health() is None
    finally:
        src.stop()
        src.join()
        server.stop()


def test_an_invalid_document_is_refused_not_raised(etag_server):
    etag_server.body = b"version: 1\nhost: [\n"
    ev = Events()
    src = source_https.HttpsSource(https(etag_server.url), ev)
    src.start()
    try:
        bad = ev.wait(lambda e: isinstance(e, Invalid), "the refusal")
        assert "not valid YAML" in bad.error.errors[0]
        assert not ev.of(Unavailable)
    finally:
        src.stop()
        src.join()
