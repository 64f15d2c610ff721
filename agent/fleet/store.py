"""The fleet's keys in etcd: read at one revision, written in one transaction.

A push writes every changed group and binding, deletes those the fleet no longer has, and
writes ``<prefix>/fleet`` (who pushed what, when), all in one transaction guarded by the
revision the push read: it succeeds only if no binding, no group and no earlier push changed
since (compare-and-swap on their ``mod_revision``).  So no agent ever sees half of a change, and
a concurrent writer is refused instead of overwritten.  (A key deleted by hand after the read
leaves nothing to compare: such a deletion is not detected; ``sgagent fleet push`` never
deletes behind another push, which writes ``<prefix>/fleet``.)"""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..daemon.config import EtcdSource as EtcdConfig
from ..load import DocumentError, parse_text

SECTIONS = ("hosts", "groups", "endpoints", "status")


class FleetError(Exception):
    """A problem with etcd or the push, said in one line."""


class ConcurrentWrite(FleetError):
    pass


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return b.decode()


def canonical(data: Any) -> bytes:
    """How a push writes a value: JSON, keys sorted (every agent reads JSON fastest)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class State:
    """The fleet's keys at one revision: raw values by name, per section."""
    revision: int
    raw: dict[str, dict[str, bytes]] = field(default_factory=dict)
    fleet_mod: int = 0       # mod_revision of <prefix>/fleet (0: never pushed)

    def data(self, section: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The values of a section as plain data, and the errors of those that do not read."""
        out, bad = {}, {}
        for name, raw in self.raw.get(section, {}).items():
            try:
                out[name] = parse_text(raw.decode("utf-8"), f"{section}/{name}")
            except (DocumentError, UnicodeDecodeError) as exc:
                bad[name] = "; ".join(exc.errors) if isinstance(exc, DocumentError) else str(exc)
        return out, bad


class FleetStore:
    def __init__(self, cfg: EtcdConfig) -> None:
        self.cfg = cfg
        self.prefix = cfg.prefix
        self._client: Any = None

    def _etcd(self) -> Any:
        if self._client is None:
            from etcd3gw.client import Etcd3Client
            url = urlsplit(self.cfg.endpoints[0])
            c = Etcd3Client(host=url.hostname or "127.0.0.1", port=url.port or 2379,
                            protocol=url.scheme, ca_cert=self.cfg.ca_cert,
                            cert_key=self.cfg.client_key, cert_cert=self.cfg.client_cert,
                            timeout=self.cfg.timeout)
            c.session.trust_env = False
            self._client = c
        return self._client

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            c = self._etcd()
            return c.post(c.get_url(path), json=body)
        except Exception as exc:  # noqa: BLE001 - every failure of etcd: one line, exit 1
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            detail = getattr(exc, "detail_text", None)  # etcd's own words (etcd3gw)
            if detail:
                try:
                    detail = json.loads(detail).get("error") or detail
                except (ValueError, AttributeError):
                    pass
                text = f"{text}: {str(detail).strip()}"
            if "Connection refused" in text or isinstance(exc, (ConnectionError, socket.error)):
                text = "connection refused"
            raise FleetError(f"etcd at {', '.join(self.cfg.endpoints)}: {text[:300]}") from None

    def key(self, section: str, name: str = "") -> str:
        return f"{self.prefix}/{section}/{name}"

    def read(self, sections: tuple[str, ...] = SECTIONS) -> State:
        """Every section's keys at one revision (that of the first read)."""
        first = self.post("/kv/range", {"key": b64(f"{self.prefix}/fleet")})
        rev = int((first.get("header") or {}).get("revision", 0))
        kvs = first.get("kvs") or []
        state = State(rev, fleet_mod=int(kvs[0].get("mod_revision", 0)) if kvs else 0)
        for section in sections:
            p = self.key(section)
            r = self.post("/kv/range", {"key": b64(p), "range_end": b64(prefix_end(p)),
                                        "revision": rev})
            held = state.raw.setdefault(section, {})
            for kv in r.get("kvs") or []:
                name = unb64(kv["key"]).decode("utf-8", "replace")[len(p):]
                if name and "/" not in name:
                    held[name] = unb64(kv.get("value"))
        return state

    def commit(self, state: State, puts: dict[str, bytes], deletes: list[str],
               note: dict[str, Any]) -> int:
        """Write ``puts`` and delete ``deletes`` (full keys) in one transaction, if nothing
        changed since ``state`` was read; the revision written."""
        guard = [{"key": b64(self.key(s)), "range_end": b64(prefix_end(self.key(s))),
                  "target": "MOD", "result": "LESS", "mod_revision": str(state.revision + 1)}
                 for s in ("hosts", "groups")]
        guard.append({"key": b64(f"{self.prefix}/fleet"), "target": "MOD", "result": "EQUAL",
                      "mod_revision": str(state.fleet_mod)})
        ops = [{"request_put": {"key": b64(k), "value": b64(v)}} for k, v in puts.items()]
        ops += [{"request_delete_range": {"key": b64(k)}} for k in deletes]
        note = {**note, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ops.append({"request_put": {"key": b64(f"{self.prefix}/fleet"),
                                    "value": b64(canonical(note))}})
        r = self.post("/kv/txn", {"compare": guard, "success": ops})
        if "error" in r or "code" in r:
            raise FleetError(f"etcd refused the transaction of {len(ops)} operations: "
                             f"{r.get('error') or r.get('message')}")
        if not r.get("succeeded"):
            raise ConcurrentWrite(
                f"etcd changed after this push read it at revision {state.revision} (another "
                "writer changed a binding, a group or pushed): nothing was written; run "
                "sgagent fleet diff and push again")
        return int((r.get("header") or {}).get("revision", 0))
