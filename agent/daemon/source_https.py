"""The HTTPS source: poll one URL for this host's document with conditional GETs.

* ``If-None-Match`` with the last ETag, sent back byte for byte (an entity tag may hold any
  byte from 0x80 up, RFC 9110 ``obs-text``); a malformed ETag is not used at all. A ``304 Not
  Modified`` costs the server nothing.
* ``Authorization: Bearer <token>``, the token read from ``token_file`` before every request
  (so a rotated token is picked up without a restart).
* Server verified against ``ca_bundle`` (or the system CAs); optional client certificate.
* ``timeout`` bounds the whole request -- connect, TLS handshake, sending it, the response's
  head and body -- not each read: every network operation gets at most what is left until
  the request's deadline, so a server that trickles one byte a second cannot hold a poll.
  (Resolving the host name is left to the system's resolver and its own timeouts.)
* Redirects are not followed (a token never goes elsewhere). Failures (connection, timeout,
  5xx, 3xx, 401/403/404, ...) back off exponentially with jitter;
  ``Retry-After`` is honoured. The rules in force stay.
"""

from __future__ import annotations

import logging
import math
import re
import ssl
import threading
import time
from typing import Any, Iterable, Iterator

import httpcore
import httpx

from .. import __version__
from ..load import MAX_BYTES, DocumentCache, DocumentError
from .config import HttpsSource as HttpsConfig
from .sources import (BEAT_EVERY, Backoff, Emit, Invalid, Snapshot, Source, Unavailable,
                      Unchanged, parse_guarded)
from .state import digest

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 300.0
MAX_ETAG = 1024
# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text
_ETAG = re.compile(rb'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"')
# What a request can raise below httpx (the transport here hands httpcore's errors through).
_TIMEOUTS = (httpx.TimeoutException, httpcore.TimeoutException)
_NET_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpcore.TimeoutException,
               httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
               httpcore.ProxyError, httpcore.ConnectionNotAvailable)


class HttpsSource(Source):
    kind = "https"

    def __init__(self, cfg: HttpsConfig, emit: Emit) -> None:
        super().__init__(emit, cfg.backoff)
        self.cfg = cfg
        self.backoff = Backoff(cfg.backoff)
        self._wake = threading.Event()
        self._force = False
        self._etag: bytes | None = None
        self._last: Snapshot | None = None
        self._docs = DocumentCache()  # a members-only change is not parsed whole again
        self._client: httpx.Client | None = None
        self._deadline = _Deadline()

    @property
    def description(self) -> str:
        return self.cfg.url

    def start(self) -> None:
        self._thread(self._run, "source-https")

    def step_bound(self) -> float:
        return self.cfg.timeout + BEAT_EVERY

    def refresh(self, force: bool = False) -> None:
        """Polling keeps the document current; ``force`` (SIGHUP) fetches it now, without
        If-None-Match."""
        if force:
            self._force = True
            self._wake.set()

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    # ---------------------------------------------------------------------------------------
    def _make_client(self) -> httpx.Client:
        if self.cfg.ca_bundle is not None or self.cfg.client_cert is not None:
            ctx = ssl.create_default_context(cafile=self.cfg.ca_bundle)
            if self.cfg.client_cert is not None:
                ctx.load_cert_chain(self.cfg.client_cert, self.cfg.client_key)
        else:
            ctx = httpx.create_ssl_context(trust_env=False)
        return httpx.Client(transport=_Transport(ctx, self._deadline),
                            timeout=httpx.Timeout(self.cfg.timeout),
                            follow_redirects=False, trust_env=False,
                            headers={"User-Agent": f"sgagent/{__version__}",
                                     "Accept": "application/yaml, application/json"})

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # noqa: BLE001 - a broken client is dropped anyway
                log.debug("closing the HTTP client: %s", exc)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    delay = self._poll_once()
                except Exception as exc:  # noqa: BLE001 - reported; the next poll starts afresh
                    self._close_client()
                    self.internal_error(exc, "poll")
                    delay = self.backoff.next()
                self.stepped()
                self.wait(delay, self._wake)
                self._wake.clear()
        finally:
            self._close_client()

    def _poll_once(self) -> float:
        """One GET; returns the seconds to wait before the next."""
        force, self._force = self._force, False
        try:
            if self._client is None:
                self._client = self._make_client()
            headers: dict[str, str | bytes] = {}
            if self.cfg.token_file is not None:
                headers["Authorization"] = f"Bearer {self._token()}"
            if self._etag is not None and not force:
                headers["If-None-Match"] = self._etag
            self._deadline.start(self.cfg.timeout)
            try:
                with self._client.stream("GET", self.cfg.url, headers=headers) as resp:
                    if resp.status_code == 304:
                        self.backoff.reset()
                        self._emit(Unchanged(self.description))
                        return self.cfg.poll_interval
                    if resp.status_code != 200:
                        return self._failed(
                            f"HTTP {resp.status_code} {resp.reason_phrase}".strip(),
                            "auth" if resp.status_code in (401, 403) else "http",
                            resp.headers.get("Retry-After"))
                    chunks: list[bytes] = []
                    size = 0
                    for chunk in resp.iter_bytes():
                        chunks.append(chunk)
                        size += len(chunk)
                        if size > MAX_BYTES:
                            return self._failed(f"document over {MAX_BYTES} bytes", "protocol")
                    body = b"".join(chunks)
                    etag = _etag(resp.headers.raw)
            finally:
                self._deadline.clear()
        except _TokenError as exc:
            return self._failed(str(exc), "auth")
        except (OSError, ssl.SSLError) as exc:  # CA bundle or client cert unreadable
            self._close_client()
            return self._failed(f"{type(exc).__name__}: {exc}", "unreachable")
        except _NET_ERRORS as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, _TIMEOUTS):
                kind = "timeout"
                text = f"{text} (no complete answer within timeout {self.cfg.timeout:g}s)"
            else:
                kind = "tls" if "CERTIFICATE" in str(exc) or "SSL" in str(exc) else "unreachable"
            return self._failed(text, kind)
        self.backoff.reset()
        d = digest(body)
        if self._last is not None and d == self._last.digest:
            self._etag = etag
            self._emit(Unchanged(self.description))
            return self.cfg.poll_interval
        try:
            doc = parse_guarded(lambda: self._docs.parse_bytes(body, self.description),
                                self.description)
        except DocumentError as exc:
            # Remember the ETag: the same invalid document is not fetched and refused again
            # and again; a fixed one has a new ETag.
            self._etag = etag
            self._emit(Invalid(exc, self.description))
            return self.cfg.poll_interval
        self._etag = etag
        self._last = Snapshot(doc, body, self.description,
                              etag.decode("ascii", "backslashreplace") if etag else None)
        self._emit(self._last)
        return self.cfg.poll_interval

    def _failed(self, reason: str, kind: str, retry_after: str | None = None) -> float:
        self._emit(Unavailable(reason, self.description, kind))
        delay = self.backoff.next()
        if retry_after:
            try:
                wanted = float(retry_after)
            except ValueError:
                wanted = math.nan
            if math.isfinite(wanted):
                delay = max(delay, min(wanted, MAX_RETRY_AFTER))
        log.debug("https source: %s; next try in %.2fs", reason, delay)
        return delay

    def _token(self) -> str:
        assert self.cfg.token_file is not None
        try:
            with open(self.cfg.token_file, encoding="utf-8") as fh:
                token = fh.read(65536).strip()
        except OSError as exc:
            raise _TokenError(f"token_file {self.cfg.token_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise _TokenError(f"token_file {self.cfg.token_file}: not UTF-8 text") from None
        if not token or any(c in token for c in "\r\n") or not token.isascii() \
                or not token.isprintable():
            raise _TokenError(f"token_file {self.cfg.token_file}: empty, not one line or not "
                              "printable ASCII")
        return token


def _etag(raw_headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The response's one well-formed ETag, as sent, or None."""
    tags = [v.strip() for k, v in raw_headers if k.lower() == b"etag"]
    if len(tags) != 1:
        return None
    tag = tags[0]
    if len(tag) > MAX_ETAG or not _ETAG.fullmatch(tag):
        log.debug("https source: ignoring a malformed ETag %r", tag[:80])
        return None
    return tag


class _TokenError(Exception):
    pass


# -- a deadline for the whole request ----------------------------------------------------------
class _Deadline:
    """The end of the request in flight (monotonic seconds); one source thread uses it."""

    def __init__(self) -> None:
        self.at = math.inf

    def start(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def clear(self) -> None:
        self.at = math.inf

    def cap(self, timeout: float | None, exc: type[Exception]) -> float | None:
        """``timeout`` cut to what is left of the request's time; ``exc`` if nothing is."""
        if self.at == math.inf:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise exc("the request's deadline passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # one capped write per slice, so that a peer that does not read cannot stretch it
        view = memoryview(buffer)
        while view:
            part, view = view[:65536], view[65536:]
            self._inner.write(bytes(part), self._deadline.cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(
            ssl_context, server_hostname, self._deadline.cap(timeout, httpcore.ConnectTimeout)),
            self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, deadline: _Deadline) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_tcp(
            host, port, self._deadline.cap(timeout, httpcore.ConnectTimeout), local_address,
            socket_options), self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _Stream(self._inner.connect_unix_socket(
            path, self._deadline.cap(timeout, httpcore.ConnectTimeout), socket_options),
            self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class _Transport(httpx.BaseTransport):
    """httpx over one httpcore connection whose network operations keep the deadline."""

    def __init__(self, ssl_context: ssl.SSLContext, deadline: _Deadline) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=1,
                                             max_keepalive_connections=1, keepalive_expiry=5.0,
                                             network_backend=_Backend(deadline))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        url = request.url
        resp = self._pool.handle_request(httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                             target=url.raw_path),
            headers=request.headers.raw, content=request.stream,
            extensions=request.extensions))
        assert isinstance(resp.stream, Iterable)
        return httpx.Response(resp.status, headers=resp.headers, stream=_Body(resp.stream),
                              extensions=resp.extensions)

    def close(self) -> None:
        self._pool.close()
