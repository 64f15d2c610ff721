"""Which iptables variant a host uses, found as kube-proxy's iptables wrapper finds it: the
variant whose tables hold rules.  Mixing the two on one host splits the firewall silently
(packets pass both), so sgagent joins the one the host's own rules are in.

- a variant that already holds sgagent's chains is the one;
- else the variant with more rules (``-A`` lines of ``iptables-save`` and ``ip6tables-save``,
  all tables), nf_tables on a tie (the default of current distributions).
"""

from __future__ import annotations

import subprocess

from .. import netns
from .names import ROOTS


def rules_of(netns_name: str | None, variant: str) -> tuple[int, bool]:
    """How many rules that variant's tables hold, and whether sgagent's chains are there."""
    count, ours = 0, False
    for tool in ("iptables", "ip6tables"):
        try:
            proc = subprocess.run(netns.argv_in(netns_name, [f"{tool}-{variant}-save"]),
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("-A "):
                count += 1
            elif line.startswith(f":{ROOTS['INPUT']} "):
                ours = True
    return count, ours


def survey(netns_name: str | None) -> dict[str, tuple[int, bool]]:
    return {v: rules_of(netns_name, v) for v in ("legacy", "nft")}


def detect(netns_name: str | None, found: dict[str, tuple[int, bool]] | None = None) -> str:
    found = found if found is not None else survey(netns_name)
    for v in ("nft", "legacy"):
        if found[v][1]:
            return v
    return "legacy" if found["legacy"][0] > found["nft"][0] else "nft"
