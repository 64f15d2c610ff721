"""What the daemon does after an apply, in which order (the fake kernel, without root):
connections the new rules refuse are revoked before the document is saved as last known good
(writing and syncing a large document takes a good part of a second), and the document is
saved all the same, with the digest its source computed."""

from __future__ import annotations

import json

from sgagent.backend.fake import FakeKernel
from sgagent.daemon.revoke import RevokeResult
from sgagent.daemon.state import StateStore, digest
from sgagent.nft.names import parse_comment

from .test_daemon_fake import A, B, Running, wait_until


class Recording:
    """A revoker and a store's save that write down when they ran."""

    def __init__(self, store: StateStore) -> None:
        self.events: list[str] = []
        self._save = store.save
        store.save = self.save  # type: ignore[method-assign]

    def revoke(self, doc, keep_list: bool = True) -> RevokeResult:
        self.events.append("revoke")
        return RevokeResult()

    def save(self, raw, *args, **kw) -> None:
        self.events.append("save")
        self._save(raw, *args, **kw)

    def close(self) -> None:
        pass


def test_revocation_comes_before_the_save_and_the_save_still_happens(tmp_path):
    kernel = FakeKernel(parse_comment)
    r = Running(tmp_path, kernel)
    rec = Recording(r.daemon.store)
    r.daemon.revoker = rec

    def steps(r: Running) -> None:
        for doc in (A, B):
            r.send(doc)
            wait_until(lambda: r.applied(doc), 5, what="the document")
            wait_until(lambda: StateStore(r.cfg.state_dir).info() is not None and
                       StateStore(r.cfg.state_dir).info().digest
                       == digest(json.dumps(doc).encode()), 5, what="saved")
    r.run(steps)
    assert rec.events == ["revoke", "save", "revoke", "save"]
    saved = StateStore(r.cfg.state_dir).load()
    assert saved.raw == json.dumps(B).encode() and saved.digest == digest(saved.raw)

