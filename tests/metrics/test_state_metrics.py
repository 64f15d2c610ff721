"""The saved last known good document in the metrics (issue 9, item 6): failed saves counted,
the time of the last good save kept, both in the exposition with HELP and TYPE."""

from __future__ import annotations

from prometheus_client import generate_latest

from sgagent.metrics import AgentStats, build_registry

from .helpers import FakeKernel


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_state_save_metrics_start_at_zero():
    text = build_registry(AgentStats(), FakeKernel(), process=False).exposition().decode()
    assert "# TYPE sgagent_state_save_errors_total counter\n" in text
    assert "# HELP sgagent_state_save_errors_total " in text
    assert "# TYPE sgagent_state_last_save_timestamp_seconds gauge\n" in text
    assert "# HELP sgagent_state_last_save_timestamp_seconds " in text
    s = _samples(text)
    assert s["sgagent_state_save_errors_total"] == 0
    assert s["sgagent_state_last_save_timestamp_seconds"] == 0


def test_failed_saves_count_and_the_last_good_save_time_stays():
    stats = AgentStats()
    stats.state_saved(1_700_000_000.25)
    for _ in range(3):
        stats.state_save_failed()
    stats.state_saved(float("nan"))   # not a time: ignored, like every other clamp
    registry = build_registry(stats, FakeKernel(), process=False)
    for text in (registry.exposition().decode(), generate_latest(registry).decode()):
        s = _samples(text)
        assert s["sgagent_state_save_errors_total"] == 3
        assert s["sgagent_state_last_save_timestamp_seconds"] == 1_700_000_000.25
    stats.state_saved(1_700_000_600.0)
    s = _samples(registry.exposition().decode())
    assert s["sgagent_state_last_save_timestamp_seconds"] == 1_700_000_600.0
    assert s["sgagent_state_save_errors_total"] == 3   # a counter never goes back
