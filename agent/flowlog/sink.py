"""Where flow records go: a rotating file of JSON lines, or the systemd journal.

:class:`FileSink` writes ``<dir>/flows.log`` and, past ``max_bytes``, renames it to
``flows.log.1`` (and ``.1`` to ``.2``, ... keeping ``backups``), the scheme logrotate and
Python's ``RotatingFileHandler`` use, so ``sgagent logs`` and any shipper read it as they
would any log.  Each record is one ``write`` of one line, flushed at once.

:class:`JournalSink` sends each record to journald's native socket: the JSON object as
``MESSAGE``, and the record's fields as journal fields (``SGAGENT_RULE=...``) for
``journalctl SGAGENT_VERDICT=drop``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from .record import line

FILE_NAME = "flows.log"
JOURNAL_SOCKET = "/run/systemd/journal/socket"


class FileSink:
    def __init__(self, directory: str | os.PathLike, max_bytes: int = 64 << 20,
                 backups: int = 5) -> None:
        self.dir = Path(directory)
        self.path = self.dir / FILE_NAME
        self.max_bytes = max_bytes
        self.backups = backups
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, rec: dict[str, Any]) -> None:
        data = line(rec).encode()
        if self._size and self._size + len(data) > self.max_bytes:
            self.rotate()
        os.write(self._fd, data)
        self._size += len(data)

    def rotate(self) -> None:
        os.close(self._fd)
        for k in range(self.backups - 1, 0, -1):
            older = self.dir / f"{FILE_NAME}.{k}"
            if older.exists():
                older.replace(self.dir / f"{FILE_NAME}.{k + 1}")
        if self.backups > 0:
            self.path.replace(self.dir / f"{FILE_NAME}.1")
        else:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)


class JournalSink:
    def __init__(self, socket_path: str = JOURNAL_SOCKET) -> None:
        self.path = socket_path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def write(self, rec: dict[str, Any]) -> None:
        fields = {"MESSAGE": json.dumps(rec, separators=(",", ":")),
                  "SYSLOG_IDENTIFIER": "sgagent-flow", "PRIORITY": "6"}
        for k, v in rec.items():
            if v is not None:
                fields[f"SGAGENT_{k.upper()}"] = str(v)
        data = "".join(f"{k}={v}\n" for k, v in fields.items() if "\n" not in v).encode()
        self.sock.sendto(data, self.path)

    def close(self) -> None:
        self.sock.close()
