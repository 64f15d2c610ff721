"""A sandbox of network namespaces standing in for a host and its network.

Used by the enforcement tests and by ``sgagent verify``::

    from sgagent.sandbox import Sandbox, Probe, Outcome

    with Sandbox([("eth0", "intranet"), ("eth1", "internet")]) as sb:
        sb.run("host", ["nft", "-f", "-"], input=ruleset)   # in the host ns
        outcomes = sb.probe_many([
            Probe("eth0", "inbound", "10.1.0.99", "tcp", 22),
            Probe("eth1", "outbound", "203.0.113.7", "udp", 53),
        ])

Modules: ``addressing`` (address plan), ``topology`` (namespaces, wires,
peers, routes), ``listeners`` (TCP accept / UDP echo), ``ssh`` and ``httpd``
(real servers and client command lines), ``probes`` (Probe, Transit, Outcome,
socket clients), ``peers`` (per-peer route lock), ``workload`` (optional forwarded
namespace), ``cleanup`` (atexit / SIGTERM / stale namespaces),
``sandbox`` (the :class:`Sandbox` facade).
"""

from .cleanup import remove_stale
from .errors import SandboxError
from .probes import Outcome, Probe, Transit
from .sandbox import DEFAULT_CONCURRENCY, Sandbox
from .workload import Workload

__all__ = ["Sandbox", "Probe", "Transit", "Outcome", "SandboxError", "Workload", "remove_stale", "DEFAULT_CONCURRENCY"]
