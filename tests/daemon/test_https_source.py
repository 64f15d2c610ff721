"""The HTTPS source against a real TLS server on 127.0.0.1: CA bundle, bearer token, ETag,
the server going away and coming back, a wrong token, and the source down at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgagent.daemon.state import StateStore
from sgagent.sandbox import Outcome, Probe

from .support import document, dports, dump, live_table, wait_until

pytestmark = pytest.mark.kernel

PEER = "10.1.0.21"


def https_source(server, token_file: Path, **kw) -> dict:
    return {"https": {"url": server.url, "token_file": str(token_file),
                      "ca_bundle": str(server.ca), "timeout": 2, "poll_interval": 0.3,
                      "backoff": {"initial": 0.1, "max": 0.5}, **kw}}


def probe(sb, *ports: int) -> list[Outcome]:
    return sb.probe_many([Probe("eth0", "inbound", PEER, "tcp", p) for p in ports], timeout=0.5)


def test_https_source_etag_token_outage(docserver, sandbox, make_daemon, tmp_path: Path):
    token = tmp_path / "token"
    token.write_text(docserver.token + "\n")
    docserver.set(dump(document([8080])))
    docserver.start()
    d = make_daemon(https_source(docserver, token), sandbox.host_ns).start()
    d.wait_log("ready:")
    assert probe(sandbox, 8080, 9090) == [Outcome.OPEN, Outcome.DROPPED]

    # conditional GETs: after the first answer every poll sends If-None-Match (304s)
    wait_until(lambda: len(docserver.requests) >= 3, 5, what="a few polls")
    first, *later = docserver.requests
    assert first["auth"] == f"Bearer {docserver.token}" and first["inm"] is None
    assert all(r["inm"] == docserver.etag() for r in later)

    docserver.set(dump(document([9090])))
    wait_until(lambda: dports(sandbox.host_ns) == {9090}, 5, what="the new document")
    assert probe(sandbox, 8080, 9090) == [Outcome.DROPPED, Outcome.OPEN]

    # the server goes away: reported, the rules stay; it comes back with a change: applied
    before = live_table(sandbox.host_ns)
    docserver.stop()
    d.wait_log(r"unavailable: ConnectError")
    assert live_table(sandbox.host_ns) == before
    assert probe(sandbox, 9090) == [Outcome.OPEN]
    docserver.set(dump(document([7070])))
    docserver.start()
    wait_until(lambda: dports(sandbox.host_ns) == {7070}, 5, what="the document after the outage")

    # a wrong token: 401, reported, rules stay; the right one again: back
    mark = d.mark()
    token.write_text("wrong\n")
    d.wait_log(r"unavailable: HTTP 401", since=mark)
    assert dports(sandbox.host_ns) == {7070}
    token.write_text(docserver.token)
    docserver.set(dump(document([7071])))
    wait_until(lambda: dports(sandbox.host_ns) == {7071}, 5, what="the document after the 401")
    assert d.stop() == 0


def test_source_down_at_start_applies_last_known_good(docserver, sandbox, make_daemon,
                                                       tmp_path: Path):
    # saved by an earlier run; the server is not running
    StateStore(tmp_path / "state").save(dump(document([6060])).encode(), "earlier run")
    token = tmp_path / "token"
    token.write_text(docserver.token)
    d = make_daemon(https_source(docserver, token), sandbox.host_ns).start()
    d.wait_log(r"applying the last known good document \(saved .* from earlier run\)")
    d.wait_log("ready:")
    assert dports(sandbox.host_ns) == {6060}
    assert probe(sandbox, 6060) == [Outcome.OPEN]
    # keeps retrying: the server comes up with a newer document, which is applied
    docserver.set(dump(document([6061])))
    docserver.start()
    wait_until(lambda: dports(sandbox.host_ns) == {6061}, 5, what="the source's document")
    assert d.stop() == 0


def test_untrusted_server_certificate_is_refused(docserver, ns, make_daemon, tmp_path: Path):
    """Without the CA bundle the server's certificate is not trusted: nothing is applied."""
    token = tmp_path / "token"
    token.write_text(docserver.token)
    docserver.set(dump(document([8080])))
    docserver.start()
    src = https_source(docserver, token)
    del src["https"]["ca_bundle"]
    d = make_daemon(src, ns).start()
    d.wait_log(r"unavailable: ConnectError: .*CERTIFICATE_VERIFY_FAILED")
    assert live_table(ns) == ""
    assert not docserver.requests  # the TLS handshake failed: no request was ever sent
    assert d.stop() == 0
