"""The hostile documents of tests/hostile/ as regression cases: `sgagent validate` and
`sgagent compile` refuse each (exit 1), with a short message that names the problem, no
traceback, within bounded time and memory (the worker runs under RLIMIT_AS and RLIMIT_CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .runner import Worker, check_reply

HOSTILE = Path(__file__).resolve().parents[1] / "hostile"


def corpus() -> list[tuple[str, str]]:
    """(file, expected text) from the table in tests/hostile/README.md."""
    rows = []
    for line in (HOSTILE / "README.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        rows.append((cells[0].strip("`"), cells[1].strip("`")))
    return rows


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def test_the_table_lists_every_file_and_nothing_else():
    listed = {f for f, _ in corpus()}
    present = {p.name for p in HOSTILE.iterdir()} - {"README.md"}
    assert listed == present


@pytest.mark.parametrize("name,expected", corpus())
def test_hostile_document_is_refused_briefly(worker, name, expected):
    path = str(HOSTILE / name)
    for command in ("validate", "compile"):
        reply = worker.run([command, path])
        check_reply(reply, f"{command} {name}")
        assert reply["rc"] == 1 and reply["out"] == "", reply
        err = reply["err"]
        assert expected in err, f"{command} {name}: {err[:1000]}"
        assert err.startswith(f"{path}: refused, "), err[:300]
        assert reply["err_len"] < 8000, f"{name}: {reply['err_len']} characters"
        assert reply["cpu"] < 10, f"{name}: {reply['cpu']:.1f} s of CPU"
    assert reply["maxrss_kib"] < 512 * 1024, f"{name}: {reply['maxrss_kib']} KiB"
