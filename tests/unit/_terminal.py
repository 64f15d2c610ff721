"""Running the installed ``sgagent`` with a pseudo-terminal for stdout and/or stderr, as a
person at a terminal runs it, and reading back exactly what it wrote there."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SGAGENT = Path(sys.executable).with_name("sgagent")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run(*args, tty_stdout: bool = False, tty_stderr: bool = False, env: dict | None = None,
        timeout: float = 120) -> Run:
    """``sgagent ARGS``; the streams asked for are one pseudo-terminal (120 columns), the
    others files.  What went to the terminal is returned as written, escapes included."""
    if not SGAGENT.exists():
        pytest.skip(f"sgagent is not installed next to {sys.executable}")
    environ = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    environ.update({"TERM": "xterm-256color", **(env or {})})
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([str(SGAGENT), *map(str, args)], stdin=subprocess.DEVNULL,
                                stdout=slave if tty_stdout else out,
                                stderr=slave if tty_stderr else err, cwd=ROOT, env=environ)
        os.close(slave)
        seen = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: the last writer closed the terminal
                        break
                    if not chunk:
                        break
                    seen += chunk
                elif proc.poll() is not None:
                    break
            else:
                proc.kill()
                raise AssertionError(f"sgagent {args} ran over {timeout} s")
            # the terminal may be closed long before the end (no stream on it, or it is done
            # writing): the rest of the time is the command's
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
        out.seek(0)
        err.seek(0)
        terminal = seen.decode("utf-8", "replace").replace("\r\n", "\n")
        return Run(rc, terminal if tty_stdout else out.read().decode(),
                   terminal if tty_stderr and not tty_stdout else
                   ("" if tty_stderr else err.read().decode()))
