"""``sgagent logs``: records written by the sink (rotated), read back with filters, followed."""

from __future__ import annotations

import json
import threading
import time

from sgagent.cli import main
from sgagent.flowlog import query
from sgagent.flowlog.sink import FileSink

NOW = time.time()


def rec(i: int, **kw) -> dict:
    r = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 1800 + i)) + ".000Z",
         "nic": "eth0", "direction": "inbound", "src": f"198.51.100.{i}", "dst": "192.0.2.10",
         "protocol": "tcp", "sport": 40000 + i, "dport": 23, "verdict": "drop",
         "group": "sg-a", "rule": "no-telnet", "instance": "i-1"}
    r.update(kw)
    return r


def write(tmp_path, records, max_bytes=1 << 20):
    sink = FileSink(tmp_path, max_bytes=max_bytes, backups=3)
    for r in records:
        sink.write(r)
    sink.close()


def run(capsys, *argv):
    rc = main(["logs", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_rotation_keeps_order_and_backups(tmp_path, capsys):
    write(tmp_path, [rec(i) for i in range(40)], max_bytes=1200)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["flows.log", "flows.log.1", "flows.log.2", "flows.log.3"]
    rc, out, _ = run(capsys, "--dir", tmp_path, "--json")
    got = [json.loads(x)["src"] for x in out.splitlines()]
    # the oldest rotated away (3 backups kept); what is left is in order and ends with the last
    assert got == [f"198.51.100.{i}" for i in range(40 - len(got), 40)] and rc == 0
    assert len(got) > 10


def test_filters(tmp_path, capsys):
    write(tmp_path, [rec(1), rec(2, verdict="would drop", rule="trial", group="sg-b"),
                     rec(3, verdict="accept", rule="web", dport=80, src="10.1.0.5"),
                     rec(4, direction="outbound", src="192.0.2.10", dst="203.0.113.9",
                         verdict="reject", rule="egress")])

    def srcs(*args):
        rc, out, err = run(capsys, "--dir", tmp_path, "--json", *args)
        assert rc == 0, err
        return [json.loads(x)["rule"] for x in out.splitlines()]

    assert srcs() == ["no-telnet", "trial", "web", "egress"]
    assert srcs("--rule", "web") == ["web"]
    assert srcs("--group", "sg-b") == ["trial"]
    assert srcs("--verdict", "would-drop") == ["trial"] == srcs("--verdict", "would")
    assert srcs("--verdict", "DROP") == ["no-telnet"]
    assert srcs("--peer", "10.0.0.0/8") == ["web"]
    assert srcs("--peer", "203.0.113.9") == ["egress"]  # the peer of an outbound record
    assert srcs("--since", "1h") == ["no-telnet", "trial", "web", "egress"]
    assert srcs("--since", "10m") == []
    rc, out, _ = run(capsys, "--dir", tmp_path, "--rule", "web")
    assert out.splitlines() == [
        f"{rec(3)['time']} eth0 in accept 10.1.0.5:40003 -> 192.0.2.10:80 tcp by sg-a/web"]


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    for args, words in [(["--verdict", "maybe"], "--verdict"), (["--since", "yesterday"], "--since"),
                        (["--peer", "example.com"], "--peer"),
                        (["--dir", tmp_path / "nope"], "--dir")]:
        rc, out, err = run(capsys, "--dir", tmp_path, *args)
        assert rc == 1 and out == "" and words in err and len(err.splitlines()) == 1, err


def test_follow_sees_new_records_across_a_rotation(tmp_path):
    sink = FileSink(tmp_path, max_bytes=600, backups=2)
    sink.write(rec(0))
    seen: list[str] = []
    done = threading.Event()

    def reader():
        for r in query.follow(tmp_path, query.make_filter(), poll=0.02, stop=done.is_set):
            seen.append(r["src"])

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.2)
    for i in range(1, 8):  # about two records per file: rotates several times
        sink.write(rec(i))
        time.sleep(0.1)
    deadline = time.time() + 5
    while len(seen) < 8 and time.time() < deadline:
        time.sleep(0.05)
    done.set()
    t.join(5)
    sink.close()
    assert seen == [f"198.51.100.{i}" for i in range(8)]
