"""``sgagent fleet validate|diff|push|status``: the fleet document against what etcd holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..daemon.state import digest
from ..load import DocumentError, parse_data
from ..model import Document
from .assemble import document_json
from .check import assemble_all, check
from .diff import HostDiff, diff_host
from .document import Fleet
from .store import FleetError, FleetStore, State, canonical


class Refused(FleetError):
    """The fleet has errors: nothing is written."""

    def __init__(self, errors: list[str], origin: str) -> None:
        super().__init__(f"{origin}: refused, {len(errors)} error"
                         f"{'' if len(errors) == 1 else 's'}; nothing was written")
        self.errors = errors


def validate(fleet: Fleet, state: State | None = None) -> list[str]:
    regs = state.data("endpoints")[0] if state is not None else {}
    return check(fleet, regs)[0]


def _current_docs(state: State) -> tuple[dict[str, Document | None], dict[str, str]]:
    """Every host's document as etcd holds it now (``None``: it would be refused)."""
    hosts, bad = state.data("hosts")
    groups, _ = state.data("groups")
    regs, _ = state.data("endpoints")
    docs: dict[str, Document | None] = {h: None for h in bad}
    assembled = assemble_all(hosts, groups, regs)
    for h, data in assembled.items():
        try:
            docs[h] = parse_data(data)
        except DocumentError:
            docs[h] = None
    return docs, {h: digest(document_json(d)) for h, d in assembled.items()}


@dataclass
class Plan:
    state: State
    diffs: list[HostDiff] = field(default_factory=list)
    puts: dict[str, bytes] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)


def plan(fleet: Fleet, store: FleetStore) -> Plan:
    """What a push would write, and what it changes for each host; :class:`Refused` if any
    host's document would refuse it."""
    state = store.read()
    errors, new_docs = check(fleet, state.data("endpoints")[0])
    if errors:
        raise Refused(errors, fleet.origin)
    old_docs, _ = _current_docs(state)
    p = Plan(state)
    for section, wanted in (("hosts", fleet.hosts), ("groups", fleet.groups)):
        have, _ = state.data(section)
        raw = state.raw.get(section, {})
        for name, value in wanted.items():
            if name not in raw or have.get(name, _NOTHING) != value:
                p.puts[store.key(section, name)] = canonical(value)
        p.deletes += [store.key(section, n) for n in sorted(raw.keys() - wanted.keys())]
    for h in sorted(old_docs.keys() | new_docs.keys()):
        d = diff_host(h, old_docs.get(h), new_docs.get(h))
        if h in old_docs and old_docs[h] is None and h in new_docs:
            d.state = "was refused"
        if not d.empty():
            p.diffs.append(d)
    return p


_NOTHING = object()


def push(fleet: Fleet, store: FleetStore) -> tuple[Plan, int | None]:
    p = plan(fleet, store)
    if not p.puts and not p.deletes:
        return p, None
    rev = store.commit(p.state, p.puts, p.deletes,
                       {"hosts": len(fleet.hosts), "groups": len(fleet.groups),
                        "written": len(p.puts), "deleted": len(p.deletes)})
    return p, rev


def status(store: FleetStore, fleet_hosts: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Every host with the revision it applied and whether that is what it should enforce
    (``fleet_hosts``: hosts of a fleet document, listed as ``not pushed`` if etcd has none)."""
    state = store.read()
    docs, expected = _current_docs(state)
    reports, _ = state.data("status")
    hosts = []
    for h in sorted(docs.keys() | set(fleet_hosts)):
        rep = reports.get(h) if isinstance(reports.get(h), dict) else None
        entry: dict[str, Any] = {"host": h, "applied_revision": None, "applied_at": None}
        if h not in docs:
            entry["state"] = "not pushed"   # in the fleet document, not in etcd
        elif docs[h] is None:
            entry["state"] = "refused"      # its document is invalid: the agent keeps its rules
        elif rep is None:
            entry["state"] = "unknown"      # no agent registered (or its lease ran out)
        else:
            entry["applied_revision"] = rep.get("revision")
            entry["applied_at"] = rep.get("applied_at")
            entry["state"] = "current" if rep.get("digest") == expected.get(h) else "behind"
        hosts.append(entry)
    return {"revision": state.revision, "hosts": hosts,
            "behind": [e["host"] for e in hosts if e["state"] != "current"]}
