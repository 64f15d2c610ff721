"""Small builders for host documents, shared by the unit tests."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from sgagent.evaluator import Packet
from sgagent.load import DocumentError, parse_data
from sgagent.model import Document


def raw(groups: dict[str, Any] | None = None, *, nics: list[dict] | None = None,
        **host: Any) -> dict[str, Any]:
    """A raw host document: one vpc NIC eth0 bound to every group, unless ``nics`` says otherwise."""
    groups = groups if groups is not None else {}
    h = {"instance": "i-test", "account": "1001",
         "nics": nics if nics is not None else [{"name": "eth0", "security_groups": list(groups)}]}
    h.update(host)
    return {"version": 1, "host": h, "security_groups": groups}


def load(data: dict[str, Any]) -> Document:
    return parse_data(copy.deepcopy(data))


def errors(data: Any) -> list[str]:
    """The errors a document is refused with; fails the test if it is accepted."""
    try:
        parse_data(copy.deepcopy(data))
    except DocumentError as exc:
        assert exc.errors, "a DocumentError without errors"
        return exc.errors
    raise AssertionError("the document was accepted")


def rule(**kw: Any) -> dict[str, Any]:
    """An inbound tcp rule from anywhere (IPv4), with ``kw`` overriding."""
    r = {"direction": "inbound", "protocol": "tcp", "source": "0.0.0.0/0"}
    r.update(kw)
    if r.get("direction") in ("outbound", "egress", "out") and "source" not in kw:
        r.pop("source", None)
        r.setdefault("destination", "0.0.0.0/0")
    return {k: v for k, v in r.items() if v is not None}


def pkt(peer: str, protocol: str = "tcp", port: int | None = None, *, nic: str = "eth0",
        direction: str = "inbound", icmp_type: int | None = None,
        sport: int | None = None) -> Packet:
    if protocol in ("tcp", "udp") and port is None:
        port = 80
    if protocol in ("tcp", "udp") and sport is None:
        sport = 40000
    return Packet(nic, direction, ipaddress.ip_address(peer), protocol, port,  # type: ignore[arg-type]
                  icmp_type, sport)
