"""Running code inside named network namespaces (``ip netns`` names).

This module is the single place in sgagent that knows how to get into a
network namespace.  Namespaces are the ones managed by ``ip netns``: a
namespace called ``NAME`` is the nsfs bind mount ``/run/netns/NAME``.

* :func:`enter` moves the *calling thread* (not the process) into a namespace
  with ``setns(2)`` (called through ctypes: Python 3.11 has no ``os.setns``).
* :class:`NetnsExecutor` owns one dedicated thread that entered the namespace
  once; ``call(fn, ...)`` runs ``fn`` in that thread.  Sockets (and netlink
  handles) created inside ``call`` belong to the namespace for their whole
  life, whichever thread uses them afterwards.  Threads and child processes
  started from inside ``call`` inherit the namespace too.
* :meth:`NetnsExecutor.scratch` gives an executor in a brand-new, anonymous
  namespace (``unshare(CLONE_NEWNET)`` on its thread; nothing in /run/netns;
  the namespace vanishes with the thread) -- e.g. to dry-load a ruleset.
* :func:`argv_in` prefixes a command line with ``ip netns exec NAME``.
* :func:`create`, :func:`delete`, :func:`exists` manage namespaces;
  :func:`delete` kills every process still living in the namespace first.

``name=None`` always means "the namespace of the calling process" (no switch).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import errno
import os
import queue
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Sequence, TypeVar

__all__ = [
    "NETNS_RUN_DIR",
    "NetnsError",
    "NetnsNotFoundError",
    "NetnsExecutorClosedError",
    "enter",
    "NetnsExecutor",
    "argv_in",
    "create",
    "delete",
    "exists",
    "pids",
]

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_IP = "ip"
_SUBPROCESS_TIMEOUT = 10.0

T = TypeVar("T")


class NetnsError(Exception):
    """Any failure to create, enter, use or delete a network namespace."""


class NetnsNotFoundError(NetnsError):
    """The named network namespace does not exist (no /run/netns/NAME)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"network namespace {name!r} does not exist "
            f"(no {os.path.join(NETNS_RUN_DIR, name)})"
        )
        self.name = name


class NetnsExecutorClosedError(NetnsError):
    """``NetnsExecutor.call`` after ``close()``."""


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise NetnsError(f"invalid network namespace name {name!r}")


def _path(name: str) -> str:
    _check_name(name)
    return os.path.join(NETNS_RUN_DIR, name)


_libc: ctypes.CDLL | None = None


def _libc_fn(name: str) -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, name)
    fn.restype = ctypes.c_int
    return fn


def _setns(fd: int, nstype: int) -> None:
    if _libc_fn("setns")(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _unshare_net() -> None:
    """Give the calling thread a new, empty network namespace."""
    if _libc_fn("unshare")(ctypes.c_int(CLONE_NEWNET)) != 0:
        err = ctypes.get_errno()
        hint = " (are you root / CAP_SYS_ADMIN?)" if err == errno.EPERM else ""
        raise NetnsError(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)}{hint}")


def exists(name: str) -> bool:
    """True if ``/run/netns/NAME`` exists."""
    return os.path.exists(_path(name))


def enter(name: str) -> None:
    """Move the calling thread into network namespace ``name``.

    Only this thread changes namespace; other threads of the process are not
    affected.  Raises :class:`NetnsNotFoundError` if the namespace does not
    exist and :class:`NetnsError` for any other failure.
    """
    path = _path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFoundError(name) from None
    except OSError as exc:
        raise NetnsError(f"cannot open network namespace {name!r} ({path}): {exc}") from exc
    try:
        _setns(fd, CLONE_NEWNET)
    except OSError as exc:
        hint = " (are you root / CAP_SYS_ADMIN?)" if exc.errno == errno.EPERM else ""
        raise NetnsError(f"setns into network namespace {name!r} failed: {exc}{hint}") from exc
    finally:
        os.close(fd)


class NetnsExecutor:
    """One dedicated thread living in network namespace ``name``.

    ``call(fn, *args, **kw)`` runs ``fn`` in that thread, waits, and returns
    its result or re-raises its exception.  Calls are serialized (one thread),
    so keep them short: create sockets, write sysctls, start processes.

    With ``name=None`` the thread simply stays in the namespace of the
    process (it is still a separate thread, so behaviour is identical).

    The constructor raises :class:`NetnsNotFoundError` / :class:`NetnsError`
    if the thread cannot enter the namespace.  Usable as a context manager.
    """

    _STOP = object()

    def __init__(self, name: str | None, *, thread_name: str | None = None,
                 _scratch: bool = False) -> None:
        if name is not None:
            _check_name(name)
        self.name = name
        self._scratch = _scratch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run,
            args=(started,),
            name=thread_name or f"netns-{name or 'current'}",
            daemon=True,
        )
        self._thread.start()
        try:
            started.result(timeout=_SUBPROCESS_TIMEOUT)
        except BaseException:
            self._closed = True
            self._thread.join(timeout=1.0)
            raise

    def _run(self, started: concurrent.futures.Future[None]) -> None:
        try:
            if self._scratch:
                _unshare_net()
            elif self.name is not None:
                enter(self.name)
        except BaseException as exc:  # report to the constructor, end the thread
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            fut, fn, args, kw = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kw)
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

    @classmethod
    def scratch(cls) -> "NetnsExecutor":
        """An executor in a fresh anonymous network namespace (only loopback, down).

        The namespace exists only for this executor's thread and is freed
        when the executor is closed (unless sockets created in it live on).
        """
        return cls(None, thread_name="netns-scratch", _scratch=True)

    def submit(self, fn: Callable[..., T], *args: Any, **kw: Any) -> "concurrent.futures.Future[T]":
        """Queue ``fn`` for the namespace thread and return a Future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise NetnsExecutorClosedError(
                    f"executor for network namespace {self.name!r} is closed"
                )
            self._queue.put((fut, fn, args, kw))
        return fut

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run ``fn(*args, **kw)`` in the namespace thread; return / raise its outcome."""
        if threading.current_thread() is self._thread:  # re-entrant call: run inline
            return fn(*args, **kw)
        return self.submit(fn, *args, **kw).result()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after already queued calls finished.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(self._STOP)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "NetnsExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        what = "<scratch>" if self._scratch else repr(self.name)
        return f"<NetnsExecutor {what} {state}>"


def argv_in(name: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed with ``ip netns exec NAME`` (unchanged for ``None``)."""
    if name is None:
        return list(argv)
    _check_name(name)
    return [_IP, "netns", "exec", name, *argv]


def _run_ip(args: Sequence[str]) -> None:
    try:
        proc = subprocess.run(
            [_IP, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_SUBPROCESS_TIMEOUT,
        )
    except FileNotFoundError as exc:
        raise NetnsError("the 'ip' command (iproute2) is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"'ip {' '.join(args)}' timed out") from exc
    if proc.returncode != 0:
        raise NetnsError(f"'ip {' '.join(args)}' failed: {proc.stderr.strip() or proc.returncode}")


def create(name: str) -> None:
    """Create network namespace ``name`` (``ip netns add``); error if it exists."""
    _check_name(name)
    if exists(name):
        raise NetnsError(f"network namespace {name!r} already exists")
    _run_ip(["netns", "add", name])


def pids(name: str) -> list[int]:
    """PIDs of processes whose (main thread's) network namespace is ``name``.

    Same semantics as ``ip netns pids NAME``; the calling process is included
    if its main thread lives there.
    """
    try:
        st = os.stat(_path(name))
    except FileNotFoundError:
        raise NetnsNotFoundError(name) from None
    key = (st.st_dev, st.st_ino)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == key:
            found.append(int(entry))
    return found


def _kill_all(name: str, grace: float) -> None:
    me = os.getpid()
    victims = [p for p in pids(name) if p != me]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while victims and time.monotonic() < deadline:
            time.sleep(0.02)
            victims = [p for p in pids(name) if p != me]


def delete(name: str, *, grace: float = 1.0, missing_ok: bool = True) -> None:
    """Kill every process left in namespace ``name``, then delete it.

    Processes get SIGTERM, then SIGKILL after ``grace`` seconds.  The calling
    process is never killed.  With ``missing_ok`` (default) a namespace that
    does not exist is not an error.
    """
    if not exists(name):
        if missing_ok:
            return
        raise NetnsNotFoundError(name)
    try:
        _kill_all(name, grace)
    except NetnsNotFoundError:
        return
    _run_ip(["netns", "delete", name])
