"""The ``sgagent`` commands (typer).  Each command imports the modules it needs when it runs,
so that a command loads only its own part of sgagent: ``validate`` the document model and its
checks, ``compile`` also the compiler and the renderer, the kernel commands the nftables backend.
The entry point (which answers ``--version`` itself) and the mapping of errors to exit codes
are in :mod:`sgagent.cli`."""

from __future__ import annotations

import errno
import json
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from . import __version__
from .clihelp import Command, Group

if TYPE_CHECKING:
    from .evaluator import Packet
    from .model import Document
    from .progress import Progress

# Exit codes (README "Exit codes", docs/DECISIONS.md): 0 done / nothing to change, 1 a user
# error or a refused document (usage errors too), 2 changes pending (diff, apply --dry-run) or
# findings (lint), 3 nothing applied (status).
EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_NOT_APPLIED = 0, 1, 2, 3
EXIT_FINDINGS = EXIT_CHANGES  # lint: something to look at (DECISIONS 22)


app = typer.Typer(cls=Group, no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Enforce cloud-style security groups with nftables.")
command = partial(app.command, cls=Command)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """Enforce cloud-style security groups with nftables."""


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit 1."""


JsonOpt = typer.Option(False, "--json", help="print the result as JSON")
NetnsOpt = typer.Option(None, "--netns", metavar="NAME", help="work inside this named network namespace (ip netns)")


def _load(path: Path, progress: Progress | None = None) -> Document:
    """The document of ``path``; with ``progress``, its stages: parse (the text), validate."""
    if progress is None:
        from .load import load_file
        return load_file(path)
    from .load import MAX_BYTES, parse_data, parse_text, read_file
    progress.stage("parse")
    raw = read_file(path, MAX_BYTES)
    if len(raw) > MAX_BYTES:
        from .load import parse_bytes
        return parse_bytes(raw, str(path))  # refused for its size, as load_file refuses it
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        from .load import parse_bytes
        return parse_bytes(raw, str(path))  # refused, in load_file's words
    data = parse_text(text, str(path))
    progress.stage("validate")
    return parse_data(data, str(path))


def _progress(stages: list[str], as_json: bool = False) -> Progress:
    from .progress import for_command
    return for_command(stages, as_json=as_json)


def _backend(name: str, netns_name: str | None, rendering: str = "sets"):
    from .backends import UnknownBackend, make_backend
    try:
        return make_backend(name, netns_name, rendering)
    except UnknownBackend as exc:
        raise UserError(str(exc)) from None


@command()
def validate(file: Path = typer.Argument(..., metavar="FILE", help="host document (YAML or JSON)"),
             as_json: bool = typer.Option(False, "--json", help="print the result as JSON")
             ) -> None:
    """Check a host document; exit 0 if valid, 1 with every error and its path if not."""
    from .validation import validate as check
    rc = check(file, as_json)
    if rc:
        raise typer.Exit(rc)


@command()
def schema() -> None:
    """Print the host document's JSON Schema."""
    from .model import Document
    typer.echo(json.dumps(Document.model_json_schema(mode="validation"), indent=2))


RenderingOpt = typer.Option("sets", "--rendering", metavar="sets|linear",
                            help="sets (verdict maps, constant per-packet cost) | linear")


@command("compile")
def compile_(file: Path = typer.Argument(..., metavar="FILE", help="host document"),
             backend: str = typer.Option("nftables", metavar="NAME", help="nftables | iptables | auto"),
             rendering: str = RenderingOpt) -> None:
    """Print the exact ruleset apply would load (needs no root)."""
    from .backends import UnknownBackend, render_text
    from .compiler import compile_document
    with _progress(["parse", "validate", "compile", "render"]) as progress:
        doc = _load(file, progress)
        progress.stage("compile")
        rs = compile_document(doc)
        progress.stage("render")
        try:
            text = render_text(backend, rs, rendering)
        except UnknownBackend as exc:
            raise UserError(str(exc)) from None
    typer.echo(text, nl=False)


@command()
def apply(file: Path = typer.Argument(..., metavar="FILE", help="host document"),
          netns: Optional[str] = NetnsOpt,
          dry_run: bool = typer.Option(False, "--dry-run",
                                       help="check with the kernel and show the diff; change nothing"),
          backend: str = typer.Option("nftables", metavar="NAME", help="nftables | iptables | auto"),
          rendering: str = RenderingOpt, as_json: bool = JsonOpt) -> None:
    """Apply a host document atomically (--dry-run: exit 2 if changes are pending, 0 if none)."""
    from .compiler import compile_document
    stages = ["parse", "validate", "compile", "apply"] + (["diff"] if dry_run else [])
    with _progress(stages, as_json) as progress:
        doc = _load(file, progress)
        progress.stage("compile")
        rs = compile_document(doc)
        del doc   # not needed any more: its memory serves the rendering and the batch
        progress.stage("apply")
        with _backend(backend, netns, rendering) as be:
            if dry_run:
                be.apply(rs, dry_run=True)
                progress.stage("diff")
                diff = be.diff(rs)
            else:
                result = be.apply(rs)
    if dry_run:
        if as_json:
            typer.echo(json.dumps({"file": str(file), "dry_run": True, "accepted": True,
                                   "changes": bool(diff), "diff": diff}, indent=2))
        else:
            typer.echo(diff if diff else "no change", nl=not diff)
            typer.echo("dry run: the kernel accepts this ruleset; nothing was changed")
        if diff:
            raise typer.Exit(EXIT_CHANGES)
        return
    decisions = sum(len(c.decisions) for c in rs.chains)
    if as_json:
        typer.echo(json.dumps({"file": str(file), "applied": True, "decisions": decisions,
                               "nics": len(rs.nics), "counters": result.counters}, indent=2))
        return
    typer.echo(f"applied {file}: {decisions} rule decisions on {len(rs.nics)} NICs, "
               f"{result.counters} counters")


@command()
def diff(file: Path = typer.Argument(..., metavar="FILE", help="host document"),
         netns: Optional[str] = NetnsOpt,
         backend: str = typer.Option("nftables", metavar="NAME", help="nftables | iptables | auto"),
         rendering: str = RenderingOpt, as_json: bool = JsonOpt) -> None:
    """Show what apply would change in the live ruleset; exit 0 if nothing, 2 if changes are
    pending."""
    from .compiler import compile_document
    with _progress(["parse", "validate", "compile", "diff"], as_json) as progress:
        doc = _load(file, progress)
        progress.stage("compile")
        rs = compile_document(doc)
        progress.stage("diff")
        with _backend(backend, netns, rendering) as be:
            out = be.diff(rs)
    if as_json:
        typer.echo(json.dumps({"file": str(file), "changes": bool(out), "diff": out}, indent=2))
    else:
        typer.echo(out if out else "no change", nl=not out)
    if out:
        raise typer.Exit(EXIT_CHANGES)


@command()
def explain(file: Path = typer.Argument(..., metavar="FILE", help="host document"),
            nic: str = typer.Option(..., "--nic", metavar="NAME",
                                    help="interface name"),
            direction: str = typer.Option(..., "--direction", metavar="inbound|outbound",
                                    help="inbound | outbound"),
            peer: str = typer.Option(..., "--peer", metavar="ADDRESS",
                                    help="remote address"),
            protocol: str = typer.Option(..., "--protocol", metavar="PROTOCOL",
                                    help="tcp | udp | icmp | icmpv6 | gre"),
            port: Optional[int] = typer.Option(None, "--port", metavar="PORT",
                                    help="destination port"),
            icmp_type: Optional[int] = typer.Option(None, "--icmp-type", metavar="TYPE",
                                                    help="ICMP type (default: echo request)"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Which rule decides a packet, and the verdict (and the audit rules it matched)."""
    from .evaluator import evaluate
    doc = _load(file)
    pkt = make_packet(doc, nic, direction, peer, protocol, port, icmp_type)
    v = evaluate(doc, pkt)
    if as_json:
        typer.echo(json.dumps({"verdict": v.verdict, "group": v.group, "rule": v.rule,
                               "reason": v.reason, "log": v.log,
                               "audit": [{"group": a.group, "rule": a.rule,
                                          "would": a.policy} for a in v.audits]}))
    else:
        from .console import line, style_of
        from .explain import decided_by, notes
        line(f"{v.verdict} ({decided_by(doc, pkt, v)})" + (", logged" if v.log else ""),
             style_of(v.verdict))
        for note in notes(doc, pkt, v):
            typer.echo(f"  note: {note}")
        for a in v.audits:  # SEMANTICS section 9: audit rules the packet reached, beside it
            name = a.rule if a.rule.startswith(a.group + "/") else f"{a.group}/{a.rule}"
            typer.echo(f"  audit: {name} would {a.policy}")


def make_packet(doc: Document, nic: str, direction: str, peer: str, protocol: str,
                port: int | None, icmp_type: int | None) -> Packet:
    import ipaddress

    from .evaluator import Packet
    names = [n.name for n in doc.host.nics]
    if nic not in names:
        raise UserError(f"--nic: {nic!r} is not a NIC of this host ({', '.join(names)})")
    from .model import DIRECTIONS  # the document's spellings: ingress, egress, in, out, ...
    if direction.strip().lower() not in DIRECTIONS:
        raise UserError(f"--direction: {direction!r} is not inbound or outbound")
    direction = DIRECTIONS[direction.strip().lower()]
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        raise UserError(f"--peer: {peer!r} is not an IP address") from None
    protocol = protocol.lower()
    if protocol not in ("tcp", "udp", "icmp", "icmpv6", "gre"):
        raise UserError(f"--protocol: {protocol!r} is not tcp, udp, icmp, icmpv6 or gre")
    if protocol == "icmp" and addr.version == 6 or protocol == "icmpv6" and addr.version == 4:
        raise UserError(f"--protocol: {protocol} does not go with an IPv{addr.version} peer")
    if protocol in ("tcp", "udp"):
        if port is None:
            raise UserError(f"--port: {protocol} needs a port")
        if not 1 <= port <= 65535:
            raise UserError(f"--port: {port} is not a port (1..65535)")
    elif port is not None:
        raise UserError(f"--port: {protocol} has no ports")
    if protocol in ("icmp", "icmpv6"):
        if icmp_type is None:
            icmp_type = 8 if protocol == "icmp" else 128
        if not 0 <= icmp_type <= 255:
            raise UserError(f"--icmp-type: {icmp_type} is not an ICMP type (0..255)")
    elif icmp_type is not None:
        raise UserError("--icmp-type: only for icmp and icmpv6")
    return Packet(nic, direction, addr, protocol, port, icmp_type)  # type: ignore[arg-type]


@command()
def logs(directory: Path = typer.Option(Path("/var/log/sgagent"), "--dir", metavar="DIR",
                                        help="where the daemon writes flows.log"),
         rule: Optional[str] = typer.Option(None, "--rule", metavar="ID", help="rule id"),
         group: Optional[str] = typer.Option(None, "--group", metavar="NAME", help="group"),
         verdict: Optional[str] = typer.Option(
             None, "--verdict", metavar="VERDICT",
             help="accept | drop | reject | would-accept | would-drop | would-reject | would"),
         peer: Optional[str] = typer.Option(None, "--peer", metavar="ADDRESS|CIDR",
                                            help="remote side"),
         since: Optional[str] = typer.Option(None, "--since", metavar="WHEN",
                                             help="30s, 10m, 2h, 1d or an ISO 8601 time"),
         follow: bool = typer.Option(False, "--follow", "-f", help="wait for new records"),
         as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Flow records of logged and audit rules (SEMANTICS section 9), filtered."""
    from .flowlog import query
    try:
        keep = query.make_filter(rule, group, verdict, peer, since)
    except query.QueryError as exc:
        raise UserError(str(exc)) from None
    if not directory.is_dir():
        raise UserError(f"--dir: {directory} is not a directory (flow_logs.directory of the "
                        "daemon's config; with output: journal, use journalctl -t sgagent-flow)")
    records = query.follow(directory, keep) if follow else query.read(directory, keep)
    for rec in records:
        typer.echo(json.dumps(rec, separators=(",", ":")) if as_json else query.text(rec))


@command()
def status(netns: Optional[str] = NetnsOpt,
           as_json: bool = typer.Option(False, "--json", help="print JSON"),
           backend: str = typer.Option("nftables", metavar="NAME", help="nftables | iptables | auto")) -> None:
    """Live rules with their packet and byte counts; exit 3 if no sgagent ruleset is loaded."""
    from .nft.netlink import NetlinkError
    with _backend(backend, netns) as be:
        try:
            readings = be.counters()
        except NetlinkError as exc:
            if exc.errno == errno.EPERM:
                raise UserError("the kernel said 'Operation not permitted': run as root "
                                "(needs CAP_NET_ADMIN)") from None
            raise UserError(str(exc)) from None
    rows = [{"group": r.key.group, "rule": r.key.rule, "nic": r.key.nic,
             "direction": r.key.direction, "policy": r.key.policy,
             "packets": r.packets, "bytes": r.bytes} for r in readings]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        if not rows:
            raise typer.Exit(EXIT_NOT_APPLIED)
        return
    if not rows:
        typer.echo("no sgagent ruleset is loaded")
        raise typer.Exit(EXIT_NOT_APPLIED)
    from .console import table
    cols = ["nic", "direction", "group", "rule", "policy", "packets", "bytes"]
    table(cols, [[str(r[c]) if r[c] is not None else "-" for c in cols] for r in rows])
    variant = getattr(be, "variant", None)
    typer.echo(f"backend: {be.name}" + (f" ({variant})" if variant else ""))


@command()
def flush(netns: Optional[str] = NetnsOpt,
          backend: str = typer.Option("nftables", metavar="NAME", help="nftables | iptables | auto"),
          as_json: bool = JsonOpt) -> None:
    """Remove everything sgagent owns, nothing else."""
    with _backend(backend, netns) as be:
        removed = be.flush()
    if as_json:
        typer.echo(json.dumps({"removed": removed}))
        return
    typer.echo("removed the sgagent table" if removed else "nothing to remove")


@command()
def verify(file: Path = typer.Argument(..., metavar="FILE", help="host document"),
           timeout: float = typer.Option(1.0, metavar="SECONDS", help="seconds to wait for an answer to a probe"),
           strict: bool = typer.Option(False, "--strict",
                                       help="also fail (exit 1) if any rule went unprobed"),
           as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
           backend: str = typer.Option("nftables", metavar="NAME",
                                       help="nftables | iptables (auto: nftables in the sandbox)")) -> None:
    """Prove a document with real packets in a throw-away sandbox of namespaces; a coverage
    table says which rules were probed and why the others were not."""
    from .backends import BACKENDS
    from .verify import run_verify
    if backend not in BACKENDS:
        raise UserError(f"--backend: {backend!r} is not a backend (available: {', '.join(BACKENDS)})")
    with _progress(["parse", "validate", "plan", "sandbox", "apply", "probe"],
                   as_json) as progress:
        doc = _load(file, progress)
        report = run_verify(doc, timeout=timeout, progress=progress,
                            backend_name="nftables" if backend == "auto" else backend)
    if as_json:
        typer.echo(report.as_json())
    else:
        report.show()
    if not report.ok:
        raise typer.Exit(EXIT_ERROR)
    if strict and report.coverage is not None and not report.coverage.complete:
        c = report.coverage
        typer.echo(f"--strict: {c.total - c.probed} of {c.total} rules not probed", err=True)
        raise typer.Exit(EXIT_ERROR)


@command()
def lint(file: Path = typer.Argument(..., metavar="FILE", help="host document"),
         as_json: bool = JsonOpt) -> None:
    """Rules that can never decide a packet, duplicates, admin ports open to the world,
    vendor limits, ordering pitfalls (docs/LINT.md); exit 0 with no finding, 2 with
    findings."""
    from .lint import KINDS, lint as find, summary
    with _progress(["parse", "validate", "lint"], as_json) as progress:
        doc = _load(file, progress)
        progress.stage("lint")
        findings = find(doc)
    if as_json:
        typer.echo(json.dumps({"file": str(file), "findings": [f.as_dict() for f in findings],
                               "counts": {k: sum(f.kind == k for f in findings) for k in KINDS}},
                              indent=2))
    else:
        from .console import is_terminal, line, table
        if is_terminal():
            table(["where", "kind", "finding"], [[f.path, f.kind, f.message] for f in findings])
        else:
            for f in findings:
                typer.echo(f"{f.path}: {f.kind}: {f.message}")
        line(f"{file}: {summary(findings)}", "yellow" if findings else "green")
    if findings:
        raise typer.Exit(EXIT_FINDINGS)


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@command()
def completion(shell: Shell = typer.Argument(..., metavar="SHELL",
                                            help="the shell to complete in")) -> None:
    """Print the shell completion script (e.g. `sgagent completion bash >
    /etc/bash_completion.d/sgagent`; or --install-completion, for the shell you run)."""
    from typer.completion import get_completion_script
    typer.echo(get_completion_script(prog_name="sgagent", complete_var="_SGAGENT_COMPLETE",
                                     shell=shell.value))


@command()
def run(config: Optional[Path] = typer.Option(
        None, "--config", "-c", metavar="FILE",
        help="daemon config (default: a file source at /etc/sgagent/host.yaml)")) -> None:
    """Run the agent daemon: follow the source and keep the kernel in step (docs/DAEMON.md)."""
    from .daemon.config import default_config, load_config
    from .daemon.daemon import run as run_daemon
    cfg = load_config(config) if config is not None else default_config()
    rc = run_daemon(cfg)
    if rc:
        raise typer.Exit(rc)


@command(hidden=True)
def restore(config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE",
                                                  help="daemon config (for state_dir, netns)"),
            state_dir: Optional[str] = typer.Option(None, "--state-dir",
                                                    help="overrides the config's state_dir"),
            netns: Optional[str] = NetnsOpt,
            force: bool = typer.Option(False, "--force",
                                       help="replace the sgagent table even if it is loaded")
            ) -> None:
    """Apply the last known good document once (sgagent-restore.service, at boot); nothing
    is done if the sgagent table is already loaded, unless --force."""
    from .daemon.config import default_config, load_config
    from .daemon.restore import restore as do_restore
    cfg = load_config(config) if config is not None else default_config()
    result = do_restore(state_dir or cfg.state_dir, netns if netns is not None else cfg.netns,
                        force=force, backend_name=cfg.backend)
    typer.echo(result.message)


from .fleet.cli import app as fleet_app  # noqa: E402 - typer alone: its commands import lazily
app.add_typer(fleet_app, name="fleet")
