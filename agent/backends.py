"""Which backend enforces a ruleset: the one place that maps a backend's name (the CLI's
``--backend``, the daemon's ``backend:``) to the class that renders and applies it.

Each backend is imported only when chosen, so a command pays for the one it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend.kernel import Backend
    from .ir import Ruleset

BACKENDS = ("nftables",)
RENDERINGS = ("sets", "linear")


class UnknownBackend(ValueError):
    """A name that is not a backend, or a rendering the backend does not have."""


def _check(name: str, rendering: str) -> None:
    if name not in BACKENDS:
        raise UnknownBackend(f"--backend: {name!r} is not a backend (available: {', '.join(BACKENDS)})")
    if rendering not in RENDERINGS:
        raise UnknownBackend(f"--rendering: {rendering!r} is not a rendering ({' | '.join(RENDERINGS)})")


def make_backend(name: str = "nftables", netns: str | None = None,
                 rendering: str = "sets") -> "Backend":
    """The backend called ``name``, working in the named network namespace ``netns``."""
    _check(name, rendering)
    from .nft.backend import NftBackend
    return NftBackend(netns, rendering)


def render_text(name: str, rs: "Ruleset", rendering: str = "sets") -> str:
    """What ``name`` would load for ``rs``, as text (``sgagent compile``; needs no root)."""
    _check(name, rendering)
    from .nft.render import render
    return render(rs, rendering).text()
