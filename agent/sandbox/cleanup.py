"""Safety nets for sandbox teardown: atexit, SIGTERM, and stale namespaces.

* Every live :class:`~sgagent.sandbox.Sandbox` is registered here; an
  ``atexit`` hook closes the ones still open.
* While at least one sandbox is open and SIGTERM has its default action, a
  handler turns SIGTERM into ``SystemExit(143)`` so ``with`` blocks unwind and
  teardown runs; the default action is restored when the last one closes.
* :func:`remove_stale` deletes namespaces left behind by a killed run
  (SIGKILL cannot be caught).
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from typing import Any

from .. import netns

__all__ = ["register", "unregister", "remove_stale", "close_all"]

_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_lock = threading.Lock()
_installed_handler = False


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def register(sandbox: Any) -> None:
    global _installed_handler
    with _lock:
        _live.add(sandbox)
        if (
            not _installed_handler
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, _on_sigterm)
            _installed_handler = True


def unregister(sandbox: Any) -> None:
    global _installed_handler
    with _lock:
        _live.discard(sandbox)
        if (
            _installed_handler
            and not _live
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _on_sigterm
        ):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _installed_handler = False


def close_all() -> None:
    """Close every sandbox still open (also run at interpreter exit)."""
    for sb in list(_live):
        sb.close()


atexit.register(close_all)


def remove_stale(prefix: str) -> list[str]:
    """Delete every ``ip netns`` namespace named ``PREFIX-*``; return their names.

    Meant for leftovers of a run that was SIGKILLed.  Do not call it with a
    prefix another live sandbox uses.
    """
    if not prefix:
        raise ValueError("refusing to remove namespaces without a prefix")
    try:
        names = sorted(os.listdir(netns.NETNS_RUN_DIR))
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        if name.startswith(prefix + "-"):
            netns.delete(name)
            removed.append(name)
    return removed
