"""Checking a fleet: every host's assembled document validated, errors named by their place in
the fleet (``hosts.web-1.nics[0].name``, ``security_groups.sg-web.rules[2].ports``); a group
that no host uses is validated by itself.  What the agents would enforce is exactly what is
validated here: the same assembly (:mod:`.assemble`), with the addresses the agents registered
counted as members."""

from __future__ import annotations

from typing import Any, Mapping

from ..load import DocumentError, parse_data
from ..model import Document
from .assemble import contributions, host_document, members_by_group, needed_groups
from .document import Fleet


def fleet_members(hosts: Mapping[str, Any], registrations: Mapping[str, Any]) -> dict[str, set]:
    return members_by_group(contributions(b, registrations.get(h)) for h, b in hosts.items())


def assemble_all(hosts: Mapping[str, Any], groups: Mapping[str, Any],
                 registrations: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every host's document as plain data."""
    members = fleet_members(hosts, registrations)
    return {h: host_document(b, groups, members) for h, b in hosts.items()}


def _fleet_path(host: str, error: str) -> str:
    if error.startswith("host.") or error.startswith("host:"):
        return f"hosts.{host}{error[4:]}"
    if error.startswith("(document)"):
        return f"hosts.{host}{error[len('(document)'):]}"
    return error


def check(fleet: Fleet, registrations: Mapping[str, Any] | None = None
          ) -> tuple[list[str], dict[str, Document]]:
    """Every error with its fleet path (an error in a shared group once, with the hosts it
    refuses), and the documents of the hosts that are valid."""
    regs = registrations or {}
    errors: dict[str, list[str]] = {}
    docs: dict[str, Document] = {}
    for host, data in assemble_all(fleet.hosts, fleet.groups, regs).items():
        try:
            docs[host] = parse_data(data, f"hosts.{host}")
        except DocumentError as exc:
            for e in exc.errors:
                errors.setdefault(_fleet_path(host, e), []).append(host)
    used = {g for b in fleet.hosts.values() for g in needed_groups(b, fleet.groups.get)}
    for name in sorted(set(fleet.groups) - used):
        for e in _group_errors(name, fleet.groups):
            errors.setdefault(e, [])
    out = []
    for e, hosts in errors.items():
        where = f" (in {fleet.files[_top(e)]})" if _top(e) in fleet.files and \
            len(set(fleet.files.values())) > 1 else ""
        shared = e.startswith("security_groups.") and hosts
        out.append(e + where + (f" [refused by {_hosts(hosts)}]" if shared else ""))
    return out, docs


def _top(error: str) -> str:
    """``hosts.web-1`` or ``security_groups.sg-web`` of an error's path."""
    parts = error.split(":", 1)[0].split(".")
    return ".".join(parts[:2]).split("[", 1)[0]


def _hosts(hosts: list[str]) -> str:
    return ", ".join(hosts[:5]) + (f" and {len(hosts) - 5} more" if len(hosts) > 5 else "")


def _group_errors(name: str, groups: Mapping[str, Any]) -> list[str]:
    """A group nobody uses, checked as a NIC bound to it would check it, on a VPC host and on a
    classic one: what both refuse is wrong whatever host binds it."""
    found: list[set[str]] = []
    for network in ("vpc", "classic"):
        binding = {"instance": "fleet-check", "network": network,
                   "nics": [{"name": "eth0", "security_groups": [name]}]}
        try:
            parse_data(host_document(binding, groups, {}))
            return []
        except DocumentError as exc:
            found.append({e for e in exc.errors
                          if e.startswith((f"security_groups.{name}.", f"security_groups.{name}:"))})
    return sorted(found[0] & found[1])
