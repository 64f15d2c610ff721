"""The daemon's flow-log reader: NFLOG copies in, flow records out.

A thread reads the NFLOG group (:class:`sgagent.flowlog.nflog.NflogSocket`), decodes each
packet's tag (:mod:`sgagent.flowlog.prefix`; packets another program logged to the group are
skipped), and writes one record per packet to its sink.  ``records`` counts the records
written (``sgagent_log_records_total``), ``lost`` the kernel's reports that copies were
dropped because the reader fell behind (``sgagent_log_lost_total``).
"""

from __future__ import annotations

import logging
import threading

from .nflog import NflogSocket
from .prefix import decode
from .record import record

log = logging.getLogger("sgagent.flowlog")


class FlowLogReader:
    def __init__(self, sink, group: int, instance: str | None = None,
                 netns_name: str | None = None) -> None:
        self.sink = sink
        self.instance = instance
        self.records = 0
        self.skipped = 0
        self._sock = NflogSocket(group, netns_name, timeout=0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sgagent-flowlog", daemon=True)

    @property
    def lost(self) -> int:
        return self._sock.overruns

    def start(self) -> "FlowLogReader":
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            got = False
            try:
                for pkt in self._sock.packets():
                    got = True
                    tag = decode(pkt.prefix)
                    if tag is None:
                        self.skipped += 1
                        continue
                    self.sink.write(record(pkt, tag, self.instance))
                    self.records += 1
            except OSError as exc:  # a sink that cannot be written: said, and tried again
                log.warning("flow log: %s", exc)
                if self._stop.wait(1.0):
                    return
            if not got and self._stop.is_set():  # stopped, and what was queued is written
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self._sock.close()
        self.sink.close()
