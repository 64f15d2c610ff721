"""``sgagent validate``: whether a host document is valid, said as one line or as JSON.

No typer here: the entry point (:mod:`sgagent.cli`) runs a plain ``validate FILE [--json]``
with this module directly, so that checking a document costs the reader, the model and the
checks and not the command line's framework; ``validate`` through typer
(:mod:`sgagent.commands`, for its help and any other spelling) runs the same function."""

from __future__ import annotations

import json
from pathlib import Path

EXIT_REFUSED = 1


def validate(file: Path, as_json: bool = False) -> int:
    """Print the verdict on the document at ``file`` and return the exit code.  A refused
    document raises :class:`sgagent.load.DocumentError` (the entry point prints its errors),
    or with ``as_json`` is printed as JSON with its errors (exit 1)."""
    from .load import DocumentError, load_file
    try:
        doc = load_file(file)
    except DocumentError as exc:
        if not as_json:
            raise
        print(json.dumps({"file": str(file), "valid": False,
                          "errors": [error_item(e) for e in exc.errors]}, indent=2))
        return EXIT_REFUSED
    groups = len(doc.security_groups)
    rules = sum(len(g.rules) for g in doc.security_groups.values())
    if as_json:
        print(json.dumps({"file": str(file), "valid": True, "nics": len(doc.host.nics),
                          "groups": groups, "rules": rules, "errors": []}, indent=2))
        return 0
    from .console import line
    line(f"{file}: valid ({len(doc.host.nics)} NICs, {groups} groups, {rules} rules)", "green")
    return 0


def error_item(error: str) -> dict[str, str]:
    """``security_groups.sg.rules[0].ports: 70000 is not a port`` as its path and message (an
    error about the file itself, e.g. not found, has no path)."""
    path, sep, message = error.partition(": ")
    if not sep or " " in path and not path.startswith("("):
        return {"path": "", "message": error}
    return {"path": path, "message": message}
