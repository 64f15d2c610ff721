"""A real OpenSSH server in a namespace, and the ssh client command line.

Keys (host and client, ed25519) and the sshd_config are written into a
private temp directory; sshd runs as ``/usr/sbin/sshd -D -e -f CONFIG`` via
``ip netns exec``.  Its stderr goes to ``sshd-PORT.log`` in that directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from .. import netns
from .errors import SandboxError

__all__ = ["SshServer", "ssh_argv", "SSHD"]

SSHD = "/usr/sbin/sshd"
_START_TIMEOUT = 5.0


def _keygen(path: str) -> None:
    if os.path.exists(path):
        return
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sgagent-sandbox", "-f", path],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise SandboxError("ssh-keygen not found (install openssh-client)") from None
    except subprocess.CalledProcessError as exc:
        raise SandboxError(f"ssh-keygen failed: {exc.stderr.strip()}") from None


def _listening(port: int) -> bool:
    """Runs inside the server's namespace: is ``port`` in LISTEN for v4 and v6?

    Reads /proc/thread-self/net (the calling thread's namespace) instead of
    connecting, so a firewall in the namespace cannot get in the way.
    """
    want = f":{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/thread-self/net/{table}") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            return False
        if not any(
            (f := line.split())[1].endswith(want) and f[3] == "0A" for line in lines if line.strip()
        ):
            return False
    return True


class SshServer:
    """sshd on ``port`` in namespace ``ns``; ``client_key`` logs in as root."""

    def __init__(self, ns: str, executor: netns.NetnsExecutor, workdir: str, port: int = 22) -> None:
        if shutil.which("ssh") is None or not os.path.exists(SSHD):
            raise SandboxError(f"OpenSSH is not installed (need ssh and {SSHD})")
        self.ns = ns
        self.port = port
        self.host_key = os.path.join(workdir, "ssh_host_ed25519_key")
        self.client_key = os.path.join(workdir, "client_ed25519_key")
        self.config = os.path.join(workdir, f"sshd_config-{port}")
        self.log_path = os.path.join(workdir, f"sshd-{port}.log")
        authorized = os.path.join(workdir, "authorized_keys")
        _keygen(self.host_key)
        _keygen(self.client_key)
        with open(self.client_key + ".pub") as src, open(authorized, "w") as dst:
            dst.write(src.read())
        with open(self.config, "w") as fh:
            fh.write(
                "\n".join(
                    [
                        f"Port {port}",
                        "ListenAddress 0.0.0.0",
                        "ListenAddress ::",
                        f"HostKey {self.host_key}",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        f"AuthorizedKeysFile {authorized}",
                        "StrictModes no",
                        "UsePAM no",
                        "UseDNS no",
                        "MaxStartups 200:30:400",
                        f"PidFile {os.path.join(workdir, f'sshd-{port}.pid')}",
                        "LogLevel INFO",
                        "",
                    ]
                )
            )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            netns.argv_in(ns, [SSHD, "-D", "-e", "-f", self.config]),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not executor.call(_listening, port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SandboxError(f"sshd did not start on port {port} in {ns}: {self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-limit:].decode(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2.0)
        self._log.close()


def ssh_argv(client_key: str, source: str, target: str, port: int, timeout: float) -> list[str]:
    """ssh client command: run ``true`` on target as root, from ``source``."""
    return [
        "ssh",
        "-F", "/dev/null",
        "-i", client_key,
        "-b", source,
        "-p", str(port),
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={max(1, int(round(timeout)))}",
        f"root@{target}",
        "true",
    ]
