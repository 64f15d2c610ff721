"""The etcd source reads a group's key again only when its value changed (issue 10): the other
groups of the assembled document are the very same data as before, the document is the one
reading every key gives, and a key that does not read is reported every time, not only the
first. No etcd server: the watch's events are handed to the source as etcd sends them."""

from __future__ import annotations

import base64
import json

import pytest

from sgagent.daemon.config import EtcdSource as EtcdConfig
from sgagent.daemon.source_etcd import EtcdSource
from sgagent.load import DocumentError

PREFIX = "/sgagent"


def put(src: EtcdSource, key: str, value: str | None, rev: int) -> None:
    kv = {"key": base64.b64encode(f"{PREFIX}/{key}".encode()).decode()}
    if value is not None:
        kv["value"] = base64.b64encode(value.encode()).decode()
    src._apply([{"kv": kv, **({"type": "DELETE"} if value is None else {})}], rev)


def group(port: int) -> str:
    return json.dumps({"rules": [{"direction": "inbound", "protocol": "tcp", "ports": port,
                                  "source": "10.0.0.0/8"}]})


def fresh(src: EtcdSource) -> EtcdSource:
    """A source that holds the same keys and has read nothing yet."""
    other = EtcdSource(EtcdConfig.model_validate({"host": "h1"}), lambda ev: None)
    put(other, "hosts/h1", src._host_value.decode(), 1)
    for name, raw in src._groups.items():
        put(other, f"groups/{name}", raw.decode(), 1)
    return other


@pytest.fixture
def src() -> EtcdSource:
    s = EtcdSource(EtcdConfig.model_validate({"host": "h1"}), lambda ev: None)
    put(s, "hosts/h1", json.dumps({"instance": "i", "nics": [
        {"name": "eth0", "security_groups": ["a", "b"]}]}), 1)
    put(s, "groups/a", group(22), 1)
    put(s, "groups/b", group(80), 1)
    return s


def test_an_unchanged_group_is_the_same_data_and_a_changed_one_is_read_again(src):
    first = src.assemble()
    put(src, "groups/b", group(81), 2)
    second = src.assemble()
    assert second == fresh(src).assemble()
    assert second["security_groups"]["a"] is first["security_groups"]["a"]
    assert second["security_groups"]["b"]["rules"][0]["ports"] == 81


def test_a_group_that_does_not_read_is_reported_every_time(src):
    put(src, "groups/b", '{"rules": [', 2)
    for _ in range(2):
        with pytest.raises(DocumentError) as exc:
            src.assemble()
        assert exc.value.errors and exc.value.errors[0].startswith("security_groups.b:")
    put(src, "groups/b", group(82), 3)
    assert src.assemble() == fresh(src).assemble()


def test_a_deleted_group_is_forgotten(src):
    src.assemble()
    put(src, "groups/b", None, 2)
    put(src, "hosts/h1", json.dumps({"instance": "i", "nics": [
        {"name": "eth0", "security_groups": ["a"]}]}), 3)
    assert set(src.assemble()["security_groups"]) == {"a"}
    assert set(src._read) == {"a"}
