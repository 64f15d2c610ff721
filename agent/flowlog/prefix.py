"""The tag a backend gives each logged packet (the NFLOG prefix), and its reading.

``nic|in|d|group|rule``: NIC, direction (``in``/``out``), verdict letter (``a`` accept, ``d``
drop, ``r`` reject; upper case for an audit rule: ``D`` is *would drop*), group (empty for a
default) and rule id -- the same identity as the decision's counter, at most 117 bytes (NIC 15,
group and rule 48 each), within the kernel's 127.  A record needs nothing else to say who
decided: the reader keeps no copy of the ruleset.
"""

from __future__ import annotations

from typing import NamedTuple

from ..ir import CounterKey

PREFIX_MAX = 127
_DIR = {"inbound": "in", "outbound": "out"}
_UNDIR = {v: k for k, v in _DIR.items()}
_POL = {"accept": "a", "drop": "d", "reject": "r"}
_UNPOL = {v: k for k, v in _POL.items()}


class Tag(NamedTuple):
    nic: str
    direction: str
    verdict: str        # accept | drop | reject | would accept | would drop | would reject
    group: str | None
    rule: str


def encode(key: CounterKey) -> str:
    letter = _POL[key.policy].upper() if key.mode == "audit" else _POL[key.policy]
    text = "|".join([key.nic, _DIR[key.direction], letter, key.group or "", key.rule])
    if len(text.encode()) > PREFIX_MAX:  # validation keeps names short enough: a bug
        raise ValueError(f"log prefix too long ({len(text.encode())} > {PREFIX_MAX}): {text}")
    return text


def decode(text: str) -> Tag | None:
    """The tag of a prefix, or None if it is not one of ours."""
    parts = text.split("|", 4)
    if len(parts) != 5 or parts[1] not in _UNDIR or parts[2].lower() not in _UNPOL:
        return None
    nic, d, letter, group, rule = parts
    policy = _UNPOL[letter.lower()]
    return Tag(nic, _UNDIR[d], policy if letter.islower() else f"would {policy}",
               group or None, rule)
