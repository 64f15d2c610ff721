"""Which backend enforces a ruleset: the one place that maps a backend's name (the CLI's
``--backend``, the daemon's ``backend:``) to the class that renders and applies it.

``nftables`` (the ``inet sgagent`` table), ``iptables`` (chains and ipsets named ``sgagent*``,
in the variant -- legacy or nf_tables -- that holds the host's rules), or ``auto``: nftables
where sgagent's nftables table is loaded or the host has no iptables rules; iptables where
sgagent's iptables chains are, or where the host's own rules are iptables rules (Docker,
kube-proxy, fail2ban insist on them; mixing variants silently splits a firewall).

Each backend is imported only when chosen, so a command pays for the one it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .backend.kernel import Backend
    from .ir import Ruleset

BACKENDS = ("nftables", "iptables", "auto")
RENDERINGS = ("sets", "linear")


class UnknownBackend(ValueError):
    """A name that is not a backend, or a rendering the backend does not have."""


class Choice(NamedTuple):
    name: str            # nftables | iptables
    variant: str | None  # iptables: legacy | nft
    why: str


def _check(name: str, rendering: str) -> None:
    if name not in BACKENDS:
        raise UnknownBackend(f"--backend: {name!r} is not a backend (available: {', '.join(BACKENDS)})")
    if rendering not in RENDERINGS:
        raise UnknownBackend(f"--rendering: {rendering!r} is not a rendering ({' | '.join(RENDERINGS)})")


def choose(netns: str | None = None) -> Choice:
    """What ``auto`` picks in the named network namespace (reads its firewall: root)."""
    from .ipt.variant import detect, survey
    from .nft.kernel import NftKernel

    with NftKernel(netns) as k:
        if k.live().table:
            return Choice("nftables", None, "sgagent's nftables table is loaded")
    found = survey(netns)
    for v in ("nft", "legacy"):
        if found[v][1]:
            return Choice("iptables", v, f"sgagent's iptables chains are loaded ({v})")
    if not found["legacy"][0] and not found["nft"][0]:
        return Choice("nftables", None, "the host has no iptables rules")
    v = detect(netns, found)
    return Choice("iptables", v, f"the host's own rules are iptables rules ({v}: "
                                 f"{found[v][0]} rules)")


def make_backend(name: str = "nftables", netns: str | None = None,
                 rendering: str = "sets") -> "Backend":
    """The backend called ``name``, working in the named network namespace ``netns``."""
    _check(name, rendering)
    variant = None
    if name == "auto":
        name, variant, _ = choose(netns)
    if name == "iptables":
        from .ipt.backend import IptBackend
        return IptBackend(netns, rendering, variant=variant)
    from .nft.backend import NftBackend
    return NftBackend(netns, rendering)


def render_text(name: str, rs: "Ruleset", rendering: str = "sets") -> str:
    """What ``name`` would load for ``rs``, as text (``sgagent compile``; needs no root, but
    ``auto`` reads this host's firewall to choose)."""
    _check(name, rendering)
    if name == "auto":
        try:
            name = choose().name
        except Exception as exc:  # noqa: BLE001 - no root, no libnftables: say so
            raise UnknownBackend(f"--backend auto: cannot read this host's firewall to "
                                 f"choose ({exc}); name nftables or iptables") from None
    if name == "iptables":
        from .ipt.render import RenderError, render as ipt_render
        try:
            return ipt_render(rs, rendering).text()
        except RenderError as exc:
            raise UnknownBackend(str(exc)) from None
    from .nft.render import render
    return render(rs, rendering).text()
