"""Notice within moments when anything but this process changes the sgagent table.

The kernel multicasts every committed nftables change to the ``NFNLGRP_NFTABLES`` netlink
group of its network namespace: the ``NFT_MSG_NEW*``/``DEL*`` messages of the batch, then one
``NFT_MSG_NEWGEN`` with the new generation id and the task that committed it
(``NFTA_GEN_PROC_PID``, ``NFTA_GEN_PROC_NAME``).  :class:`CommitListener` reads that group and
turns it into one :class:`Commit` per transaction: its generation, its task, and whether any
of its messages named ``table inet sgagent``.

:class:`TableMonitor` runs a listener on its own thread and calls ``on_change()`` -- "the table
may have drifted" -- when a commit that touched the table came from another process, at most
once per ``debounce`` seconds (the first such commit opens a window; everything committed in
it is one call).  The agent's own commits are recognised by their task: the kernel reports
the committing *thread* id, and every thread of this process is listed in
``/proc/self/task`` -- the libnftables applies (on the backend's namespace thread) and the
element writer (on the caller's thread) both commit from here.  When it cannot be sure, it
calls ``on_change()`` too: after the socket overran (notifications were lost), and after any
error of its own, which it logs before subscribing again with backoff.  It never ends
silently; only :meth:`TableMonitor.close` stops it.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .names import FAMILY, TABLE
from .netlink import (NETLINK_ADD_MEMBERSHIP, NFNL_SUBSYS_NFTABLES, NFNLGRP_NFTABLES,
                      NFPROTO_INET, NFT_MSG_NEWGEN, NFTA_GEN_ID, NFTA_GEN_PROC_NAME,
                      NFTA_GEN_PROC_PID, SOL_NETLINK, NetfilterSocket, attributes, messages)

__all__ = ["Commit", "CommitListener", "Overrun", "TableMonitor", "own_task"]

log = logging.getLogger("sgagent.nft.monitor")

# Room for the notifications of a large apply of our own while the reader catches up (the
# kernel charges about 2x the message bytes).  Set with SO_RCVBUFFORCE when the process has
# CAP_NET_ADMIN (it must, to join the group), else capped by net.core.rmem_max.
RCVBUF = 16 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
READ_BUFFER = 1 << 18
BACKOFF_MIN, BACKOFF_MAX = 0.1, 10.0
STEADY = 30.0           # a subscription that worked this long resets the backoff
NFTA_TABLE_ATTR = 1     # every table-scoped nftables message names its table in attribute 1
NFPROTO_UNSPEC = 0
_TABLE = TABLE.encode()
_FAMILY = {"inet": NFPROTO_INET}[FAMILY]
_BE32 = struct.Struct(">I")


@dataclass(frozen=True)
class Commit:
    """One committed nftables transaction."""
    generation: int
    pid: int          # the committing task: a thread id, 0 if the kernel did not say
    process: str      # its name (comm)
    touched: bool     # one of its messages named table inet sgagent (or could not be read)


class Overrun(OSError):
    """Notifications were lost (the receive buffer overflowed, or one did not fit)."""


def own_task(pid: int) -> bool:
    """True if ``pid`` is a thread of this process (the kernel reports thread ids)."""
    return pid > 0 and (pid == os.getpid() or os.path.exists(f"/proc/self/task/{pid}"))


class CommitListener(NetfilterSocket):
    """A netfilter socket subscribed to the nftables change notifications of a network
    namespace (``None``: this process's).  :meth:`read` returns the commits that one receive
    completed; the messages of a batch that spans receives are remembered until its
    ``NEWGEN``.  Used by one thread."""

    thread_name = "sgagent-nftmonitor"

    def __init__(self, netns_name: str | None = None, rcvbuf: int = RCVBUF) -> None:
        super().__init__(netns_name)
        self.rcvbuf = rcvbuf
        self._buf = bytearray(READ_BUFFER)
        self._touched = False   # a message of the batch in progress named our table

    def subscribe(self) -> int:
        """Open the socket (if it is not) and join the group; returns its file descriptor,
        non-blocking.  Changes committed after this returns are seen."""
        with self._lock:
            if self._sock is None:
                sock = self._socket()
                try:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
                    except PermissionError:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
                    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
                    sock.setblocking(False)
                except BaseException:
                    self._drop_socket()
                    raise
                self._touched = False
            return self._sock.fileno()   # type: ignore[union-attr]

    def read(self) -> list[Commit] | None:
        """The commits that the next waiting notification message completes ([] if it
        completes none), or ``None`` if nothing is waiting.

        Raises :class:`Overrun` if notifications were lost (the next read goes on from the
        notifications after the loss), OSError if the socket fails or is not subscribed.
        """
        with self._lock:
            sock = self._sock
            if sock is None:
                raise OSError(errno.ENOTCONN, "not subscribed to nftables notifications")
            try:
                n, _, flags, _ = sock.recvmsg_into([self._buf])
            except BlockingIOError:
                return None
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._touched = False
                    raise Overrun(errno.ENOBUFS, "nftables notifications were lost: the "
                                  "receive buffer overflowed") from None
                raise
            if flags & socket.MSG_TRUNC:
                self._touched = False
                raise Overrun(errno.EMSGSIZE, f"an nftables notification larger than "
                              f"{len(self._buf)} bytes was cut")
            return self._parse(n)

    def _parse(self, n: int) -> list[Commit]:
        buf, out = self._buf, []
        for off, mlen, mtype, _ in messages(buf, n):
            if mtype >> 8 != NFNL_SUBSYS_NFTABLES:
                continue
            end = min(off + mlen, n)
            if mtype & 0xFF == NFT_MSG_NEWGEN:
                gen = pid = 0
                name = ""
                for atype, p, alen in attributes(buf, off + 20, end):
                    if atype == NFTA_GEN_ID and alen >= 4:
                        gen = _BE32.unpack_from(buf, p)[0]
                    elif atype == NFTA_GEN_PROC_PID and alen >= 4:
                        pid = _BE32.unpack_from(buf, p)[0]
                    elif atype == NFTA_GEN_PROC_NAME:
                        name = bytes(buf[p:p + alen]).split(b"\0", 1)[0].decode("utf-8", "replace")
                out.append(Commit(gen, pid, name, self._touched))
                self._touched = False
            elif not self._touched:
                self._touched = _names_our_table(buf, off, end)
        return out


def _names_our_table(buf, off: int, end: int) -> bool:
    """Does this nftables message concern table inet sgagent?  Yes also when it cannot tell
    (no family header, no table attribute): the caller then checks rather than trusts."""
    if end - off < 20:
        return True
    family = buf[off + 16]
    for atype, p, alen in attributes(buf, off + 20, end):
        if atype == NFTA_TABLE_ATTR:
            return (family in (_FAMILY, NFPROTO_UNSPEC)
                    and bytes(buf[p:p + alen]).split(b"\0", 1)[0] == _TABLE)
    return True


class TableMonitor:
    """Calls ``on_change()`` when another process commits a change to table inet sgagent in
    network namespace ``netns`` (``None``: this process's), ``debounce`` seconds after the
    first such commit (later ones in that window are part of the same call); also when
    notifications were lost or the monitor failed and subscribed again.

    ``start()`` subscribes in the calling thread (raises if it cannot: no such namespace, no
    CAP_NET_ADMIN) and starts the monitor thread; changes committed after it returns are
    seen.  ``on_change`` runs on the monitor thread: keep it short (queue an event).
    ``close()`` stops the thread.  ``generation`` is the last generation whose commit has
    been dealt with (its call made, or its window opened); ``changes``, ``overruns`` and
    ``errors`` count foreign changes of the table, overruns, and failures of the monitor.
    """

    def __init__(self, netns: str | None, on_change: Callable[[], None], debounce: float = 0.1,
                 *, rcvbuf: int = RCVBUF) -> None:
        if debounce < 0:
            raise ValueError(f"debounce must be >= 0 seconds, not {debounce}")
        self.netns = netns
        self.on_change = on_change
        self.debounce = debounce
        self.generation: int | None = None
        self.last_change: Commit | None = None
        self.changes = 0
        self.overruns = 0
        self.errors = 0
        self._listener = CommitListener(netns, rcvbuf)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._due: float | None = None      # when on_change is to be called
        self._overrun_logged = 0.0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("TableMonitor.start() called twice")
        self._listener.subscribe()
        self._thread = threading.Thread(target=self._run, name="sgagent-nftmonitor",
                                        daemon=True)
        self._thread.start()
        log.debug("watching table %s %s%s for changes by other processes", FAMILY, TABLE,
                  f" in netns {self.netns}" if self.netns else "")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the socket.  Idempotent."""
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the nftables change monitor did not stop within %gs "
                            "(on_change still running?)", timeout)
                return
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "TableMonitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        backoff = BACKOFF_MIN
        resubscribe = False
        while not self._stop.is_set():
            since = time.monotonic()
            try:
                if resubscribe:
                    self._listener.subscribe()
                    resubscribe = False
                    log.info("nftables change monitor subscribed again")
                    self._schedule(now=True)   # what changed while it was not listening
                self._listen()
                break                           # stopped
            except Exception as exc:  # noqa: BLE001 - it must go on, and say why
                self.errors += 1
                self._listener.close()
                resubscribe = True
                if time.monotonic() - since >= STEADY:
                    backoff = BACKOFF_MIN
                log.error("nftables change monitor failed: %s; listening again in %.1fs, "
                          "checking the table now", exc, backoff,
                          exc_info=not isinstance(exc, OSError))
                self._schedule(now=True)
                self._fire()
                self._stop.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX)
        self._listener.close()

    def _listen(self) -> None:
        poll = select.poll()
        poll.register(self._listener.subscribe(), select.POLLIN)
        poll.register(self._wake_r.fileno(), select.POLLIN)
        while not self._stop.is_set():
            timeout = None
            if self._due is not None:
                timeout = max(0, int(1000 * (self._due - time.monotonic())) + 1)
            events = poll.poll(timeout)
            if self._stop.is_set():
                return
            gen = None
            if any(ev & (select.POLLIN | select.POLLERR) for fd, ev in events
                   if fd != self._wake_r.fileno()):
                gen = self._read()
            if any(ev & (select.POLLHUP | select.POLLNVAL) for fd, ev in events):
                raise OSError(errno.EPIPE, "the netlink socket was closed")
            self._fire()
            if gen is not None:
                self.generation = gen

    def _read(self) -> int | None:
        """Deal with everything waiting on the socket; the last generation seen."""
        gen = None
        for _ in range(256):   # bounded: let the window close even under a flood
            try:
                commits = self._listener.read()
            except Overrun as exc:
                self.overruns += 1
                now = time.monotonic()
                if now - self._overrun_logged >= 60:
                    self._overrun_logged = now
                    log.warning("%s (%d time%s so far); checking the table", exc, self.overruns,
                                "" if self.overruns == 1 else "s")
                self._schedule(now=True)
                continue
            if commits is None:   # nothing more waiting
                break
            for c in commits:
                gen = c.generation
                if c.touched and not own_task(c.pid):
                    self.changes += 1
                    self.last_change = c
                    log.info("table %s %s changed by another process: pid %d (%s), "
                             "generation %d", FAMILY, TABLE, c.pid, c.process or "?",
                             c.generation)
                    self._schedule()
        return gen

    def _schedule(self, now: bool = False) -> None:
        t = time.monotonic() + (0 if now else self.debounce)
        if self._due is None or t < self._due:
            self._due = t

    def _fire(self) -> None:
        if self._due is None or time.monotonic() < self._due:
            return
        self._due = None
        try:
            self.on_change()
        except Exception:  # noqa: BLE001 - a failing callback must not stop the monitor
            log.exception("the table-changed callback failed")
