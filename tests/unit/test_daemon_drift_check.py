"""The daemon's drift check in the size of the change (issue 10): after an apply the table is
not read back; a check with nothing committed since, or with only other tables' commits, reads
nothing of the table; a change the monitor reports is repaired; a restarted daemon takes a
table it saved the kernel state of as applied without listing or comparing it.  The real
Daemon and NftBackend over the in-memory fake kernel, as in test_daemon_fake."""

from __future__ import annotations

import copy
import json

from sgagent.backend.fake import FakeKernel
from sgagent.backend.transaction import NO_TABLE, FlushChain, replace
from sgagent.compiler import compile_document
from sgagent.daemon.daemon import HUP
from sgagent.daemon.sources import Unavailable
from sgagent.daemon.state import StateStore
from sgagent.load import parse_data
from sgagent.nft.names import parse_comment
from sgagent.nft.render import render

from ..daemon.support import wait_until
from .test_daemon_fake import A, B, Running, loaded


class Listed(FakeKernel):
    """A fake kernel that counts how often its table is listed whole."""

    def __init__(self) -> None:
        super().__init__(parse_comment)
        self.listings = 0

    def listing(self) -> str:
        self.listings += 1
        return super().listing()


class Unwatched(Listed):
    """One whose changes cannot be watched (the daemon's monitor fails to start)."""

    def watch(self, on_change):
        raise OSError("no notifications here")


def checked(r: Running) -> None:
    """A full check (SIGHUP's), waited for: the loop takes the second event only when it is
    done with the first."""
    r.daemon.events.put(HUP)
    r.daemon.events.put(HUP)
    wait_until(lambda: r.daemon.events.empty(), 5, what="the loop to catch up")


def test_no_listing_after_an_apply_nor_at_a_check_with_nothing_changed(tmp_path):
    kernel = Listed()
    r = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        r.send(B)
        wait_until(lambda: r.applied(B), 5, what="B")
        checked(r)
        kernel.foreign_commit()   # another table's commit: the generation moves
        checked(r)
        assert kernel.listings == 0 and r.daemon.repairs == 0
        assert kernel.listing() == loaded(B)
    r.run(steps)


def test_a_reported_change_is_repaired_without_a_listing_and_the_next_edit_is_a_delta(
        tmp_path):
    kernel = Listed()
    r = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        kernel.tamper(FlushChain("in_eth0"))
        wait_until(lambda: r.daemon.repairs == 1, 5, what="the repair")
        assert kernel.listing() == loaded(A)
        kernel.listings = 0
        commits = kernel.commits
        r.send(B)
        wait_until(lambda: r.applied(B), 5, what="B")
        assert kernel.listing() == loaded(B) and kernel.commits == commits + 1
        checked(r)
        assert r.daemon.repairs == 1 and kernel.listings == 1   # the assert's own
    r.run(steps)


def test_an_unreported_change_is_found_by_the_full_check_without_a_monitor(tmp_path):
    """Without the monitor the listing after the apply is the reference, as before."""
    kernel = Unwatched()
    r = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: r.applied(A), 5, what="A")
        checked(r)
        assert r.daemon.repairs == 0
        kernel.tamper(FlushChain("in_eth0"), notify=False)
        checked(r)
        wait_until(lambda: r.daemon.repairs == 1, 5, what="the repair")
        assert kernel.listing() == loaded(A)
    r.run(steps)


def test_a_restarted_daemon_takes_the_table_it_saved_as_applied(tmp_path):
    kernel = Listed()
    first = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: StateStore(r.cfg.state_dir).load() is not None, 5, what="the save")
    first.run(steps)
    saved = StateStore(first.cfg.state_dir).load()
    assert saved is not None and saved.kernel is not None and saved.live is None
    gen = kernel.generation()

    second = Running(tmp_path, kernel)

    def again(r: Running) -> None:
        wait_until(lambda: r.daemon.ready, 5, what="ready")
        assert r.daemon.applied is not None and r.daemon.applied.raw == json.dumps(A).encode()
        assert kernel.generation() == gen   # taken as it is, not loaded again
        kernel.tamper(FlushChain("in_eth0"))  # and watched for drift from then on
        wait_until(lambda: r.daemon.repairs == 1, 5, what="the repair")
        assert kernel.listing() == loaded(A)
    second.run(again, before=lambda s: s.send(Unavailable("connection refused", "hand")))


def test_a_table_changed_while_no_daemon_ran_is_not_taken_as_the_saved_one(tmp_path):
    kernel = Listed()
    first = Running(tmp_path, kernel)

    def steps(r: Running) -> None:
        r.send(A)
        wait_until(lambda: StateStore(r.cfg.state_dir).load() is not None, 5, what="the save")
    first.run(steps)
    kernel.tamper(FlushChain("in_eth0"), notify=False)
    second = Running(tmp_path, kernel)

    def again(r: Running) -> None:
        wait_until(lambda: r.daemon.ready, 5, what="ready")
        assert r.daemon.applied is None   # kept as it is, not taken as the saved document
    second.run(again, before=lambda s: s.send(Unavailable("connection refused", "hand")))


def test_a_table_loaded_by_someone_else_is_recognised_by_comparing_it(tmp_path):
    """The boot restore's table: another generation, no fingerprint; the same listing as the
    saved document's (compared through a scratch kernel)."""
    kernel = Listed()
    kernel.execute(replace(NO_TABLE, render(compile_document(parse_data(copy.deepcopy(A))))))
    r = Running(tmp_path, kernel)
    StateStore(r.cfg.state_dir).save(json.dumps(A).encode(), "earlier")

    def steps(r: Running) -> None:
        wait_until(lambda: r.daemon.ready, 5, what="ready")
        assert r.daemon.applied is not None and r.daemon.applied.raw == json.dumps(A).encode()
    r.run(steps, before=lambda s: s.send(Unavailable("connection refused", "hand")))
