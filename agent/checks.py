"""Checks that need the whole document (SEMANTICS section 7), each error with its path."""

from __future__ import annotations

import ipaddress

from .model import Document, GroupPeer, shown


def document_errors(doc: Document) -> list[str]:
    errors: list[str] = []
    add = errors.append
    host = doc.host
    groups = doc.security_groups
    classic = host.network == "classic"

    names = [n.name for n in host.nics]
    for i, nic in enumerate(host.nics):
        path = f"host.nics[{i}]"
        if names.index(nic.name) != i:
            add(f"{path}.name: NIC {shown(nic.name)} is listed twice")
        if classic and nic.role == "vpc":
            add(f"{path}.role: a classic host has intranet and internet NICs, not vpc")
        if not classic and nic.role != "vpc":
            add(f"{path}.role: a vpc host's NICs have role vpc, not {nic.role}")
        seen: set[str] = set()
        for j, g in enumerate(nic.security_groups):
            if g not in groups:
                add(f"{path}.security_groups[{j}]: group {shown(g)} is not defined in security_groups")
            if g in seen:
                add(f"{path}.security_groups[{j}]: group {shown(g)} is bound twice")
            seen.add(g)
        types = {groups[g].type for g in nic.security_groups if g in groups}
        if len(types) > 1:
            add(f"{path}.security_groups: groups of mixed type ({', '.join(sorted(types))}) on one NIC")
    if classic:
        roles = [n.role for n in host.nics]
        for role in ("intranet", "internet"):
            if roles.count(role) > 1:
                add(f"host.nics: a classic host has at most one {role} NIC")
        bindings = {n.security_groups for n in host.nics}
        if len(bindings) > 1:
            add("host.nics: a classic host's intranet and internet NICs are bound to the same groups")

    for i, entry in enumerate(host.failsafe):
        for net in _networks(entry.peer):
            if classic and net.version == 6:
                add(f"host.failsafe[{i}]: IPv6 {net} on a classic network")
        for item in entry.peer or ():
            if isinstance(item, GroupPeer):
                add(f"host.failsafe[{i}]: failsafe peers are addresses, not groups")

    for gname, group in groups.items():
        gpath = f"security_groups.{gname}"
        ids: dict[str, int] = {}
        for k, m in enumerate(group.members):
            if classic and m.version == 6:
                add(f"{gpath}.members[{k}]: IPv6 {m} on a classic network")
        for r, rule in enumerate(group.rules):
            rpath = f"{gpath}.rules[{r}]"
            rid = doc.rule_id(gname, r)
            if rid in ids:
                add(f"{rpath}.id: {shown(rid)} is already the id of rules[{ids[rid]}]")
            else:
                ids[rid] = r
            if classic:
                if rule.nic is None:
                    add(f"{rpath}.nic: a classic rule names its nic (intranet or internet)")
            elif rule.nic == "internet":
                add(f"{rpath}.nic: a vpc rule cannot be for the internet NIC")
            for p, item in enumerate(rule.peer or ()):
                ppath = f"{rpath}.{'source' if rule.direction == 'inbound' else 'destination'}"
                if len(rule.peer or ()) > 1:
                    ppath += f"[{p}]"
                if isinstance(item, GroupPeer):
                    if group.type == "enterprise":
                        add(f"{ppath}: an enterprise group cannot reference a group")
                    if classic and rule.nic == "internet":
                        add(f"{ppath}: a classic internet rule cannot reference a group")
                    target = groups.get(item.group)
                    if target is None:
                        add(f"{ppath}.group: group {shown(item.group)} is not defined in security_groups")
                        continue
                    want = item.account if item.account is not None else host.account
                    have = doc.group_account(item.group)
                    if want != have:
                        add(f"{ppath}.account: group {shown(item.group)} belongs to account "
                            f"{shown(have)}, not {shown(want)}")
                else:
                    if classic and item.version == 6:
                        add(f"{ppath}: IPv6 {item} on a classic network")
                    elif (classic and rule.nic == "intranet" and rule.direction == "inbound"
                          and item.prefixlen != 32):
                        add(f"{ppath}: a classic intranet inbound rule authorises a single "
                            f"IPv4 address (a.b.c.d/32), not {item}")
    return errors


def _networks(peer):
    for item in peer or ():
        if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            yield item
