"""Runs ``sgagent`` command lines in-process, one per line of stdin, under resource limits; one
JSON line on stdout per command.  Started by :class:`tests.fuzz.runner.Worker`; never imported.

    python worker.py AS_BYTES CPU_SECONDS SECONDS_PER_COMMAND

The limits hold for the whole process (RLIMIT_AS, RLIMIT_CPU); each command also has a wall
time alarm.  A command that exceeds a limit either reports it (MemoryError, the alarm) or kills
the process, which the parent notices."""

from __future__ import annotations

import contextlib
import io
import json
import resource
import signal
import sys
import time
import traceback


class Alarm(BaseException):
    """A command ran past its wall time."""


def _alarm(signum, frame):
    raise Alarm()


def main() -> None:
    as_bytes, cpu_seconds, per_command = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    signal.signal(signal.SIGALRM, _alarm)
    from sgagent.cli import main as sgagent

    reply_to = sys.stdout
    for line in sys.stdin:
        argv = json.loads(line)
        out, err = io.StringIO(), io.StringIO()
        rc, failure = None, None
        wall, cpu = time.monotonic(), time.process_time()
        signal.setitimer(signal.ITIMER_REAL, per_command)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = sgagent(argv)
        except Alarm:
            failure = f"ran past {per_command} s"
        except BaseException:  # noqa: BLE001 - every escape is what the fuzz looks for
            failure = traceback.format_exc()[-6000:]
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        o, e = out.getvalue(), err.getvalue()
        try:
            o.encode("utf-8")  # the real stdout is strict UTF-8 (stderr: backslashreplace)
            encodable = True
        except UnicodeEncodeError:
            encodable = False
        reply = {"rc": rc, "failure": failure, "out_len": len(o), "err_len": len(e),
                 "out": o[:3000], "out_tail": o[-300:], "err": e[:6000],
                 "stdout_encodable": encodable,
                 "wall": time.monotonic() - wall, "cpu": time.process_time() - cpu,
                 "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()


if __name__ == "__main__":
    main()
