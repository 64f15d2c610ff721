"""sd_notify(3) without libsystemd: one datagram to the socket named by ``$NOTIFY_SOCKET``.

``NOTIFY_SOCKET`` is a filesystem path or, starting with ``@``, an abstract socket name.
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, if set, naming this process) ask for ``WATCHDOG=1``
pings at least that often; :attr:`Notifier.watchdog_interval` is half of it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

# How long one message may wait for room in the receiver's queue (a datagram socket holds
# net.unix.max_dgram_qlen messages, 10 by default): a service manager that does not read must
# not hold up the daemon's loop, and so its watchdog and health checks, for ever.
SEND_TIMEOUT = 1.0


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET") or None
        self.address: str | bytes | None = None
        if path:
            if path.startswith("@"):
                self.address = "\0" + path[1:]
            elif path.startswith("/"):
                self.address = path
            else:
                log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; ignored", path)
        self.watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_usec = max(0, int(usec))
            except ValueError:
                log.warning("WATCHDOG_USEC=%r is not a number; watchdog off", usec)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the timeout systemd enforces), or None."""
        if not self.enabled or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2e6

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one message; False if there is nowhere to send it."""
        if self.address is None:
            return False
        msg = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto(msg, self.address)  # type: ignore[arg-type]
            return True
        except TimeoutError:
            log.warning("sd_notify %r dropped: the service manager took nothing from its socket "
                        "for %g s", lines, SEND_TIMEOUT)
            return False
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", lines, exc)
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping; rules stay in force")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
