"""The HTTPS source: poll one URL for this host's document with conditional GETs.

* ``If-None-Match`` with the last ETag; a ``304 Not Modified`` costs the server nothing.
* ``Authorization: Bearer <token>``, the token read from ``token_file`` before every request
  (so a rotated token is picked up without a restart).
* Server verified against ``ca_bundle`` (or the system CAs); optional client certificate.
* Redirects are not followed (a token never goes elsewhere). Failures (connection, timeout,
  5xx, 3xx, 401/403/404, ...) back off exponentially with jitter;
  ``Retry-After`` is honoured. The rules in force stay.
"""

from __future__ import annotations

import logging
import ssl
import threading

import httpx

from .. import __version__
from ..load import MAX_BYTES, DocumentCache, DocumentError
from .config import HttpsSource as HttpsConfig
from .sources import Backoff, Emit, Invalid, Snapshot, Source, Unavailable, Unchanged
from .state import digest

log = logging.getLogger(__name__)
MAX_RETRY_AFTER = 300.0


class HttpsSource(Source):
    kind = "https"

    def __init__(self, cfg: HttpsConfig, emit: Emit) -> None:
        super().__init__(emit)
        self.cfg = cfg
        self.backoff = Backoff(cfg.backoff)
        self._wake = threading.Event()
        self._force = False
        self._etag: str | None = None
        self._last: Snapshot | None = None
        self._docs = DocumentCache()  # a members-only change is not parsed whole again
        self._client: httpx.Client | None = None

    @property
    def description(self) -> str:
        return self.cfg.url

    def start(self) -> None:
        self._thread(self._run, "source-https")

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
        verify: ssl.SSLContext | bool = True
        if self.cfg.ca_bundle is not None or self.cfg.client_cert is not None:
            ctx = ssl.create_default_context(cafile=self.cfg.ca_bundle)
            if self.cfg.client_cert is not None:
                ctx.load_cert_chain(self.cfg.client_cert, self.cfg.client_key)
            verify = ctx
        return httpx.Client(verify=verify, timeout=httpx.Timeout(self.cfg.timeout),
                            follow_redirects=False, trust_env=False,
                            headers={"User-Agent": f"sgagent/{__version__}",
                                     "Accept": "application/yaml, application/json"})

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                delay = self._poll_once()
                self._wake.wait(delay)
                self._wake.clear()
        finally:
            if self._client is not None:
                self._client.close()

    def _poll_once(self) -> float:
        """One GET; returns the seconds to wait before the next."""
        force, self._force = self._force, False
        try:
            if self._client is None:
                self._client = self._make_client()
            headers = {}
            if self.cfg.token_file is not None:
                headers["Authorization"] = f"Bearer {self._token()}"
            if self._etag is not None and not force:
                headers["If-None-Match"] = self._etag
            with self._client.stream("GET", self.cfg.url, headers=headers) as resp:
                if resp.status_code == 304:
                    self.backoff.reset()
                    self._emit(Unchanged(self.description))
                    return self.cfg.poll_interval
                if resp.status_code != 200:
                    return self._failed(f"HTTP {resp.status_code} {resp.reason_phrase}".strip(),
                                        "auth" if resp.status_code in (401, 403) else "http",
                                        resp.headers.get("Retry-After"))
                body = b""
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        return self._failed(f"document over {MAX_BYTES} bytes", "protocol")
                etag = resp.headers.get("ETag")
        except _TokenError as exc:
            return self._failed(str(exc), "auth")
        except (OSError, ssl.SSLError) as exc:  # CA bundle or client cert unreadable
            self._client = None
            return self._failed(f"{type(exc).__name__}: {exc}", "unreachable")
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            kind = ("timeout" if isinstance(exc, httpx.TimeoutException)
                    else "tls" if "CERTIFICATE" in str(exc) or "SSL" in str(exc)
                    else "unreachable")
            return self._failed(text, kind)
        self.backoff.reset()
        d = digest(body)
        if self._last is not None and d == self._last.digest:
            self._etag = etag
            self._emit(Unchanged(self.description))
            return self.cfg.poll_interval
        try:
            doc = self._docs.parse_bytes(body, self.description)
        except DocumentError as exc:
            # Remember the ETag: the same invalid document is not fetched and refused again
            # and again; a fixed one has a new ETag.
            self._etag = etag
            self._emit(Invalid(exc, self.description))
            return self.cfg.poll_interval
        self._etag = etag
        self._last = Snapshot(doc, body, self.description, etag)
        self._emit(self._last)
        return self.cfg.poll_interval

    def _failed(self, reason: str, kind: str, retry_after: str | None = None) -> float:
        self._emit(Unavailable(reason, self.description, kind))
        delay = self.backoff.next()
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
            except ValueError:
                pass
        log.debug("https source: %s; next try in %.2fs", reason, delay)
        return delay

    def _token(self) -> str:
        assert self.cfg.token_file is not None
        try:
            with open(self.cfg.token_file, encoding="utf-8") as fh:
                token = fh.read(65536).strip()
        except OSError as exc:
            raise _TokenError(f"token_file {self.cfg.token_file}: {exc.strerror or exc}") from None
        if not token or any(c in token for c in "\r\n"):
            raise _TokenError(f"token_file {self.cfg.token_file}: empty or not one line")
        return token


class _TokenError(Exception):
    pass

