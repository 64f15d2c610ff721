"""The enforcement harness: hand-written expectations, checked against the real kernel, the
evaluator and the counters at once (see sgagent.verify)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sgagent.load import load_file
from sgagent.verify import Expectation as Expect  # noqa: F401  (re-exported for the tests)
from sgagent.verify import check

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = float(os.environ.get("SGAGENT_PROBE_TIMEOUT", "1.0"))


def enforce(path: str | Path, expects: list[Expect], backend_name: str = "nftables") -> None:
    """Apply the document at ``path`` in a fresh sandbox with the backend called
    ``backend_name`` and probe ``expects``; fail with a truth table on any mismatch of
    outcome, oracle or counters."""
    doc = load_file(ROOT / path)
    report = check(doc, list(expects), timeout=TIMEOUT, backend_name=backend_name)
    if not report.ok:
        pytest.fail(f"{path} ({backend_name}): kernel, oracle or counters differ from the "
                    "expectations\n"
                    + report.table(), pytrace=False)
