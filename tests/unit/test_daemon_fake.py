"""The daemon's reconcile loop without root: the real Daemon, the real nftables backend
(rendering, diff, delta and full applies), the in-memory fake kernel in place of the kernel
(sgagent.backend.fake), a source driven by hand.  Reconcile, refusal of an invalid document,
the last known good document at start, drift repaired when the kernel reports a foreign
change, a refused apply retried at the next full check, counters that never go back."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any, Callable

from sgagent.backend.fake import FakeKernel
from sgagent.backend.faults import Faulty
from sgagent.backend.objects import Rule
from sgagent.backend.transaction import NO_TABLE, AddRules, FlushChain, replace
from sgagent.compiler import compile_document
from sgagent.daemon.config import parse_config
from sgagent.daemon.daemon import HUP, TERM, Daemon
from sgagent.daemon.sources import Invalid, Snapshot, Source, Unavailable
from sgagent.daemon.state import StateStore
from sgagent.load import DocumentError, parse_data
from sgagent.nft.backend import NftBackend
from sgagent.nft.names import parse_comment
from sgagent.nft.render import render

from ..daemon.support import wait_until


def document(ports: list[int], members: list[str] | None = None) -> dict[str, Any]:
    rules = [{"id": f"tcp-{p}", "direction": "inbound", "protocol": "tcp", "ports": p,
              "source": "10.0.0.0/8"} for p in ports]
    rules.append({"id": "db", "direction": "inbound", "protocol": "tcp", "ports": 5432,
                  "source": {"group": "sg-app"}})
    return {"version": 1,
            "host": {"instance": "i-fake", "account": "1", "network": "vpc",
                     "nics": [{"name": "eth0", "role": "vpc",
                               "security_groups": ["sg-web", "sg-app"]}]},
            "security_groups": {"sg-web": {"rules": rules},
                                "sg-app": {"members": members or ["10.1.0.5"]}}}


def snapshot(raw: dict[str, Any]) -> Snapshot:
    return Snapshot(parse_data(copy.deepcopy(raw)), json.dumps(raw).encode(), "hand")


def loaded(raw: dict[str, Any]) -> str:
    """The fake's listing of a fresh full load of ``raw``."""
    k = FakeKernel()
    k.execute(replace(NO_TABLE, render(compile_document(parse_data(copy.deepcopy(raw))))))
    return k.listing()


class HandSource(Source):
    kind = "hand"

    def start(self) -> None:
        pass

    def refresh(self, force: bool = False) -> None:
        pass

    def send(self, event: Any) -> None:
        self._emit(event)


class Running:
    """The daemon's loop on this (the main) thread, as ``sgagent run`` runs it; the test's
    steps on another, ending with SIGTERM's event."""

    def __init__(self, tmp_path: Path, kernel: Any, resync: float = 60.0) -> None:
        self.cfg = parse_config({"state_dir": str(tmp_path / "state"), "revocation": False,
                                 "resync_interval": resync})
        self.kernel = kernel
        self.source: HandSource | None = None

        def make_source(emit):
            self.source = HandSource(emit)
            return self.source
        self.daemon = Daemon(self.cfg, backend=NftBackend(kernel=kernel),
                             source_factory=make_source)

    def run(self, steps: Callable[["Running"], None], before: Callable[[HandSource], None]
            = lambda s: None) -> None:
        failure: list[BaseException] = []

        def drive() -> None:
            try:
                wait_until(lambda: self.source is not None, 5, what="the source")
                assert self.source is not None
                before(self.source)
                steps(self)
            except BaseException as exc:  # noqa: BLE001 - handed to the test below
                failure.append(exc)
            finally:
                self.daemon.events.put(TERM)

        t = threading.Thread(target=drive)
        t.start()
        rc = self.daemon.run()
        t.join(10)
        if failure:
            raise failure[0]
        assert rc == 0

    def send(self, raw: dict[str, Any]) -> None:
        assert self.source is not None
        self.source.send(snapshot(raw))

    def applied(self, raw: dict[str, Any]) -> bool:
        a = self.daemon.applied
        return a is not None and a.raw == json.dumps(raw).encode()


A, B = document([80, 443]), document([80, 8443])


def test_a_new_document_is_applied_as_a_difference(tmp_path):
    kernel = FakeKernel(parse_comment)
    r = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        assert kernel.listing() == loaded(A)
        commits = kernel.commits
        r.send(B)
        wait_until(lambda: r.applied(B), 5, what="B")
        assert kernel.listing() == loaded(B)
        assert kernel.commits == commits + 1
        assert r.daemon.ready
        wait_until(lambda: StateStore(r.cfg.state_dir).load().raw == json.dumps(B).encode(), 5,
                   what="B saved as last known good")
        members = document([80, 8443], members=["10.1.0.5", "10.1.0.6"])
        r.send(members)
        wait_until(lambda: r.applied(members), 5, what="a members change")
        assert kernel.listing() == loaded(members)
    r.run(steps)


def test_an_invalid_document_is_refused_and_the_rules_stay(tmp_path, caplog):
    kernel = FakeKernel(parse_comment)
    r = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        gen = kernel.generation()
        assert r.source is not None
        r.source.send(Invalid(DocumentError(["security_groups.sg-web: bad"], "hand"), "hand"))
        wait_until(lambda: "refused the document from hand" in caplog.text, 5,
                   what="the refusal")
        assert kernel.generation() == gen and kernel.listing() == loaded(A)
        assert r.applied(A) and r.daemon.ready
    r.run(steps)


def test_the_last_known_good_document_is_applied_when_the_source_is_down_at_start(tmp_path):
    kernel = FakeKernel(parse_comment)
    r = Running(tmp_path, kernel)
    StateStore(r.cfg.state_dir).save(json.dumps(A).encode(), "earlier")

    def steps(r: Running) -> None:
        wait_until(lambda: r.daemon.ready, 5, what="the last known good")
        assert r.daemon.applied is not None
        assert r.daemon.applied.origin == "last known good (earlier)"
        assert kernel.listing() == loaded(A)
        r.send(B)  # and the source, once back, takes over
        wait_until(lambda: r.applied(B), 5, what="B")
        assert kernel.listing() == loaded(B)
    r.run(steps, before=lambda s: s.send(Unavailable("connection refused", "hand")))


def test_drift_is_repaired_as_soon_as_the_kernel_reports_it(tmp_path):
    kernel = FakeKernel(parse_comment)
    r = Running(tmp_path, kernel)  # the full check is a minute away: only the watch can tell

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        kernel.tamper(FlushChain("in_eth0"))
        wait_until(lambda: r.daemon.repairs == 1, 5, what="the repair of a flushed chain")
        assert kernel.listing() == loaded(A)
        kernel.tamper(AddRules("in_eth0", (Rule("accept"),)))
        wait_until(lambda: r.daemon.repairs == 2, 5, what="the repair of an added rule")
        assert kernel.listing() == loaded(A)
    r.run(steps)


def test_a_refused_apply_is_retried_at_the_next_full_check_and_the_rules_stay(tmp_path):
    kernel = Faulty(FakeKernel(parse_comment))
    r = Running(tmp_path, kernel, resync=0.3)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        kernel.refusing = True
        r.send(B)
        wait_until(lambda: r.daemon.apply_failures >= 1, 5, what="the refusal")
        assert kernel.listing() == loaded(A) and r.applied(A)
        wait_until(lambda: r.daemon.apply_failures >= 2, 5, what="a retry at the full check")
        assert kernel.listing() == loaded(A)
        kernel.refusing = False
        wait_until(lambda: r.applied(B), 5, what="B at the next full check")
        assert kernel.listing() == loaded(B)
        r.daemon.events.put(HUP)  # and a full check with nothing to do changes nothing
        gen = kernel.generation()
        wait_until(lambda: r.daemon.events.empty(), 5, what="the loop to catch up")
        assert kernel.generation() == gen
    r.run(steps)


def test_counters_of_kept_rules_never_go_back(tmp_path):
    kernel = FakeKernel(parse_comment)
    r = Running(tmp_path, kernel)

    def counts() -> dict[tuple, int]:
        return {(c.key.group, c.key.rule, c.key.policy): c.packets for c in kernel.counters()}

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        for name in kernel.values():
            kernel.count(name, 10)
        before = counts()
        r.send(B)  # tcp-443 goes, tcp-8443 comes, the rest stays
        wait_until(lambda: r.applied(B), 5, what="B")
        after = counts()
        kept = set(before) & set(after)
        assert ("sg-web", "tcp-80", "accept") in kept and ("sg-web", "tcp-8443", "accept") in after
        assert all(after[k] == before[k] for k in kept)
        assert after[("sg-web", "tcp-8443", "accept")] == 0
        kernel.tamper(FlushChain("in_eth0"))  # and a repair (a full replacement) keeps them
        wait_until(lambda: r.daemon.repairs == 1, 5, what="the repair")
        assert counts() == after
    r.run(steps)


def test_the_boot_restore_loads_the_saved_document_once(tmp_path):
    from sgagent.daemon.restore import restore
    kernel = FakeKernel(parse_comment)
    state = str(tmp_path / "state")
    r = restore(state, None, backend=NftBackend(kernel=kernel))
    assert not r.applied and "nothing saved" in r.message and kernel.listing() == ""
    StateStore(state).save(json.dumps(A).encode(), "earlier")
    assert restore(state, None, backend=NftBackend(kernel=kernel)).applied
    assert kernel.listing() == loaded(A) and kernel.closed
    gen = kernel.generation()
    StateStore(state).save(json.dumps(B).encode(), "later")
    r = restore(state, None, backend=NftBackend(kernel=kernel))  # a table is loaded: kept
    assert not r.applied and kernel.generation() == gen
    assert restore(state, None, force=True, backend=NftBackend(kernel=kernel)).applied
    assert kernel.listing() == loaded(B)
