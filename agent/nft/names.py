"""How IR identities become nftables object names and comments, and back again.

nftables identifiers cannot be quoted, so names are built from a safe alphabet; the full
identity of a counter travels in its comment (at most 128 bytes), which ``status`` and the
metrics collector decode.
"""

from __future__ import annotations

import functools
import hashlib
import re

from ..ir import CounterKey

TABLE = "sgagent"
FAMILY = "inet"
COMMENT_MAX = 127
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_DIR = {"inbound": "in", "outbound": "out"}
_UNDIR = {v: k for k, v in _DIR.items()}
_POL = {"accept": "a", "drop": "d", "reject": "r"}
_UNPOL = {v: k for k, v in _POL.items()}


def _safe(text: str) -> str:
    if _SAFE.match(text):
        return text
    return "x" + hashlib.sha1(text.encode()).hexdigest()[:12]


def chain_name(nic: str, direction: str) -> str:
    return f"{_DIR[direction]}_{_safe(nic)}"


def set_name(group: str, family: int) -> str:
    return f"g{family}_{_safe(group)}"


@functools.lru_cache(maxsize=1 << 17)
def counter_name(key: CounterKey) -> str:
    ident = "\x1f".join([key.nic, key.direction, key.group or "", key.rule, key.policy])
    return "c_" + hashlib.sha1(ident.encode()).hexdigest()[:20]


def counter_comment(key: CounterKey) -> str:
    text = "|".join([key.nic, _DIR[key.direction], _POL[key.policy], key.group or "", key.rule])
    if len(text.encode()) > COMMENT_MAX:
        raise ValueError(f"counter identity too long for nftables ({len(text)} > {COMMENT_MAX}): {text}")
    return text


def parse_comment(text: str) -> CounterKey | None:
    parts = text.split("|", 4)
    if len(parts) != 5 or parts[1] not in _UNDIR or parts[2] not in _UNPOL:
        return None
    nic, d, p, group, rule = parts
    return CounterKey(nic, _UNDIR[d], group or None, rule, _UNPOL[p])
