"""How IR identities become iptables chain and ipset names and rule comments, and back.

Everything sgagent creates is named ``sgagent...``: chains (at most 28 characters) and ipsets
(at most 31).  Chains and sets that are named after their content (``sgagent-k-``, ``-n-``,
``-t-``, ``sgagent-s-``) hold the same content whenever they hold that name.  A rule that
decides carries its counter's identity as a comment.
"""

from __future__ import annotations

import base64
import hashlib
import re

from ..ir import CounterKey
from ..nft.names import counter_comment, parse_comment

PREFIX = "sgagent"
ROOTS = {"INPUT": "sgagent-INPUT", "FORWARD": "sgagent-FORWARD", "OUTPUT": "sgagent-OUTPUT"}
_DIR = {"inbound": "in", "outbound": "out"}
_SAFE_IF = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_SAFE_COMMENT = re.compile(r"[A-Za-z0-9_.:/@+=,|-]{1,250}")
B64 = "b64:"


def digest(*parts: str) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def nic_chain(nic: str, direction: str) -> str:
    name = nic if _SAFE_IF.fullmatch(nic) else "x" + hashlib.sha1(nic.encode()).hexdigest()[:10]
    return f"{PREFIX}-{_DIR[direction]}-{name}"


def content_chain(kind: str, rules: tuple[str, ...]) -> str:
    """A chain named after its rules (``kind``: k class, n lookup node, t tail)."""
    return f"{PREFIX}-{kind}-{digest(*rules)}"


def content_set(*parts: str) -> str:
    return f"{PREFIX}-s-{digest(*parts)}"


def comment_of(key: CounterKey) -> str:
    """The counter identity as a rule comment iptables-restore takes as one word."""
    text = counter_comment(key)
    if _SAFE_COMMENT.fullmatch(text):
        return text
    return B64 + base64.urlsafe_b64encode(text.encode()).decode()


SUPPRESSED = "%|"  # a suppressed-records comment: this, then its decision's (as nftables)


def suppressed_comment(key: CounterKey) -> str:
    """The comment of the rules that count what a logged decision's rate limit held back;
    :func:`key_of` reads no decision from it (so no rule counter sums it)."""
    return B64 + base64.urlsafe_b64encode((SUPPRESSED + counter_comment(key)).encode()).decode()


def suppressed_key(comment: str) -> CounterKey | None:
    """The logged decision of a suppressed-records comment (None: another comment)."""
    if not comment.startswith(B64):
        return None
    try:
        text = base64.urlsafe_b64decode(comment[len(B64):]).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return parse_comment(text[len(SUPPRESSED):]) if text.startswith(SUPPRESSED) else None


def key_of(comment: str) -> CounterKey | None:
    if comment.startswith(B64):
        try:
            comment = base64.urlsafe_b64decode(comment[len(B64):]).decode()
        except (ValueError, UnicodeDecodeError):
            return None
    return parse_comment(comment)


def interface_problem(nic: str) -> str | None:
    """Why iptables cannot match interface ``nic`` exactly (None: it can).  iptables-restore
    reads '"' as a quote (``-i a"b`` would match ``ab``); a name with a trailing '+' (a
    wildcard to iptables) is matched through an ipset, which cannot hold one with a ','.  A
    leading '!' is literal to iptables 1.8 (negation is a '!' before the option)."""
    if '"' in nic:
        return "iptables-restore reads '\"' as a quote"
    if iface_by_set(nic) and "," in nic:
        return "a trailing '+' is a wildcard to iptables, and ipset cannot hold a name with ','"
    return None


def iface_by_set(nic: str) -> bool:
    """Whether ``nic`` is matched through an ipset of type ``hash:net,iface`` (exact names)
    rather than ``-i``/``-o``, which read a trailing '+' as a wildcard."""
    return nic.endswith("+")
