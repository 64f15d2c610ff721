"""How IR identities become nftables object names and comments, and back again.

nftables identifiers cannot be quoted, so names are built from a safe alphabet; the full
identity of a counter travels in its comment (at most 128 bytes), which ``status`` and the
metrics collector decode.  Every string that goes into ruleset text (interface names, comments)
goes through :func:`nft_string`, and only through it.
"""

from __future__ import annotations

import functools
import hashlib
import re

from ..ir import CounterKey

TABLE = "sgagent"
FAMILY = "inet"
COMMENT_MAX = 127
_SAFE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
# What a quoted nftables string cannot carry exactly: it has no escapes, so a '"' ends it; a
# backslash escapes a '*', and a '*' at the end of an interface name is a wildcard; a newline
# or other control character breaks the listing ``nft list`` prints (and reads back);
# surrogates are not text at all.
_UNQUOTABLE = re.compile(r'["\\*\x00-\x1f\x7f-\x9f\ud800-\udfff]')
_DIR = {"inbound": "in", "outbound": "out"}
_UNDIR = {v: k for k, v in _DIR.items()}
_POL = {"accept": "a", "drop": "d", "reject": "r"}
_UNPOL = {v: k for k, v in _POL.items()}


def _safe(text: str) -> str:
    if _SAFE.fullmatch(text):
        return text
    return "x" + hashlib.sha1(text.encode()).hexdigest()[:12]


def nft_string(text: str) -> str:
    """``text`` as an nftables quoted string that stands for exactly ``text`` (never a
    pattern).  Validation refuses every name this cannot render (``model.interface_name_problem``);
    reaching the ValueError here is a bug, and it stops the ruleset from being built."""
    if not text or _UNQUOTABLE.search(text):
        raise ValueError(f"cannot be written as an nftables string exactly: {text[:40]!r}")
    return f'"{text}"'


def chain_name(nic: str, direction: str) -> str:
    return f"{_DIR[direction]}_{_safe(nic)}"


def set_name(group: str, family: int) -> str:
    return f"g{family}_{_safe(group)}"


@functools.lru_cache(maxsize=1 << 17)
def counter_name(key: CounterKey) -> str:
    ident = "\x1f".join([key.nic, key.direction, key.group or "", key.rule, key.policy]
                        + ([key.mode] if key.mode != "enforce" else []))
    return "c_" + hashlib.sha1(ident.encode()).hexdigest()[:20]


def counter_comment(key: CounterKey) -> str:
    """``nic|in|d|group|rule``; an audit rule's policy letter is upper case (``D``: would drop)."""
    pol = _POL[key.policy].upper() if key.mode == "audit" else _POL[key.policy]
    text = "|".join([key.nic, _DIR[key.direction], pol, key.group or "", key.rule])
    if len(text.encode()) > COMMENT_MAX:
        raise ValueError(f"counter identity too long for nftables ({len(text)} > {COMMENT_MAX}): {text}")
    return text


def parse_comment(text: str) -> CounterKey | None:
    parts = text.split("|", 4)
    if len(parts) != 5 or parts[1] not in _UNDIR or parts[2].lower() not in _UNPOL:
        return None
    nic, d, p, group, rule = parts
    return CounterKey(nic, _UNDIR[d], group or None, rule, _UNPOL[p.lower()],
                      "enforce" if p.islower() else "audit")
