"""``sgagent restore``: apply the last known good document once and exit (the boot unit).

Run by ``sgagent-restore.service`` before ``network-pre.target``, so that the kernel enforces
the last rules before any interface comes up; the daemon takes over later. Interfaces need not
exist yet: nftables matches them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..compiler import compile_document
from .state import StateStore


@dataclass
class RestoreResult:
    applied: bool
    message: str


def restore(state_dir: str, netns_name: str | None) -> RestoreResult:
    """Apply the saved document; ``applied=False`` if nothing was saved yet.

    Raises DocumentError (saved file unusable) or ApplyError (kernel refused it).
    """
    store = StateStore(state_dir)
    saved = store.load()
    if saved is None:
        return RestoreResult(False, f"nothing saved in {store.path}; no rules restored")
    rs = compile_document(saved.document)
    from ..nft.backend import NftBackend
    with NftBackend(netns_name) as be:
        be.apply(rs)
    rules = sum(len(c.decisions) for c in rs.chains)
    return RestoreResult(True, f"restored the document saved {saved.saved_at} from {saved.origin}"
                               f": {rules} rule decisions on {len(rs.nics)} NICs")
