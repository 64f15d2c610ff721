"""One host's document from a fleet's plain data: its binding, the groups it needs, and each
group's members -- its listed ``members`` plus the addresses of every VPC or intranet NIC, on
any host, bound to it (from the bindings' ``addresses`` and the agents' registrations).

The same functions serve the agent (the etcd source) and ``sgagent fleet``, so that both
assemble exactly the same document from the same keys.  Everything here works on plain data
(what a YAML or JSON value reads as); validation is the host document's own, afterwards.  An
address that is not one, in a binding of another host or in a registration, gives no member
(that host's own document names the error; a registration is not a document)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Callable, Iterable, Mapping

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MEMBER_ROLES = ("vpc", "intranet")  # internet NICs never make members


def addresses(values: Any) -> set[Address]:
    """The valid addresses of a list (``/32`` and ``/128`` allowed); anything else is left out."""
    out: set[Address] = set()
    for v in values if isinstance(values, (list, tuple)) else ():
        if isinstance(v, str):
            try:
                out.add(ipaddress.ip_address(v.strip().removesuffix("/32").removesuffix("/128")))
            except ValueError:
                pass
    return out


def registered_nics(registration: Any) -> Mapping[str, Any]:
    """``{"nics": {NIC: [addresses]}}``, the value an agent registers, as a mapping."""
    nics = registration.get("nics") if isinstance(registration, dict) else None
    return nics if isinstance(nics, dict) else {}


def contributions(binding: Any, registration: Any = None) -> dict[str, frozenset[Address]]:
    """The addresses one host gives each group: per VPC or intranet NIC, its ``addresses`` in
    the binding and those its agent registered, to every group the NIC is bound to."""
    out: dict[str, set[Address]] = {}
    nics = binding.get("nics") if isinstance(binding, dict) else None
    live = registered_nics(registration)
    for nic in nics if isinstance(nics, list) else ():
        if not isinstance(nic, dict):
            continue
        role = nic.get("role", "vpc")
        if not isinstance(role, str) or role.lower() not in MEMBER_ROLES:
            continue
        name = nic.get("name")
        found = addresses(nic.get("addresses"))
        if isinstance(name, str):
            found |= addresses(live.get(name))
        bound = nic.get("security_groups")
        if not found or not isinstance(bound, list):
            continue
        for g in bound:
            if isinstance(g, str):
                out.setdefault(g, set()).update(found)
    return {g: frozenset(a) for g, a in out.items()}


def members_by_group(per_host: Iterable[Mapping[str, frozenset[Address]]]) -> dict[str, set[Address]]:
    """The union of every host's :func:`contributions`, per group."""
    out: dict[str, set[Address]] = {}
    for contrib in per_host:
        for g, addrs in contrib.items():
            out.setdefault(g, set()).update(addrs)
    return out


def with_members(group: Any, extra: set[Address] | frozenset[Address]) -> Any:
    """``group`` with the addresses ``extra`` added to its ``members`` after those it lists (in
    address order, none twice); the very same object when there is nothing to add."""
    if not extra or not isinstance(group, dict):
        return group
    listed = group.get("members")
    have = addresses(listed)
    add = [str(a) for a in sorted(extra - have, key=lambda a: (a.version, int(a)))]
    if not add:
        return group
    if listed is None:
        listed = []
    if not isinstance(listed, list):
        return group  # not a list: validation says so, with its path
    return {**group, "members": [*listed, *add]}


def referenced_groups(group: Any) -> list[str]:
    """The groups a group's rules name as peers (``source``/``destination: {group: ...}``)."""
    out: list[str] = []
    rules = group.get("rules") if isinstance(group, dict) else None
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        for side in ("source", "destination"):
            peer = rule.get(side)
            for item in peer if isinstance(peer, list) else [peer]:
                if isinstance(item, dict) and isinstance(item.get("group"), str):
                    out.append(item["group"])
    return out


def bound_groups(binding: Any) -> list[str]:
    """The groups a binding's NICs are bound to, in binding order."""
    out: list[str] = []
    nics = binding.get("nics") if isinstance(binding, dict) else None
    for nic in nics if isinstance(nics, list) else []:
        bound = nic.get("security_groups") if isinstance(nic, dict) else None
        if isinstance(bound, list):
            out.extend(g for g in bound if isinstance(g, str))
    return out


def needed_groups(binding: Any, group: Callable[[str], Any]) -> list[str]:
    """The groups a host needs: those bound to its NICs and, transitively, those their rules
    name as peers; ``group(name)`` gives a group's data (``None``: there is no such group, which
    validation reports with its path)."""
    todo, seen, out = bound_groups(binding), set(), []
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        data = group(name)
        if data is None:
            continue
        out.append(name)
        todo.extend(referenced_groups(data))
    return out


def host_document(binding: Any, groups: Mapping[str, Any],
                  members: Mapping[str, set[Address] | frozenset[Address]]) -> dict[str, Any]:
    """The host document: ``binding`` under ``host``, and every group it needs, each with the
    members the fleet gives it."""
    names = needed_groups(binding, groups.get)
    return {"version": 1, "host": binding,
            "security_groups": {n: with_members(groups[n], members.get(n, frozenset()))
                                for n in names}}


def document_json(data: dict[str, Any]) -> bytes:
    """The assembled document as the agent digests and saves it (``sgagent fleet status``
    compares the digest an agent reports with this one's)."""
    return json.dumps(data, indent=1, sort_keys=True).encode()
