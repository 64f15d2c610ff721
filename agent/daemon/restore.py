"""``sgagent restore``: apply the last known good document once and exit (the boot unit).

Run by ``sgagent-restore.service`` before ``network-pre.target``, so that the kernel enforces
the last rules before any interface comes up; the daemon takes over later. Interfaces need not
exist yet: nftables matches them by name.

When the sgagent table is already in the kernel, nothing is done: whatever loaded it this boot
(an earlier restore, or the daemon, which saves every document it applies) is at least as new
as the saved file, and replacing it could bring back older rules (if a later save failed) or
take over from a running daemon. ``force=True`` replaces it anyway.
"""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

from ..backend.kernel import Backend
from ..compiler import compile_document
from .state import StateStore


@dataclass
class RestoreResult:
    applied: bool
    message: str


def restore(state_dir: str, netns_name: str | None, force: bool = False, *,
            backend: Backend | None = None, backend_name: str = "nftables") -> RestoreResult:
    """Apply the saved document; ``applied=False`` if nothing was saved yet, or if the sgagent
    table is already loaded (unless ``force``).  ``backend`` (closed here): default the one
    called ``backend_name`` in ``netns_name``.

    Raises DocumentError (saved file unusable) or ApplyError (kernel refused it).
    """
    if backend is None:
        from ..backends import make_backend
        backend = make_backend(backend_name, netns_name)
    store = StateStore(state_dir)
    with closing(backend) as be:
        if not force and be.loaded():
            return RestoreResult(False, "the sgagent table is already loaded; left as it is "
                                        "(--force replaces it with the saved document)")
        saved = store.load()
        if saved is None:
            return RestoreResult(False, f"nothing saved in {store.path}; no rules restored")
        rs = compile_document(saved.document)
        be.apply(rs)
    rules = sum(len(c.decisions) for c in rs.chains)
    return RestoreResult(True, f"restored the document saved {saved.saved_at} from {saved.origin}"
                               f": {rules} rule decisions on {len(rs.nics)} NICs")
