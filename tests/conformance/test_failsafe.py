from .harness import Expect

DOC = "examples/failsafe-lockout.yaml"


def test_failsafe_keeps_management_ssh_open(enforce):
    enforce(DOC, [
        # the failsafe decides before the group's drop rule: a real SSH login works
        Expect("eth0", "inbound", "10.1.0.21", "ssh", rule="failsafe/0"),
        Expect("eth0", "inbound", "10.9.0.9", "tcp", 22, rule="failsafe/0"),
        # only SSH: the next port from the same network is refused by the enterprise default
        Expect("eth0", "inbound", "10.1.0.21", "tcp", 23, "dropped"),
        # only the management network
        Expect("eth0", "inbound", "203.0.113.9", "ssh", outcome="blocked"),
        Expect("eth0", "inbound", "203.0.113.9", "tcp", 22, "dropped"),
        # only inbound: outbound is the enterprise default, dropped
        Expect("eth0", "outbound", "10.1.0.21", "tcp", 22, "dropped"),
    ])
