"""The :class:`Sandbox`: a host namespace, its wires and peers, servers, probes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from typing import Any, Callable, Sequence, TypeVar

from .. import netns
from .addressing import IPAddress, parse_addr
from .cleanup import register, unregister
from .errors import SandboxError
from .httpd import HttpServer, curl_argv
from .listeners import ListenerHub
from .loopthread import LoopThread
from .peers import PeerRouteLock
from .probes import (
    DIRECTIONS,
    Outcome,
    Probe,
    Transit,
    probe_icmp,
    probe_tcp,
    probe_udp,
    validate_probe,
    validate_transit,
)
from .sockets import client_socket
from .ssh import SshServer, ssh_argv
from .topology import HOST_SIDE, Topology
from .workload import Workload

__all__ = ["Sandbox", "DEFAULT_CONCURRENCY"]

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_CONCURRENCY = 64
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-]{0,39}$")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}


class _Plan:
    """One validated probe: who sends what where."""

    __slots__ = ("probe", "family", "peer", "client_ns", "source", "target", "listen_side")

    def __init__(self, sb: "Sandbox", p: Probe) -> None:
        self.probe = p
        self.family = validate_probe(p)
        nic = sb._topology.nic(p.nic)
        self.peer: IPAddress = sb._topology.placement(p.nic, p.peer).address
        if p.workload is None:
            local_side, local_ns, local_addr = HOST_SIDE, sb.host_ns, str(nic.host(self.family).ip)
        else:
            wl = sb.workload(p.workload)
            local_side, local_ns, local_addr = wl.ifname, wl.ns, wl.address(self.family)
        if p.direction == "inbound":
            self.client_ns = sb._topology.peer_ns_names[p.nic]
            self.source: str | None = str(self.peer)
            self.target = local_addr
            self.listen_side = local_side
        else:
            self.client_ns = local_ns
            self.source = None
            self.target = str(self.peer)
            self.listen_side = p.nic


class Sandbox:
    """Network namespaces standing in for a host with NICs and their peers.

    ``Sandbox([("eth0", "intranet"), ("eth1", "internet")])`` builds one host
    namespace (``PREFIX-h``) with NICs ``eth0``/``eth1`` and one peer
    namespace per NIC (``PREFIX-p0``, ``PREFIX-p1``).  ``prefix`` defaults to
    ``sgt`` + 6 random hex digits.  Use as a context manager; everything
    (processes, namespaces, temp files) is removed on exit, on exceptions,
    at interpreter exit and on SIGTERM.
    """

    def __init__(self, nics: Sequence[tuple[str, str]], prefix: str | None = None) -> None:
        if prefix is None:
            prefix = "sgt" + secrets.token_hex(3)
        if not _PREFIX_RE.match(prefix):
            raise SandboxError(f"invalid sandbox prefix {prefix!r} (up to 40 of [A-Za-z0-9_.-])")
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (network namespaces, veth, nft)")
        if shutil.which("ip") is None:
            raise SandboxError("the 'ip' command (iproute2) is not installed")
        self.prefix = prefix
        self._topology = Topology(list(nics), prefix)
        self._closed = False
        self._workdir: str | None = None
        self._listeners: ListenerHub | None = None
        self._loop: LoopThread | None = None
        self._procs: concurrent.futures.ThreadPoolExecutor | None = None
        self._routes = PeerRouteLock(self._topology)
        self._sshd: dict[int, SshServer] = {}
        self._http: dict[int, HttpServer] = {}
        self._workloads: list[Workload] = []
        self._routed = False
        register(self)
        try:
            self._workdir = tempfile.mkdtemp(prefix=f"{prefix}-")
            self._topology.build()
            self._listeners = ListenerHub(f"{prefix}-listeners")
            self._loop = LoopThread(f"{prefix}-probes")
            self._procs = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix=f"{prefix}-proc")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Tear everything down.  Idempotent; never raises (errors are logged)."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []

        def step(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        if self._loop is not None:
            step("probe loop", self._loop.close)
        if self._procs is not None:
            step("process pool", functools.partial(self._procs.shutdown, wait=False, cancel_futures=True))
        for srv in self._http.values():
            step(f"http server {srv.port}", srv.stop)
        for sshd in self._sshd.values():
            step(f"sshd {sshd.port}", sshd.stop)
        if self._listeners is not None:
            step("listeners", self._listeners.close)
        errors += self._topology.teardown()
        if self._workdir is not None:
            step("temp dir", functools.partial(shutil.rmtree, self._workdir, ignore_errors=True))
        unregister(self)
        for err in errors:
            log.warning("sandbox %s teardown: %s", self.prefix, err)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxError(f"sandbox {self.prefix} is closed")

    # ----------------------------------------------------------- topology
    @property
    def host_ns(self) -> str:
        """Name of the host network namespace."""
        return self._topology.host_ns

    def peer_ns(self, ifname: str) -> str:
        """Name of the peer namespace at the other end of NIC ``ifname``."""
        return self._topology.peer_ns_names[self._topology.nic(ifname).ifname]

    @property
    def namespaces(self) -> list[str]:
        """All namespaces of this sandbox (host first)."""
        return self._topology.all_namespaces

    @property
    def nics(self) -> list[tuple[str, str]]:
        """The ``(ifname, role)`` list the sandbox was built from."""
        return [(p.ifname, p.role) for p in self._topology.plans]

    def nic_address(self, ifname: str, family: int = 4) -> str:
        """The host's address on ``ifname`` (no prefix), e.g. ``10.1.0.10``."""
        return str(self._topology.nic(ifname).host(family).ip)

    def nic_network(self, ifname: str, family: int = 4) -> str:
        """The subnet of ``ifname``, e.g. ``10.1.0.0/16``."""
        return str(self._topology.nic(ifname).host(family).network)

    def gateway(self, ifname: str, family: int = 4) -> str:
        """The gateway (peer namespace end of the wire) of ``ifname``."""
        return str(self._topology.nic(ifname).gateway(family))

    def add_peer(self, ifname: str, peer: str) -> None:
        """Configure ``peer`` on NIC ``ifname`` now (probes do this on demand)."""
        self._check_open()
        self._topology.ensure_peers([(ifname, parse_addr(peer))])

    def _ns(self, side: str) -> str:
        return self._topology.ns_of_side(side)

    def call(self, side: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn`` in a thread inside the namespace of ``side`` ("host" or a NIC)."""
        self._check_open()
        return self._topology.executor(self._ns(side)).call(fn, *args, **kw)

    def argv(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the namespace of ``side``."""
        return netns.argv_in(self._ns(side), argv)

    def run(self, side: str, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True,
            input: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace of ``side`` and capture its output (text)."""
        self._check_open()
        proc = subprocess.run(
            self.argv(side, argv), input=input, capture_output=True, text=True, timeout=timeout,
            env=_clean_env(),
        )
        if check and proc.returncode != 0:
            raise SandboxError(
                f"{' '.join(argv)} in {self._ns(side)} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    # ----------------------------------------------------------- listeners
    def ensure_tcp_listener(self, side: str, port: int) -> None:
        """Accept TCP connections on ``port`` in ``side`` ("host" or a NIC's peer side)."""
        self._check_open()
        ns = self._ns(side)
        assert self._listeners is not None
        self._listeners.ensure(ns, self._topology.executor(ns), "tcp", port)

    def ensure_udp_echo(self, side: str, port: int) -> None:
        """Echo UDP datagrams on ``port`` in ``side`` ("host" or a NIC's peer side)."""
        self._check_open()
        ns = self._ns(side)
        assert self._listeners is not None
        self._listeners.ensure(ns, self._topology.executor(ns), "udp", port)

    # ----------------------------------------------------------- real servers
    def start_sshd(self, port: int = 22) -> None:
        """Run a real sshd in the host namespace (idempotent per port)."""
        self._check_open()
        if port in self._sshd:
            return
        assert self._listeners is not None and self._workdir is not None
        self._listeners.release(self.host_ns, "tcp", port)
        self._sshd[port] = SshServer(self.host_ns, self._topology.executor(self.host_ns), self._workdir, port)

    def start_http(self, port: int = 80, tls: bool = False) -> None:
        """Run a real HTTP (``tls=True``: HTTPS, self-signed) server in the host namespace."""
        self._check_open()
        if port in self._http:
            if self._http[port].tls != tls:
                raise SandboxError(f"port {port} already serves {'HTTPS' if not tls else 'HTTP'}")
            return
        assert self._listeners is not None
        self._listeners.release(self.host_ns, "tcp", port)
        self._http[port] = HttpServer(self._topology.executor(self.host_ns), port, tls, self._workdir)

    # ----------------------------------------------------------- client probes
    def _run_client(self, ifname: str, peer: str, ns: str, argv: list[str], timeout: float) -> bool:
        """Run a client command in ``ns`` while the peer's route points at ``ifname``."""
        self._check_open()
        addr = parse_addr(peer)
        self._topology.ensure_peers([(ifname, addr)])
        assert self._loop is not None and self._procs is not None
        procs = self._procs

        def run() -> bool:
            try:
                proc = subprocess.run(
                    netns.argv_in(ns, argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, timeout=timeout, env=_clean_env(),
                )
            except subprocess.TimeoutExpired:
                return False
            if proc.returncode != 0:
                log.debug("%s -> %d: %s", argv[0], proc.returncode, proc.stderr.decode(errors="replace").strip())
            return proc.returncode == 0

        async def go() -> bool:
            async with self._routes.hold(ifname, addr):
                return await asyncio.get_running_loop().run_in_executor(procs, run)

        return self._loop.run(go(), timeout + 10.0)

    def ssh_ok(self, ifname: str, peer: str, timeout: float = 3.0, port: int | None = None) -> bool:
        """Can ``peer`` (on NIC ``ifname``) log in to the host's sshd with the client key?"""
        if not self._sshd:
            raise SandboxError("no sshd running; call start_sshd() first")
        server = self._sshd[port] if port is not None else next(iter(self._sshd.values()))
        fam = parse_addr(peer).version
        argv = ssh_argv(server.client_key, peer, self.nic_address(ifname, fam), server.port, timeout)
        return self._run_client(ifname, peer, self.peer_ns(ifname), argv, timeout + 2.0)

    def http_ok(self, ifname: str, peer: str, port: int = 80, tls: bool = False, timeout: float = 2.0) -> bool:
        """Does a real curl from ``peer`` get 2xx from the host's server on ``port``?"""
        fam = parse_addr(peer).version
        argv = curl_argv(peer, self.nic_address(ifname, fam), port, tls, timeout)
        return self._run_client(ifname, peer, self.peer_ns(ifname), argv, timeout + 3.0)

    def ping_ok(self, ifname: str, peer: str, family: int | None = None, direction: str = "inbound",
                timeout: float = 1.0) -> bool:
        """Real ``ping -c 1``: inbound peer -> host (``-I peer``) or outbound host -> peer."""
        fam = parse_addr(peer).version
        if family is not None and family != fam:
            raise ValueError(f"peer {peer} is IPv{fam}, not IPv{family}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}")
        wait = str(max(1, int(round(timeout))))
        base = ["ping", f"-{fam}", "-n", "-q", "-c", "1", "-W", wait]
        if direction == "inbound":
            argv, ns = [*base, "-I", peer, self.nic_address(ifname, fam)], self.peer_ns(ifname)
        else:
            argv, ns = [*base, peer], self.host_ns
        return self._run_client(ifname, peer, ns, argv, timeout + 2.0)

    # ----------------------------------------------------------- socket probes
    def probe(self, p: Probe, timeout: float = 1.0) -> Outcome:
        """Run one probe; see :class:`Outcome`."""
        return self.probe_many([p], timeout)[0]

    def probe_many(self, probes: Sequence[Probe], timeout: float = 1.0,
                   concurrency: int = DEFAULT_CONCURRENCY) -> list[Outcome]:
        """Run probes concurrently (at most ``concurrency`` at once); results in input order.

        Probes of one peer address on different NICs run one NIC after the
        other (the host route of the peer must be switched); everything else
        runs in parallel.
        """
        self._check_open()
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        plans = [_Plan(self, p) for p in probes]
        if not plans:
            return []
        self._topology.ensure_peers(sorted({(pl.probe.nic, pl.peer) for pl in plans}, key=str))
        for side, proto, port in dict.fromkeys(
            (pl.listen_side, pl.probe.protocol, pl.probe.port) for pl in plans if pl.probe.port
        ):
            if proto == "tcp":
                self.ensure_tcp_listener(side, port)  # type: ignore[arg-type]
            else:
                self.ensure_udp_echo(side, port)  # type: ignore[arg-type]
        # group: peer -> nic -> indices (in first-seen order)
        groups: dict[IPAddress, dict[str, list[int]]] = {}
        for i, pl in enumerate(plans):
            groups.setdefault(pl.peer, {}).setdefault(pl.probe.nic, []).append(i)
        results: list[Outcome | None] = [None] * len(plans)
        executors = {ns: self._topology.executor(ns) for ns in {pl.client_ns for pl in plans}}

        async def one(sem: asyncio.Semaphore, i: int) -> None:
            pl = plans[i]
            ex = executors[pl.client_ns]

            def make_socket(family: int, kind: int, proto: int) -> socket.socket:
                return ex.call(client_socket, family, kind, proto, pl.source)

            async with sem:
                if pl.probe.protocol == "tcp":
                    res = await probe_tcp(make_socket, pl.family, pl.target, pl.probe.port, timeout)  # type: ignore[arg-type]
                elif pl.probe.protocol == "udp":
                    res = await probe_udp(make_socket, pl.family, pl.target, pl.probe.port, timeout)  # type: ignore[arg-type]
                else:
                    res = await probe_icmp(make_socket, pl.family, pl.target, timeout)
            results[i] = res

        async def per_peer(sem: asyncio.Semaphore, peer: IPAddress, by_nic: dict[str, list[int]]) -> None:
            for nic, idx in by_nic.items():
                async with self._routes.hold(nic, peer):
                    await asyncio.gather(*(one(sem, i) for i in idx))

        async def main() -> None:
            sem = asyncio.Semaphore(max(1, concurrency))
            await asyncio.gather(*(per_peer(sem, peer, by_nic) for peer, by_nic in groups.items()))

        # generous bound: every probe times out, one after the other per NIC group
        waves = sum(len(by_nic) for by_nic in groups.values()) + len(plans) // max(1, concurrency) + 1
        assert self._loop is not None
        self._loop.run(main(), timeout * waves + 30.0)
        if None in results:  # pragma: no cover - gather would have raised
            raise SandboxError(f"{results.count(None)} probe(s) produced no result")
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------- between NICs
    def route_between_nics(self) -> None:
        """Route the NICs' peers to each other through the host, as a hypervisor routes
        between its VMs (forwarding on in the host, every peer namespace's default route via
        the host's address on its wire).  A packet from the peer of NIC ``a`` to the peer of
        NIC ``b`` then crosses the host's forward hook, entering by ``a``, leaving by ``b``."""
        self._check_open()
        self._topology.route_between_nics()
        self._routed = True

    def probe_transit(self, transits: Sequence[Transit], timeout: float = 1.0,
                      concurrency: int = DEFAULT_CONCURRENCY) -> list[Outcome]:
        """Run forwarded flows concurrently, each from the own address (the gateway) of
        ``src_nic``'s peer namespace to the one of ``dst_nic``'s; results in input order.
        Needs :meth:`route_between_nics` first."""
        self._check_open()
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if not self._routed:
            raise SandboxError("call route_between_nics() before probe_transit()")
        for t in transits:
            validate_transit(t)
            for nic in (t.src_nic, t.dst_nic):
                self._topology.nic(nic)  # SandboxError for an unknown NIC
        for t in dict.fromkeys(t for t in transits if t.port):
            if t.protocol == "tcp":
                self.ensure_tcp_listener(t.dst_nic, t.port)  # type: ignore[arg-type]
            else:
                self.ensure_udp_echo(t.dst_nic, t.port)  # type: ignore[arg-type]
        results: list[Outcome | None] = [None] * len(transits)

        async def one(sem: asyncio.Semaphore, i: int) -> None:
            t = transits[i]
            ex = self._topology.executor(self.peer_ns(t.src_nic))
            source, target = self.gateway(t.src_nic, t.family), self.gateway(t.dst_nic, t.family)

            def make_socket(family: int, kind: int, proto: int) -> socket.socket:
                return ex.call(client_socket, family, kind, proto, source)

            async with sem:
                if t.protocol == "tcp":
                    res = await probe_tcp(make_socket, t.family, target, t.port, timeout)  # type: ignore[arg-type]
                elif t.protocol == "udp":
                    res = await probe_udp(make_socket, t.family, target, t.port, timeout)  # type: ignore[arg-type]
                else:
                    res = await probe_icmp(make_socket, t.family, target, timeout)
            results[i] = res

        async def main() -> None:
            sem = asyncio.Semaphore(max(1, concurrency))
            await asyncio.gather(*(one(sem, i) for i in range(len(transits))))

        assert self._loop is not None
        self._loop.run(main(), timeout * (len(transits) // max(1, concurrency) + 1) + 30.0)
        if None in results:  # pragma: no cover - gather would have raised
            raise SandboxError(f"{results.count(None)} transit(s) produced no result")
        return results  # type: ignore[return-value]

    # ----------------------------------------------------------- workloads
    def add_workload(self, ifname: str = "wl0", addr4: str = "10.250.0.2/24", addr6: str = "fd00:ff::2/64") -> Workload:
        """A namespace behind an extra, unmanaged host NIC ``ifname``, with forwarding on.

        Peers reaching the workload's addresses cross the host's forward hook.
        Returns the :class:`Workload` (``.ns``, ``.address(family)``).
        """
        self._check_open()
        wl = Workload(self._topology, ifname, addr4, addr6, len(self._workloads))
        wl.build()  # on failure, the half-built namespace goes with the sandbox
        self._workloads.append(wl)
        return wl

    def workload(self, ifname: str) -> Workload:
        """The workload added with ``add_workload(ifname)``."""
        for wl in self._workloads:
            if wl.ifname == ifname:
                return wl
        raise SandboxError(f"no workload {ifname!r}; add it with add_workload()")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Sandbox {self.prefix} {self.nics} {state}>"
