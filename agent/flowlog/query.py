"""``sgagent logs``: the flow records in a directory, filtered, optionally followed.

Records are read from the rotated files oldest first (``flows.log.5`` ... ``flows.log.1``,
then ``flows.log``); ``follow`` then waits for new lines, and reopens ``flows.log`` when the
writer rotated it.  A line that is not a record (cut short by a crash, say) is skipped.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .record import peer
from .sink import FILE_NAME

VERDICTS = ("accept", "drop", "reject", "would accept", "would drop", "would reject")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class QueryError(ValueError):
    """A filter that cannot be read; the message names the option."""


@dataclass(frozen=True)
class Filter:
    rule: str | None = None
    group: str | None = None
    verdict: str | None = None       # one of VERDICTS, or "would" (every audit record)
    peer: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    since: float | None = None       # epoch seconds

    def __call__(self, rec: dict[str, Any]) -> bool:
        if self.rule is not None and rec.get("rule") != self.rule:
            return False
        if self.group is not None and rec.get("group") != self.group:
            return False
        if self.verdict is not None:
            v = rec.get("verdict", "")
            if v != self.verdict and not (self.verdict == "would" and v.startswith("would ")):
                return False
        if self.peer is not None:
            try:
                if ipaddress.ip_address(peer(rec)) not in self.peer:
                    return False
            except ValueError:
                return False
        if self.since is not None and _epoch(rec.get("time", "")) < self.since:
            return False
        return True


def make_filter(rule: str | None = None, group: str | None = None, verdict: str | None = None,
                peer_text: str | None = None, since: str | None = None,
                now: float | None = None) -> Filter:
    v = None
    if verdict is not None:
        v = " ".join(verdict.strip().lower().replace("-", " ").replace("_", " ").split())
        if v not in VERDICTS and v not in ("would", "audit"):
            raise QueryError(f"--verdict: {verdict!r} is not one of accept, drop, reject, "
                             "would-accept, would-drop, would-reject, would")
        v = "would" if v == "audit" else v
    net = None
    if peer_text is not None:
        try:
            net = ipaddress.ip_network(peer_text.strip(), strict=False)
        except ValueError:
            raise QueryError(f"--peer: {peer_text!r} is not an address or CIDR") from None
    return Filter(rule, group, v, net, None if since is None else parse_since(since, now))


def parse_since(text: str, now: float | None = None) -> float:
    """``30s``, ``10m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC unless it says)."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d{1,9})\s*([smhd])\s*", text)
    if m:
        return now - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"--since: {text!r} is neither a duration (30s, 10m, 2h, 1d) nor an "
                         "ISO 8601 time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def _epoch(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def files(directory: Path) -> list[Path]:
    """The record files, oldest first."""
    rotated = []
    for p in directory.glob(FILE_NAME + ".*"):
        suffix = p.name[len(FILE_NAME) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), p))
    out = [p for _, p in sorted(rotated, reverse=True)]
    current = directory / FILE_NAME
    if current.exists():
        out.append(current)
    return out


def _records(lines) -> Iterator[dict[str, Any]]:
    for text in lines:
        try:
            rec = json.loads(text)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def read(directory: Path, keep: Callable[[dict], bool]) -> Iterator[dict[str, Any]]:
    for p in files(directory):
        try:
            with open(p, encoding="utf-8", errors="replace") as fh:
                yield from (r for r in _records(fh) if keep(r))
        except FileNotFoundError:  # rotated away while we read
            continue


def follow(directory: Path, keep: Callable[[dict], bool], poll: float = 0.2,
           stop: Callable[[], bool] = lambda: False) -> Iterator[dict[str, Any]]:
    """What is in the files now, then every record written after, until ``stop()``."""
    yield from read(directory, keep)
    path = directory / FILE_NAME
    fh = None
    ino = None
    pending = ""
    while not stop():
        if fh is None:
            try:
                fh = open(path, encoding="utf-8", errors="replace")
                ino = os.fstat(fh.fileno()).st_ino
                fh.seek(0, os.SEEK_END)
            except FileNotFoundError:
                time.sleep(poll)
                continue
        chunk = fh.read()
        if chunk:
            pending += chunk
            *done, pending = pending.split("\n")
            yield from (r for r in _records(done) if keep(r))
            continue
        try:
            if os.stat(path).st_ino != ino:  # rotated: read the rest of the old one, reopen
                rest = fh.read()
                fh.close()
                lines = (pending + rest).split("\n")
                yield from (r for r in _records(lines) if keep(r))
                pending, fh = "", None
                try:  # the new file from its start
                    fh = open(path, encoding="utf-8", errors="replace")
                    ino = os.fstat(fh.fileno()).st_ino
                except FileNotFoundError:
                    fh = None
                continue
        except FileNotFoundError:
            pass
        time.sleep(poll)
    if fh is not None:
        fh.close()


def text(rec: dict[str, Any]) -> str:
    """One record as a line for people."""
    proto = rec.get("protocol", "?")
    if "icmp_type" in rec:
        where = f"{rec.get('src')} -> {rec.get('dst')} {proto} type {rec.get('icmp_type')}"
    else:
        def port(p):
            return f":{p}" if p is not None else ""
        src, dst = rec.get("src", ""), rec.get("dst", "")
        if ":" in src:
            src = f"[{src}]"
        if ":" in dst:
            dst = f"[{dst}]"
        where = f"{src}{port(rec.get('sport'))} -> {dst}{port(rec.get('dport'))} {proto}"
    who = rec.get("rule", "?")
    if rec.get("group") and not who.startswith(f"{rec['group']}/"):
        who = f"{rec['group']}/{who}"
    d = {"inbound": "in", "outbound": "out"}.get(rec.get("direction", ""), "?")
    return f"{rec.get('time', '?')} {rec.get('nic', '?')} {d} {rec.get('verdict', '?')} " \
           f"{where} by {who}"
