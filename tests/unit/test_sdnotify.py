"""sd_notify never holds the daemon up: a service manager that stops reading its socket costs a
message at most SEND_TIMEOUT, and the sender goes on (a blocking send waited for ever once the
receiver's queue of max_dgram_qlen datagrams was full, and with it the daemon's loop)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from sgagent.daemon import sdnotify
from sgagent.daemon.sdnotify import Notifier


def test_a_full_socket_drops_messages_instead_of_blocking(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT", 0.05)
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        results: list[bool] = []
        sender = threading.Thread(
            target=lambda: results.extend(notifier.watchdog() for _ in range(40)), daemon=True)
        sender.start()
        sender.join(60)   # "does not hang": 40 sends, the late ones 0.05 s each
        assert not sender.is_alive(), "sd_notify blocked on a socket nobody reads"
        assert results[0] is True and results[-1] is False   # the queue filled up, then drops
        receiver.settimeout(1)
        assert receiver.recv(64) == b"WATCHDOG=1"             # what fitted was delivered
        assert notifier.watchdog() is True                    # and room again is used again
        notifier.close()
    finally:
        receiver.close()


def test_nothing_sent_without_notify_socket() -> None:
    assert Notifier({}).watchdog() is False
