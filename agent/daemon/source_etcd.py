"""The etcd v3 source: a fleet's definitions in etcd, each host assembling its own document.

Key layout (``prefix`` defaults to ``/sgagent``)::

    <prefix>/groups/<group>   one security group: the mapping that would sit under
                              security_groups.<group> in a host document (YAML or JSON)
    <prefix>/hosts/<host>     one host's binding: the mapping that would sit under host:
                              (instance, account, network, ordering, nics with their
                              security_groups and addresses, failsafe, defaults)
    <prefix>/endpoints/<host> a registered agent's live NIC addresses, on its lease
                              (:mod:`sgagent.fleet.registration`)
    <prefix>/status/<host>    what a registered agent last applied (not read here)

A group is written once for the whole fleet; every host whose NICs are bound to it (or whose
groups reference it as a peer) picks up a change to it. A host's document is assembled from
its binding plus the groups it needs (those bound to its NICs, and transitively the groups
their rules name as peers), then validated as a whole; an error in a group that this host does
not use does not affect it.  Each group's members are its listed ``members`` plus the addresses
of every VPC or intranet NIC, on any host, bound to it: those its binding lists and those its
agent registered (SEMANTICS section 10, :mod:`sgagent.fleet.assemble`).  So every agent
follows every binding and registration; a change that moves only members reaches the kernel
as a members-only change (the element fast path).

Consistency: the first read takes the bindings, the groups and the registrations at one
revision R; one watch then streams every change after R, over the key range from
``endpoints/`` to the end of ``hosts/`` (``groups/`` and ``<prefix>/fleet`` lie between,
``status/`` after it): the events of one transaction come in one answer of one stream, so a
push is never assembled half. The state held is always
that of one revision. On a reconnect the watches resume from the revision after the last one
applied (``start_revision``), so nothing is missed across an etcd restart. If etcd compacted
that revision away (``compact_revision`` in the watch answer), or the cluster was replaced
(another cluster id, or a revision behind ours), everything is read again and the watches
restart from the new revision.

Requests go through etcd3gw's client (the gRPC gateway's JSON API, ``/v3/...``); the watch
stream is read here, because etcd3gw's ``Watcher`` neither reports compaction nor the end of a
stream.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import socket
import threading
import time
from typing import Any, Iterator
from urllib.parse import urlsplit

from etcd3gw.client import Etcd3Client

from ..fleet.assemble import (contributions, document_json, host_document, members_by_group,
                              needed_groups)
from ..load import DocumentCache, DocumentError, format_loc, parse_data, parse_text
from .config import EtcdSource as EtcdConfig
from .sources import (BEAT_EVERY, Backoff, Emit, Invalid, Snapshot, Source, Unavailable,
                      Unchanged)
from .state import digest

log = logging.getLogger(__name__)

SETTLE = 0.005  # seconds to let a burst of changes gather (applied as one)
MAX_VALUE = 4 * 1024 * 1024


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return b.decode()


class _Stream:
    """One watch (key or range) on its own thread, reconnecting from its last revision."""

    def __init__(self, src: "EtcdSource", gen: int, name: str, key: str,
                 range_end: str | None, start_revision: int) -> None:
        self.src, self.gen, self.name = src, gen, name
        self.key, self.range_end = key, range_end
        self.revision = start_revision   # next revision this stream wants
        self._stopped = threading.Event()
        self._resp: Any = None
        self.thread = threading.Thread(target=self._run, name=f"etcd-watch-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stopped.set()
        _abort(self._resp)

    def stopped(self) -> bool:
        return self._stopped.is_set() or self.src._stop.is_set()

    def _post(self, *msg: Any) -> None:
        self.src._inbox.put((self.gen, msg))

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the sync thread starts the watches again
            log.error("etcd watch %s died: %s", self.name, _reason(exc), exc_info=True)
            self._post("died", self.name, _reason(exc))

    def _loop(self) -> None:
        backoff = Backoff(self.src.cfg.backoff)
        while not self.stopped():
            try:
                self._watch_once(backoff)
            except _Compacted as exc:
                self._post("compacted", self.name, exc.revision)
                return
            except Exception as exc:  # noqa: BLE001 - every failure means: reconnect
                if self.stopped():
                    return
                if _is_read_timeout(exc):
                    log.debug("etcd watch %s silent for %ss; re-created", self.name,
                              self.src.cfg.watch_timeout)
                    continue
                self.src._rotate()
                self._post("down", self.name, _reason(exc))
                self._stopped.wait(backoff.next())
            finally:
                _abort(self._resp)
                self._resp = None

    def _watch_once(self, backoff: Backoff) -> None:
        client = self.src._client()
        create: dict[str, Any] = {"key": _b64(self.key), "start_revision": self.revision,
                                  "progress_notify": True}
        if self.range_end is not None:
            create["range_end"] = _b64(self.range_end)
        resp = client.session.post(client.get_url("/watch"), json={"create_request": create},
                                   stream=True,
                                   timeout=(self.src.cfg.timeout, self.src.cfg.watch_timeout))
        self._resp = resp
        if self.stopped():
            return
        if resp.status_code != 200:
            raise _WatchError(f"watch: HTTP {resp.status_code} {resp.text[:200]}")
        for msg in _messages(resp):
            if self.stopped():
                return
            if "error" in msg:
                err = msg["error"]
                raise _WatchError(f"watch: {err.get('message', err) if isinstance(err, dict) else err}")
            result = msg.get("result") or {}
            header = result.get("header") or {}
            if result.get("compact_revision") not in (None, "0", 0):
                raise _Compacted(int(result["compact_revision"]))
            if result.get("canceled"):
                raise _WatchError(f"watch canceled: {result.get('cancel_reason') or 'no reason'}")
            if result.get("created"):
                backoff.reset()
                self._post("up", self.name, int(header.get("revision", 0)),
                           header.get("cluster_id"), self.revision)
                continue
            events = result.get("events")
            if events:
                last = max(int(e["kv"].get("mod_revision", 0)) for e in events)
                self.revision = max(self.revision, last + 1)
                self._post("events", self.name, events, last)
            elif header.get("revision"):  # progress notification: nothing for us up to here
                rev = int(header["revision"])
                self.revision = max(self.revision, rev + 1)
                self._post("progress", self.name, rev)
        raise _WatchError("watch stream closed by the server")


class EtcdSource(Source):
    kind = "etcd"

    def __init__(self, cfg: EtcdConfig, emit: Emit, netns: str | None = None) -> None:
        super().__init__(emit, cfg.backoff)
        self.cfg = cfg
        self.netns = netns
        self.host = cfg.host_name
        self.hosts_prefix = f"{cfg.prefix}/hosts/"
        self.host_key = f"{self.hosts_prefix}{self.host}"
        self.groups_prefix = f"{cfg.prefix}/groups/"
        self.endpoints_prefix = f"{cfg.prefix}/endpoints/"
        # every other host's binding and every registration (their members); own binding
        # in _host_value
        self._bindings: dict[str, bytes] = {}
        self._endpoints: dict[str, bytes] = {}
        self._contrib: dict[str, tuple[bytes | None, bytes | None, dict[str, Any]]] = {}
        self.registration: Any = None
        self.backoff = Backoff(cfg.backoff)
        self._inbox: "queue.SimpleQueue[tuple[int, tuple[Any, ...]]]" = queue.SimpleQueue()
        self._endpoint = 0
        self._api_path: str | None = None
        self._lock = threading.Lock()
        self._gen = 0
        self._streams: list[_Stream] = []
        self._down: dict[str, str] = {}
        self.revision = 0
        self.cluster_id: str | None = None
        self.full_reads = 0
        self._host_value: bytes | None = None
        self._groups: dict[str, bytes] = {}
        # per group key: its value, what it reads as and the errors reading it gave (a group's
        # key is read again only when its value changed; the data is never changed after)
        self._read: dict[str, tuple[bytes, Any, tuple[str, ...]]] = {}
        self._last_digest: str | None = None
        self._docs = DocumentCache()  # a members-only change is not parsed whole again
        self._last_kind: str | None = None
        self._unavailable = False
        self._resumed: dict[str, int] = {}
        self._need_read, self._force_publish = True, True
        self._sync_client: Etcd3Client | None = None

    @property
    def description(self) -> str:
        return f"etcd:{self.host_key}"

    def start(self) -> None:
        if self.cfg.registers:
            from ..fleet.addresses import AddressWatch
            from ..fleet.registration import Registration
            self.registration = Registration(self._client, self.cfg.prefix, self.host,
                                             self.cfg.lease_ttl, AddressWatch(self.netns),
                                             self._registration_report, self._restart_backoff)
            self.registration.start()
        self._thread(self._run, "source-etcd")

    def _registration_report(self, kind: str, reason: str) -> None:
        """The registration's failures, reported as the source's own (its module says which),
        and their end: the source is current again, unless it is down itself."""
        if kind != "recovered":
            self._emit(Unavailable(reason, self.description, kind))
        elif not self._unavailable and not self._down:
            self._emit(Unchanged(self.description))

    def health(self) -> str | None:
        problem = super().health()
        if problem is None and self.registration is not None:
            problem = self.registration.health()
        return problem

    @property
    def dead(self) -> bool:
        return super().dead or (self.registration is not None and self.registration.dead)

    def applied(self, snapshot: Snapshot) -> None:
        if self.registration is not None and snapshot.version is not None:
            self.registration.applied(int(snapshot.version), snapshot.digest)

    def refresh(self, force: bool = False) -> None:
        """The watch keeps the state current; ``force`` (SIGHUP) reads everything again."""
        if force:
            self._inbox.put((-1, ("refresh",)))

    def stop(self) -> None:
        super().stop()
        for s in self._streams:
            s.stop()
        self._inbox.put((-1, ("stop",)))
        if self.registration is not None:
            self.registration.stop()

    # -- clients ------------------------------------------------------------------------------
    def _client(self) -> Etcd3Client:
        with self._lock:
            url = urlsplit(self.cfg.endpoints[self._endpoint % len(self.cfg.endpoints)])
            api_path = self._api_path
        client = Etcd3Client(host=url.hostname or "127.0.0.1", port=url.port or 2379,
                             protocol=url.scheme, ca_cert=self.cfg.ca_cert,
                             cert_key=self.cfg.client_key, cert_cert=self.cfg.client_cert,
                             timeout=self.cfg.timeout, api_path=api_path)
        client.session.trust_env = False  # never through an HTTP proxy from the environment
        if api_path is None:
            path = client.api_path  # discovery (GET /version)
            with self._lock:
                self._api_path = path
        return client

    def _rotate(self) -> None:
        with self._lock:
            if len(self.cfg.endpoints) > 1:
                self._endpoint += 1
                self._api_path = None

    # -- the sync thread ----------------------------------------------------------------------
    def step_bound(self) -> float:
        # a full read: version discovery and two ranges, each within ``timeout``
        return 3 * self.cfg.timeout + BEAT_EVERY

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._sync_step():
                    break
            except Exception as exc:  # noqa: BLE001 - reported; everything is read again
                self._sync_client = None
                self._need_read = True
                self._unavailable = True
                self.internal_error(exc, "sync")
                self.wait(self.backoff.next())
            self.stepped()
        for s in self._streams:
            s.stop()

    def _sync_step(self) -> bool:
        """A full read if one is needed, then one message from the watches (or a second
        without any); True to stop."""
        if self._need_read:
            try:
                self._sync_client = self._sync_client or self._client()
                self._full_read(self._sync_client)
            except Exception as exc:  # noqa: BLE001
                self._sync_client = None
                self._rotate()
                self._report_down(f"read: {_reason(exc)}")
                self.wait(self.backoff.next())
                return False
            self.backoff.reset()
            self._need_read = False
            self._start_streams()
            self._publish(self._force_publish)
            self._force_publish = False
        try:
            gen, msg = self._inbox.get(timeout=BEAT_EVERY)
        except queue.Empty:
            return False
        kind = msg[0]
        if kind == "stop":
            return True
        if kind == "refresh":
            self._need_read = self._force_publish = True
            return False
        if gen != self._gen:
            return False  # from a stream of an earlier read
        if kind == "compacted":
            log.warning("etcd compacted revision %d away (its history now starts at %d, we "
                        "were at %d): reading everything again", self.revision + 1, msg[2],
                        self.revision)
            self._need_read = True
        elif kind == "died":
            self._report_down(f"watch {msg[1]} died: {msg[2]}")
            self._need_read = True
        elif kind == "down":
            self._down[msg[1]] = msg[2]
            self._report_down(f"watch: {msg[2]}")
        elif kind == "up":
            _, name, store_rev, cluster, start = msg
            if (self.cluster_id and cluster and cluster != self.cluster_id) or \
                    store_rev + 1 < start:
                log.warning("etcd was replaced (cluster %s revision %d, we are at %d): "
                            "reading everything again", cluster, store_rev, self.revision)
                self._need_read = True
                return False
            self._resumed[name] = start
            self._down.pop(name, None)
            if not self._down and self._unavailable:
                self._unavailable = False
                # Each watch resumes after the last revision it delivered (a quiet binding's
                # watch may be far behind the groups'); the state held is that of
                # self.revision, which only moves forward (see _advance).
                log.info("etcd watch resumed at revision %d", self.revision)
                log.debug("etcd watches resumed from revisions %s", ", ".join(
                    f"{n} {r}" for n, r in sorted(self._resumed.items())))
                self._emit(Unchanged(self.description))
        elif kind == "progress":
            self._advance(msg[2])
        elif kind == "events":
            self._apply(msg[2], msg[3])
            # a burst of changes (several writes in a row) is assembled once
            deadline = time.monotonic() + SETTLE
            while True:
                try:
                    gen2, msg2 = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if gen2 == self._gen and msg2[0] == "events":
                    self._apply(msg2[2], msg2[3])
                else:
                    self._inbox.put((gen2, msg2))  # handle it in the main loop
                    break
            self._publish(False)
        return False

    def _advance(self, revision: int) -> None:
        """The state now includes every change up to ``revision``: never backwards."""
        self.revision = max(self.revision, revision)

    def _report_down(self, reason: str) -> None:
        self._unavailable = True
        self._emit(Unavailable(reason, self.description, "unreachable"))

    def _full_read(self, client: Etcd3Client) -> None:
        r = client.post(client.get_url("/kv/range"), json={
            "key": _b64(self.hosts_prefix), "range_end": _b64(_prefix_end(self.hosts_prefix))})
        header = r.get("header") or {}
        rev = int(header.get("revision", 0))
        bindings = _by_name(r, self.hosts_prefix)
        host_value = bindings.pop(self.host, None)
        groups, endpoints = (_by_name(client.post(client.get_url("/kv/range"), json={
            "key": _b64(p), "range_end": _b64(_prefix_end(p)), "revision": rev}), p)
            for p in (self.groups_prefix, self.endpoints_prefix))
        cluster = header.get("cluster_id") or self.cluster_id
        if rev < self.revision:
            log.warning("etcd is at revision %d, behind the %d we had read (cluster %s%s): "
                        "following it from there", rev, self.revision, cluster,
                        ", a new cluster" if cluster != self.cluster_id else
                        ", restored from a backup?")
        self._host_value, self._groups = host_value, groups
        self._bindings, self._endpoints = bindings, endpoints
        self.revision = rev
        self.cluster_id = cluster
        self.full_reads += 1
        log.info("etcd: read %s, %d groups, %d other hosts' bindings and %d registrations at "
                 "revision %d", self.host_key, len(groups), len(bindings), len(endpoints), rev)

    def _start_streams(self) -> None:
        for s in self._streams:
            s.stop()
        self._gen += 1
        self._down.clear()
        self._resumed.clear()
        start = self.revision + 1
        # endpoints/ < fleet < groups/ < hosts/ < status/: one range, the agents' own status
        # writes outside it
        self._streams = [_Stream(self, self._gen, "fleet", self.endpoints_prefix,
                                 _prefix_end(self.hosts_prefix), start)]
        for s in self._streams:
            s.start()
        if self._unavailable:
            self._unavailable = False
            self._emit(Unchanged(self.description))

    def _apply(self, events: list[dict[str, Any]], revision: int) -> None:
        for e in events:
            kv = e.get("kv") or {}
            key = _unb64(kv.get("key")).decode("utf-8", "replace")
            deleted = e.get("type") == "DELETE"
            value = None if deleted else _unb64(kv.get("value"))
            if key == self.host_key:
                self._host_value = value
                continue
            for prefix, held in ((self.hosts_prefix, self._bindings),
                                 (self.groups_prefix, self._groups),
                                 (self.endpoints_prefix, self._endpoints)):
                if key.startswith(prefix):
                    name = key[len(prefix):]
                    if not name or "/" in name:
                        break
                    if value is None:
                        held.pop(name, None)
                    else:
                        held[name] = value
                    break
        self._advance(revision)

    # -- assembling the document --------------------------------------------------------------
    def _publish(self, force: bool) -> None:
        origin = f"{self.description}@{self.revision}"
        if self._host_value is None:
            if self._last_kind != "missing" or force:
                self._last_kind, self._last_digest = "missing", None
                self._emit(Unavailable(f"no binding for host {self.host!r} at key {self.host_key}",
                                       self.description, "missing"))
            return
        try:
            data = self.assemble()
            # No alias survives the reading, so this is no bigger than the values themselves.
            raw = _document_json(data, origin)
        except DocumentError as exc:
            self._last_kind, self._last_digest = "invalid", None
            self._emit(Invalid(exc, origin))
            return
        d = digest(raw)
        if d == self._last_digest:
            if force:
                self._emit(Unchanged(self.description))
            return
        self._last_digest = d
        try:
            doc = self._docs.parse_data(data, origin)
        except DocumentError as exc:
            self._last_kind = "invalid"
            self._emit(Invalid(exc, origin))
            return
        self._last_kind = "snapshot"
        if self.registration is not None:
            self.registration.follow([n.name for n in doc.host.nics])
        self._emit(Snapshot(doc, raw, origin, str(self.revision)))

    def assemble(self) -> dict[str, Any]:
        """The host document: the binding plus every group it needs, as plain data."""
        errors: list[str] = []
        host = _parse_value(self._host_value or b"", ("host",), errors)
        if errors:
            raise DocumentError(errors, self.description)
        if not isinstance(host, dict):
            raise DocumentError([f"host: the binding at {self.host_key} must be a mapping"],
                                self.description)
        groups: dict[str, Any] = {}

        def group(name: str) -> Any:
            if name not in groups and name in self._groups:
                groups[name] = self._group_data(name, errors)
            return groups.get(name, None) if name in self._groups else None
        needed = needed_groups(host, group)  # a missing group: validation names its path
        for name in self._read.keys() - self._groups.keys():
            del self._read[name]
        if errors:
            raise DocumentError(errors, self.description)
        members = members_by_group(self._contributions(host))
        return host_document(host, {n: groups[n] for n in needed}, members)

    def _group_data(self, name: str, errors: list[str]) -> Any:
        """What group ``name``'s key reads as (its errors added to ``errors``), read again only
        when its value changed: an edit of one group reads one key, and the other groups are
        the very same data as before, which the document cache takes as unchanged at once."""
        raw = self._groups[name]
        known = self._read.get(name)
        if known is None or known[0] != raw:
            found: list[str] = []
            value = _parse_value(raw, ("security_groups", name), found)
            known = self._read[name] = (raw, value, tuple(found))
        errors.extend(known[2])
        return known[1]

    def _contributions(self, own: dict[str, Any]) -> list[dict[str, Any]]:
        """What every host's NICs give the groups (:func:`contributions`), each host's
        computed again only when its binding or its registration changed."""
        out = [contributions(own, self._registered(self.host))]
        for name in self._contrib.keys() - self._bindings.keys():
            del self._contrib[name]
        for name, raw in self._bindings.items():
            if name == self.host:
                continue
            reg = self._endpoints.get(name)
            known = self._contrib.get(name)
            if known is None or known[0] is not raw or known[1] is not reg:
                binding = _parse_value(raw, ("hosts", name), [])
                known = self._contrib[name] = (raw, reg, contributions(binding,
                                                                       self._registered(name)))
            out.append(known[2])
        return out

    def _registered(self, host: str) -> Any:
        raw = self._endpoints.get(host)
        return None if raw is None else _parse_value(raw, ("endpoints", host), [])


def _document_json(data: dict[str, Any], origin: str) -> bytes:
    """The assembled document as the JSON that is digested and saved as last known good.  A
    mapping key that is not text (``1: x``) cannot be sorted, and is no host document either:
    validation says where it is."""
    try:
        return document_json(data)
    except (TypeError, ValueError):
        parse_data(data, origin)  # raises DocumentError naming the key
        raise DocumentError(["(document): a mapping key is not text"], origin) from None


def _parse_value(raw: bytes, at: tuple[str, ...], errors: list[str]) -> Any:
    """One key's value, read as a host document is (JSON, or YAML 1.2 without anchors, aliases
    or tags; a key twice is an error): nothing in it is expanded, ever."""
    if len(raw) > MAX_VALUE:
        errors.append(f"{format_loc(at)}: {len(raw)} bytes is over the {MAX_VALUE} byte limit")
        return None
    try:
        return parse_text(raw.decode("utf-8"), at=at)
    except UnicodeDecodeError as exc:
        errors.append(f"{format_loc(at)}: not UTF-8 text (byte {exc.start})")
    except DocumentError as exc:
        errors.extend(exc.errors)
    return None


def _by_name(answer: dict[str, Any], prefix: str) -> dict[str, bytes]:
    """The values of a range answer by the key's last part (keys deeper down are not ours)."""
    out = {}
    for kv in answer.get("kvs") or []:
        name = _unb64(kv["key"]).decode("utf-8", "replace")[len(prefix):]
        if name and "/" not in name:
            out[name] = _unb64(kv.get("value"))
    return out


def _messages(resp: Any) -> Iterator[dict[str, Any]]:
    """The JSON objects of a gRPC-gateway stream (one per line, split across chunks at will)."""
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if buf.strip():
        yield json.loads(buf)


def _abort(resp: Any) -> None:
    """Unblock a thread reading a streaming response (close its socket)."""
    if resp is None:
        return
    try:
        sock = resp.raw._fp.fp.raw._sock
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 - already closed, or another urllib3 layout
        pass
    try:
        resp.close()
    except Exception:  # noqa: BLE001
        pass


def _is_read_timeout(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if "Read timed out" in str(exc) or type(exc).__name__ in ("ReadTimeout", "ReadTimeoutError"):
            return True
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)  # type: ignore[assignment]
        seen += 1
    return False


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "Connection refused" in text:
        return "connection refused"
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}"


class _WatchError(Exception):
    pass


class _Compacted(Exception):
    def __init__(self, revision: int) -> None:
        super().__init__(f"compacted at {revision}")
        self.revision = revision
