"""The counters of what logged decisions' rate limits held back (SEMANTICS section 9).

Each logged decision counts the packets its limit kept from the log on a counter of its own,
``s_`` and the decision counter's hash, whose comment is ``%|`` and the decision's counter
comment: :func:`sgagent.nft.names.parse_comment` reads no rule from it (its direction field
is the NIC name), so ``status``, the rule metrics and ``verify`` never see it.  The same
one-request netlink dump as the rule counters reads them (:class:`SuppressedReader`).
"""

from __future__ import annotations

from ..ir import CounterKey
from .names import parse_comment
from .netlink import NetlinkCounterReader
from .render import MARK, suppressed_counter_name

__all__ = ["SuppressedReader", "parse_suppressed", "suppressed_counter_name"]


def parse_suppressed(comment: str) -> CounterKey | None:
    """The logged decision of a suppressed-records counter's comment (None: another counter)."""
    return parse_comment(comment[len(MARK):]) if comment.startswith(MARK) else None


class SuppressedReader(NetlinkCounterReader):
    """``reader()`` -> a :class:`CounterReading` per logged decision: the records its limit
    suppressed (``packets``)."""

    thread_name = "sgagent-nlsuppressed"
    identify = staticmethod(parse_suppressed)
