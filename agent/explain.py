"""``sgagent explain`` in plain words: what decided a packet when no rule did -- inner access
(and of which group), the default of the NIC's group type, or ``host.defaults`` -- and why a
peer that is a member of a group was not let in by inner access."""

from __future__ import annotations

from .evaluator import Packet, Verdict
from .model import Document


def decided_by(doc: Document, pkt: Packet, v: Verdict) -> str:
    """What follows the verdict, in brackets: ``decided by rule: sg-web/ssh``, ``decided by
    inner access of sg-web: ...``, ``decided by the default of basic groups: ...``."""
    if v.reason == "rule":
        who = f"{v.group}/{v.rule}" if v.group and not v.rule.startswith(v.group + "/") else v.rule
        return f"decided by rule: {who}"
    if v.reason == "failsafe":
        return f"decided by the host's failsafe: host.failsafe[{v.rule.split('/', 1)[1]}]"
    if v.reason == "allowance":
        return "always allowed: DHCP and link-local ICMPv6 (SEMANTICS §5)"
    if v.reason == "inner-access":
        group = inner_group(doc, pkt)
        return (f"decided by inner access of {group}: no rule matched, and {pkt.peer} is a "
                f"member of {group}, whose members may reach each other")
    if getattr(doc.host.defaults, pkt.direction) is not None:
        return f"decided by host.defaults.{pkt.direction}: no rule matched"
    nic = doc.nic(pkt.nic)
    types = {doc.security_groups[g].type for g in nic.security_groups}
    if "enterprise" in types:
        return ("decided by the default of enterprise groups: no rule matched, and enterprise "
                "groups drop inbound and outbound traffic")
    if not nic.security_groups:
        return f"decided by the default of {pkt.nic}, bound to no group: no rule matched"
    what = "drop inbound" if pkt.direction == "inbound" else "accept outbound"
    return f"decided by the default of basic groups: no rule matched, and basic groups {what} traffic"


def inner_group(doc: Document, pkt: Packet) -> str | None:
    """The first group of the NIC whose inner access lets ``pkt.peer`` in."""
    for g in doc.nic(pkt.nic).security_groups:
        sg = doc.security_groups[g]
        if sg.inner_accepts and pkt.peer in sg.members:
            return g
    return None


def notes(doc: Document, pkt: Packet, v: Verdict) -> list[str]:
    """Why inner access did not let a member in, when the default decided."""
    if v.reason != "default" or pkt.direction != "inbound":
        return []
    nic = doc.nic(pkt.nic)
    out = []
    for g in nic.security_groups:
        sg = doc.security_groups[g]
        if pkt.peer not in sg.members:
            continue
        if sg.type == "enterprise":
            out.append(f"{pkt.peer} is a member of {g}, but enterprise groups have no inner access")
        elif not sg.inner_accepts:
            out.append(f"{pkt.peer} is a member of {g}, but its inner_access is drop")
        elif nic.role == "internet":
            out.append(f"{pkt.peer} is a member of {g}, but inner access applies on vpc and "
                       f"intranet NICs only, not on the internet NIC {pkt.nic}")
    return out
