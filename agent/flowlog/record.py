"""A flow record (SEMANTICS section 9): one JSON object per logged packet.

``{"time", "nic", "direction", "src", "dst", "protocol", "sport", "dport" | "icmp_type",
"verdict", "group", "rule", "instance"}`` -- ``verdict`` is ``accept``, ``drop``, ``reject``,
or for an audit rule ``would accept|drop|reject``; ``group`` is null for a NIC's default
(``rule`` is then ``default``).  Addresses are the packet's own (``src`` is the peer of an
inbound record).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from .nflog import Packet
from .prefix import Tag


def record(pkt: Packet, tag: Tag, instance: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": datetime.datetime.fromtimestamp(pkt.time, datetime.timezone.utc)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "nic": tag.nic, "direction": tag.direction,
        "src": pkt.src, "dst": pkt.dst, "protocol": pkt.protocol,
    }
    if pkt.icmp_type is not None:
        out["icmp_type"] = pkt.icmp_type
        out["icmp_code"] = pkt.icmp_code
    else:
        out["sport"] = pkt.sport
        out["dport"] = pkt.dport
    out.update(verdict=tag.verdict, group=tag.group, rule=tag.rule, instance=instance)
    return out


def line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":")) + "\n"


def peer(rec: dict[str, Any]) -> str:
    """The remote side of a record: the source of what came in, the destination of what left."""
    return rec.get("src", "") if rec.get("direction") == "inbound" else rec.get("dst", "")
