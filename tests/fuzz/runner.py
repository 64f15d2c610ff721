"""The parent side of the fuzz worker: one rlimited subprocess that runs many ``sgagent``
command lines in-process (starting a process per input would cost ~0.4 s each)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WORKER = Path(__file__).with_name("worker.py")
AS_BYTES = 1 << 30          # 1 GiB of address space for the whole worker
CPU_SECONDS = 300           # the whole worker; each command has its own wall-time alarm
PER_COMMAND = 20.0          # seconds of wall time for one command
MAX_OUTPUT = 64 * 1024      # characters a refusal may print (50 errors of ~1 KiB would fit)


class WorkerDied(AssertionError):
    pass


class Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.stderr = b""

    def _start(self) -> subprocess.Popen:
        env = dict(os.environ, PYTHONFAULTHANDLER="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(AS_BYTES), str(CPU_SECONDS), str(PER_COMMAND)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        return self.proc

    def run(self, argv: list[str]) -> dict[str, Any]:
        """Run one command line; the reply of worker.py, or WorkerDied (then restart)."""
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(argv) + "\n").encode())
        proc.stdin.flush()
        deadline = time.monotonic() + PER_COMMAND + 30
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                line = proc.stdout.readline()
                if line:
                    return json.loads(line)
                break  # EOF: the worker died
            if time.monotonic() >= deadline:
                break
        self.close()
        raise WorkerDied(f"the worker died or hung on {argv}: exit {proc.returncode}, "
                         f"stderr {self.stderr[-3000:].decode(errors='replace')}")

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
        self.stderr = err or b""


def check_reply(reply: dict[str, Any], what: str, codes: tuple[int, ...] = (0, 1)) -> None:
    """What every command must do with any input: exit with one of its documented ``codes``
    (README "Exit codes": 0 or 1; apply --dry-run also 2, changes pending), no traceback,
    bounded output."""
    assert reply["failure"] is None, f"{what}: {reply['failure']}"
    assert reply["rc"] in codes, f"{what}: exit {reply['rc']}: {reply['err'][:500]}"
    assert "Traceback" not in reply["err"] and "Traceback" not in reply["out"], \
        f"{what}: {reply['err'][:2000]}"
    assert reply["stdout_encodable"], f"{what}: stdout is not UTF-8: {reply['out'][:200]!r}"
    if reply["rc"] == 1:
        assert reply["err_len"] <= MAX_OUTPUT and reply["out_len"] <= MAX_OUTPUT, \
            f"{what}: {reply['err_len']} characters of errors"
        assert reply["err"].strip(), f"{what}: refused without saying why"
