"""``sgagent fleet validate|diff|push|status``: a fleet on one etcd (docs/DAEMON.md).

Exit codes as the other commands': 0 done (valid; nothing to change; pushed; every host
current), 1 an error (the fleet refused, with every error and its path; etcd unreachable; a
concurrent writer) -- nothing is written then --, 2 changes pending (``diff``) or hosts behind
(``status``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from ..clihelp import Command, Group

app = typer.Typer(cls=Group, no_args_is_help=True, help="A fleet on one etcd: check, compare, publish, "
                  "and see what every host enforces.")

FleetArg = typer.Argument(..., metavar="FLEET",
                          help="fleet document: a YAML/JSON file or a directory of them")
EndpointsOpt = typer.Option(None, "--endpoint", "-e", metavar="URL",
                            help="etcd client URL (repeatable; default: the config's, or "
                                 "http://127.0.0.1:2379)")
PrefixOpt = typer.Option(None, "--prefix", metavar="PREFIX", help="key prefix (default: the config's, or /sgagent)")
ConfigOpt = typer.Option(None, "--config", "-c", metavar="FILE",
                         help="take etcd's endpoints, prefix and TLS files from this daemon "
                              "config's etcd source")
JsonOpt = typer.Option(False, "--json", help="print the result as JSON")


def _fail(message: str, errors: list[str] | None = None) -> None:
    typer.echo(message, err=True)
    for e in errors or []:
        typer.echo(f"  {e}", err=True)
    raise typer.Exit(1)


def _store(endpoints: Optional[List[str]], prefix: Optional[str], config: Optional[Path]) -> Any:
    from pydantic import ValidationError

    from ..daemon.config import EtcdSource, load_config
    from ..load import pydantic_errors
    from .store import FleetStore
    base: dict[str, Any] = {}
    if config is not None:
        cfg = load_config(config)
        if cfg.source.etcd is None:
            _fail(f"error: {config}: source.etcd: the config has no etcd source")
        base = cfg.source.etcd.model_dump(by_alias=True)
    if endpoints:
        base["endpoints"] = endpoints
    if prefix is not None:
        base["prefix"] = prefix
    try:
        return FleetStore(EtcdSource.model_validate(base))
    except ValidationError as exc:
        _fail("error: " + "; ".join(e.replace("(document)", "--endpoint/--prefix")
                                    for e in pydantic_errors(exc)))


def _load(path: Path) -> Any:
    from .document import load_fleet
    return load_fleet(path)


def _run(fn: Any) -> Any:
    from .publish import Refused
    from .store import FleetError
    try:
        return fn()
    except Refused as exc:
        _fail(str(exc), exc.errors)
    except FleetError as exc:
        _fail(f"error: {exc}")


@app.command(cls=Command)
def validate(fleet: Path = FleetArg,
             endpoints: Optional[List[str]] = EndpointsOpt, prefix: Optional[str] = PrefixOpt,
             config: Optional[Path] = ConfigOpt,
             registered: bool = typer.Option(False, "--registered", help="count the addresses "
                                             "the agents registered in etcd as members too")
             ) -> None:
    """Assemble and validate every host's document; every error with its place in the fleet."""
    from .publish import validate as check
    f = _load(fleet)
    state = _run(lambda: _store(endpoints, prefix, config).read(("endpoints",))) \
        if registered else None
    errors = check(f, state)
    if errors:
        _fail(f"{fleet}: refused, {len(errors)} error{'' if len(errors) == 1 else 's'}", errors)
    typer.echo(f"{fleet}: valid ({len(f.hosts)} hosts, {len(f.groups)} groups)")


@app.command(cls=Command)
def diff(fleet: Path = FleetArg, endpoints: Optional[List[str]] = EndpointsOpt,
         prefix: Optional[str] = PrefixOpt, config: Optional[Path] = ConfigOpt,
         as_json: bool = JsonOpt) -> None:
    """What a push would change, per host and NIC; exit 2 if anything."""
    from .publish import plan
    f = _load(fleet)
    p = _run(lambda: plan(f, _store(endpoints, prefix, config)))
    if as_json:
        typer.echo(json.dumps({"revision": p.state.revision,
                               "keys": {"put": sorted(p.puts), "delete": p.deletes},
                               "hosts": [d.as_json() for d in p.diffs]}, indent=2))
    else:
        for d in p.diffs:
            typer.echo("\n".join(d.lines()))
        typer.echo(f"{len(p.puts)} keys to write, {len(p.deletes)} to delete, "
                   f"{len(p.diffs)} hosts affected (etcd at revision {p.state.revision})")
    if p.puts or p.deletes:
        raise typer.Exit(2)


@app.command(cls=Command)
def push(fleet: Path = FleetArg, endpoints: Optional[List[str]] = EndpointsOpt,
         prefix: Optional[str] = PrefixOpt, config: Optional[Path] = ConfigOpt,
         as_json: bool = JsonOpt) -> None:
    """Write the fleet to etcd in one transaction, if every host's document is valid and
    nobody else wrote since it was read."""
    from .publish import push as do_push
    f = _load(fleet)
    p, rev = _run(lambda: do_push(f, _store(endpoints, prefix, config)))
    if as_json:
        typer.echo(json.dumps({"revision": rev, "written": len(p.puts),
                               "deleted": len(p.deletes),
                               "hosts": [d.host for d in p.diffs]}, indent=2))
    elif rev is None:
        typer.echo(f"nothing to push: etcd already holds this fleet (revision "
                   f"{p.state.revision})")
    else:
        typer.echo(f"pushed at revision {rev}: {len(p.puts)} keys written, {len(p.deletes)} "
                   f"deleted, {len(p.diffs)} hosts affected")


@app.command(cls=Command)
def status(fleet: Optional[Path] = typer.Argument(
               None, metavar="FLEET", help="also list the fleet's hosts not pushed yet"),
           endpoints: Optional[List[str]] = EndpointsOpt, prefix: Optional[str] = PrefixOpt,
           config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Every host with the revision it applied; exit 2 if any is behind or unknown."""
    from .publish import status as read_status
    hosts = list(_load(fleet).hosts) if fleet is not None else []
    s = _run(lambda: read_status(_store(endpoints, prefix, config), hosts))
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        typer.echo(f"etcd at revision {s['revision']}: {len(s['hosts'])} hosts, "
                   f"{len(s['hosts']) - len(s['behind'])} current")
        for e in s["hosts"]:
            rev = e["applied_revision"]
            typer.echo(f"  {e['host']}: {e['state']}" +
                       (f" (applied revision {rev} at {e['applied_at']})" if rev else ""))
    if s["behind"]:
        raise typer.Exit(2)
