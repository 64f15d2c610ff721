"""What a fleet change does to each host: per NIC, the rules added, removed and changed (a
rule is known by its group and id, ``sg-web/tcp-80``), the members each group gains and
loses, and any other change of the binding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import Document


@dataclass
class HostDiff:
    host: str
    state: str = "changed"     # new | removed | changed
    rules: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # NIC -> +/-/~ -> ids
    members: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # group -> +/- addrs
    settings: list[str] = field(default_factory=list)  # other fields of the binding

    def empty(self) -> bool:
        return not (self.rules or self.members or self.settings) and self.state == "changed"

    def as_json(self) -> dict[str, Any]:
        return {"host": self.host, "state": self.state, "rules": self.rules,
                "members": self.members, "settings": self.settings}

    def lines(self) -> list[str]:
        out = [f"host {self.host}" + ("" if self.state == "changed" else f" ({self.state})")]
        for nic, change in sorted(self.rules.items()):
            for sign in ("+", "-", "~"):
                out.extend(f"  {nic}: {sign} {r}" for r in change.get(sign, ()))
        for g, change in sorted(self.members.items()):
            for sign in ("+", "-"):
                if change.get(sign):
                    out.append(f"  members of {g}: {sign} {', '.join(change[sign])}")
        out.extend(f"  ~ {s}" for s in self.settings)
        return out


def _rules(doc: Document | None) -> dict[str, dict[str, Any]]:
    """Per NIC, every rule that applies there: ``group/id`` -> the rule as data."""
    out: dict[str, dict[str, Any]] = {}
    if doc is None:
        return out
    for nic in doc.host.nics:
        mine = out.setdefault(nic.name, {})
        for g in nic.security_groups:
            group = doc.security_groups.get(g)
            for i, rule in enumerate(group.rules if group else ()):
                rid = doc.rule_id(g, i)
                key = rid if rid.startswith(f"{g}/") else f"{g}/{rid}"
                mine[key] = rule.model_dump(mode="json", exclude_none=True)
    return out


def _members(doc: Document | None) -> dict[str, set[str]]:
    if doc is None:
        return {}
    return {g: {str(m) for m in group.members} for g, group in doc.security_groups.items()}


def _settings(doc: Document | None) -> dict[str, Any]:
    if doc is None:
        return {}
    host = doc.host.model_dump(mode="json", exclude={"nics"})
    host["nics"] = [{k: v for k, v in n.model_dump(mode="json").items()
                     if k != "security_groups"} for n in doc.host.nics]
    return host


def diff_host(host: str, old: Document | None, new: Document | None) -> HostDiff:
    d = HostDiff(host, "new" if old is None else "removed" if new is None else "changed")
    before, after = _rules(old), _rules(new)
    for nic in sorted(before.keys() | after.keys()):
        b, a = before.get(nic, {}), after.get(nic, {})
        change = {"+": sorted(a.keys() - b.keys()), "-": sorted(b.keys() - a.keys()),
                  "~": sorted(k for k in a.keys() & b.keys() if a[k] != b[k])}
        change = {k: v for k, v in change.items() if v}
        if change:
            d.rules[nic] = change
    mb, ma = _members(old), _members(new)
    for g in sorted(mb.keys() | ma.keys()):
        change = {"+": sorted(ma.get(g, set()) - mb.get(g, set())),
                  "-": sorted(mb.get(g, set()) - ma.get(g, set()))}
        change = {k: v for k, v in change.items() if v}
        if change:
            d.members[g] = change
    sb, sa = _settings(old), _settings(new)
    if old is not None and new is not None:
        d.settings = [k for k in sorted(sb.keys() | sa.keys()) if sb.get(k) != sa.get(k)]
    return d
