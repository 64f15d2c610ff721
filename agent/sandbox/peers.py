"""Serializing use of one peer address across NICs.

The host has one route per peer address (``P/32 via gw dev NIC``).  Any
probe with peer P on NIC n needs that route to point at n, in both
directions (outbound packets and inbound replies).  :class:`PeerRouteLock`
is a per-peer "colour" lock living on the probe event loop: any number of
holders for the same (peer, NIC), never two NICs for one peer at a time;
switching NIC rewrites the host route.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from .addressing import IPAddress
from .topology import Topology

__all__ = ["PeerRouteLock"]


class PeerRouteLock:
    """Must only be used from the event loop it was first used on."""

    def __init__(self, topology: Topology) -> None:
        self._topology = topology
        self._holders: dict[IPAddress, tuple[str, int]] = {}  # peer -> (nic, count)
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @contextlib.asynccontextmanager
    async def hold(self, ifname: str, peer: IPAddress) -> AsyncIterator[None]:
        """Hold the host route for ``peer`` pointed at ``ifname``."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(
                lambda: peer not in self._holders or self._holders[peer][0] == ifname
            )
            if peer not in self._holders and self._topology.route_nic(peer) != ifname:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self._topology.route_peer_via, ifname, peer)
            nic, count = self._holders.get(peer, (ifname, 0))
            self._holders[peer] = (nic, count + 1)
        try:
            yield
        finally:
            async with cond:
                nic, count = self._holders[peer]
                if count <= 1:
                    del self._holders[peer]
                else:
                    self._holders[peer] = (nic, count - 1)
                cond.notify_all()
