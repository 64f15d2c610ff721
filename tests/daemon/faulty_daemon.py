"""``sgagent run`` with a kernel that refuses every transaction while a file exists (see
:class:`sgagent.backend.faults.Faulty`): ``python faulty_daemon.py CONFIG FAULT_FILE``.  The
fault is injected here, around the real nftables kernel, never by the daemon itself."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sgagent.backend.faults import Faulty
from sgagent.daemon.config import load_config
from sgagent.daemon.daemon import Daemon, setup_logging
from sgagent.nft.backend import NftBackend
from sgagent.nft.kernel import NftKernel


class WhileFileExists(Faulty):
    def __init__(self, kernel, path: str) -> None:
        super().__init__(kernel)
        self.path = path

    @property
    def refusing(self) -> bool:  # type: ignore[override]
        return os.path.exists(self.path)

    @refusing.setter
    def refusing(self, value: bool) -> None:
        pass


def main(config: str, fault: str) -> int:
    cfg = load_config(Path(config))
    setup_logging(cfg.log_level)
    backend = NftBackend(cfg.netns, kernel=WhileFileExists(NftKernel(cfg.netns), fault))
    return Daemon(cfg, backend=backend).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
