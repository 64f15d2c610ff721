"""The fleet document: every group once and every host's binding, in one YAML (or JSON) file or
in a directory of them (each file holding some of the groups and hosts; a name twice is an
error naming both files)::

    version: 1
    security_groups:
      sg-web: {rules: [...]}          # as under security_groups: in a host document
    hosts:
      web-1:                          # the binding, as under host: in a host document
        instance: i-web-1
        nics: [{name: eth0, security_groups: [sg-web], addresses: [10.0.1.1]}]

Files are read as host documents are (JSON, or YAML without anchors, aliases or tags; a key
twice is an error), and every error names its place in the fleet (``hosts.web-1.nics[0]...``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..load import DocumentError, parse_text, read_file

MAX_FILE = 64 * 1024 * 1024
HOST_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")  # a key name, as the etcd source's host
SECTIONS = ("version", "security_groups", "hosts")
SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Fleet:
    groups: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)   # "hosts.web-1" -> the file it is in
    origin: str = "fleet"


def load_fleet(path: str | Path) -> Fleet:
    """The fleet in ``path`` (a file, or a directory of ``*.yaml``, ``*.yml``, ``*.json``)."""
    p = Path(path)
    fleet = Fleet(origin=str(p))
    errors: list[str] = []
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
        if not files:
            raise DocumentError([f"(fleet): no {', '.join(SUFFIXES)} files in the directory"],
                                str(p))
    else:
        files = [p]
    for f in files:
        _add(fleet, f, errors, named=len(files) > 1 or p.is_dir())
    if errors:
        raise DocumentError(errors, str(p))
    return fleet


def _add(fleet: Fleet, f: Path, errors: list[str], named: bool) -> None:
    raw = read_file(f, MAX_FILE)
    where = f" (in {f.name})" if named else ""
    try:
        data = parse_text(raw.decode("utf-8"), str(f))
    except UnicodeDecodeError as exc:
        errors.append(f"(fleet){where}: not UTF-8 text (byte {exc.start})")
        return
    except DocumentError as exc:
        errors.extend(e.replace("(document)", "(fleet)", 1) + where for e in exc.errors)
        return
    if data is None:
        return
    if not isinstance(data, dict):
        errors.append(f"(fleet){where}: a fleet document is a mapping (version, "
                      f"security_groups, hosts)")
        return
    for key in data:
        if key not in SECTIONS:
            errors.append(f"{key}{where}: unknown field (a fleet document has "
                          f"{', '.join(SECTIONS)})")
    if data.get("version", 1) != 1:
        errors.append(f"version{where}: {data['version']!r} is not 1")
    for section, into in (("security_groups", fleet.groups), ("hosts", fleet.hosts)):
        part = data.get(section)
        if part is None:
            continue
        if not isinstance(part, dict):
            errors.append(f"{section}{where}: a mapping of names")
            continue
        for name, value in part.items():
            at = f"{section}.{name}"
            if section == "hosts" and not (isinstance(name, str) and HOST_NAME.match(name)):
                errors.append(f"{at}{where}: {name!r} is not a host name "
                              "(1-128 of A-Z a-z 0-9 _ . : @ -)")
                continue
            if not isinstance(name, str):
                errors.append(f"{at}{where}: {name!r} is not a group name")
                continue
            if name in into:
                first = fleet.files.get(at, "")
                errors.append(f"{at}{where}: defined twice (also in {first})")
                continue
            into[name] = value
            fleet.files[at] = f.name
