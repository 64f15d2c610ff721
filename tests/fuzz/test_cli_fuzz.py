"""Hypothesis-generated YAML and JSON through the command line: `validate`, `compile` and
`apply --dry-run --netns NS` (as root, in a namespace this module creates).  Whatever the input:
never a traceback, a documented exit code (0 or 1; `apply --dry-run` 2, changes pending, in
the namespace that holds no ruleset), bounded output, bounded time and memory -- the code under test
runs in one worker subprocess under RLIMIT_AS and RLIMIT_CPU (tests/fuzz/runner.py).  And what
`validate` accepts, `compile` and `apply --dry-run` accept too.

Inputs: random structures of any JSON/YAML value; valid host documents (tests/strategies.py)
with a value replaced, a key dropped or renamed, a NIC renamed to any string; their YAML text
with anchors and aliases, tags, a line repeated (a duplicate key), truncated, or with characters
spliced in; YAML-looking noise; alias bombs of random width and depth.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sgagent import netns

from ..strategies import documents
from .runner import Worker, check_reply

SETTINGS = dict(deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.worker = Worker()
        self.counter = itertools.count()
        self.ns: str | None = None
        if os.geteuid() == 0:
            self.ns = f"sgf{secrets.token_hex(3)}"
            netns.create(self.ns)
        self.applied = 0

    def close(self) -> None:
        self.worker.close()
        if self.ns is not None:
            netns.delete(self.ns)

    def write(self, data: str | bytes, suffix: str) -> str:
        path = self.tmp / f"in{next(self.counter)}{suffix}"
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
        return str(path)

    def check(self, text: str | bytes, suffix: str = ".yaml", kernel_budget: int = 0) -> dict:
        """validate, then compile (and apply --dry-run, within budget) the text; returns
        validate's reply."""
        path = self.write(text, suffix)
        reply = self.worker.run(["validate", path])
        check_reply(reply, f"validate {path}")
        event("valid" if reply["rc"] == 0 else "refused")
        compiled = self.worker.run(["compile", path])
        check_reply(compiled, f"compile {path}")
        assert compiled["rc"] == reply["rc"], (reply, compiled)
        if reply["rc"] == 0 and self.ns is not None and self.applied < kernel_budget:
            self.applied += 1
            dry = self.worker.run(["apply", "--dry-run", "--netns", self.ns, path])
            check_reply(dry, f"apply --dry-run {path}", codes=(0, 1, 2))
            assert dry["rc"] == 2, dry["err"][:2000]  # the namespace holds no ruleset yet
            assert "the kernel accepts this ruleset" in dry["out_tail"]
        return reply


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("fuzz"))
    yield lab
    lab.close()


# --------------------------------------------------------------------------- strategies

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2 ** 70, 2 ** 70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["tcp", "inbound", "accept", "0.0.0.0/0", "::/0", "22", "80-443", "ALL",
                     "-1/-1", "eth0", "lo", "eth*", "eth\\", "sg-0", "yes", "on", "0755", "~",
                     "!!str", "*a", "&a", "1:20", "é" * 9, "\x00", "\n", '"', "|"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=10), SCALARS),
                                                 inner, max_size=5)), max_leaves=30)


class PlainDumper(yaml.SafeDumper):
    """PyYAML writes a list that occurs twice (both classic NICs' groups) as an anchor and an
    alias, which the agent refuses; written out twice instead."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump(data, as_json: bool) -> str:
    if as_json:
        return json.dumps(data, default=str)
    return yaml.dump(data, Dumper=PlainDumper, allow_unicode=True)


def leaves(data, path=()):
    """Every path into a nested structure (leaves and inner nodes)."""
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from leaves(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from leaves(v, path + (i,))


@st.composite
def mutated_documents(draw):
    doc = draw(documents(max_groups=2, max_rules=4))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(leaves(doc))[1:]
        path = draw(st.sampled_from(paths))
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        how = draw(st.sampled_from(["replace", "replace", "drop", "rename", "nic"]))
        if how == "replace":
            parent[key] = draw(VALUES)
        elif how == "drop" and isinstance(parent, dict):
            del parent[key]
        elif how == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = parent.pop(key)
        elif how == "nic":
            try:
                doc["host"]["nics"][0]["name"] = draw(st.text(max_size=16))
            except (KeyError, IndexError, TypeError):
                pass  # an earlier mutation took the NIC away
    return doc


@st.composite
def yaml_texts(draw):
    """The YAML text of a valid document, then spoilt at the text level."""
    text = yaml.dump(draw(documents(max_groups=2, max_rules=4)), Dumper=PlainDumper,
                     sort_keys=False)
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(["anchor", "tag", "repeat", "splice", "truncate", "quote"]))
        line = lines[i]
        head, sep, rest = line.partition(": ")
        if how == "anchor" and sep:
            name = draw(st.sampled_from(["a", "x", "ab"]))
            lines[i] = f"{head}: &{name} {rest}"
            j = draw(st.integers(i, len(lines) - 1))
            h2, s2, _ = lines[j].partition(": ")
            if s2:
                lines[j] = f"{h2}: *{name}\n"
        elif how == "tag" and sep:
            tag = draw(st.sampled_from(["!!str", "!!int", "!!python/object/apply:os.system",
                                        "!custom", "!", "!!binary", "!!map"]))
            lines[i] = f"{head}: {tag} {rest}"
        elif how == "repeat":
            lines.insert(i, line)                   # a key twice, or a list item twice
        elif how == "splice":
            lines[i] = line[:len(line) // 2] + draw(st.text(max_size=5)) + line[len(line) // 2:]
        elif how == "truncate":
            lines = lines[:i] + [line[:draw(st.integers(0, len(line)))]]
            break
        elif how == "quote" and sep:
            lines[i] = f'{head}: "{rest.rstrip()}\\{draw(st.sampled_from(["0", "a", "u0000", "n"]))}"\n'
    return "".join(lines)


NOISE = st.text(st.sampled_from(list("ab01 :-[]{}\n\t'\"#&*!|>%@`,?~.\\") + ["é", "\x85"]),
                max_size=80)


@st.composite
def alias_bombs(draw):
    width, depth = draw(st.integers(2, 12)), draw(st.integers(2, 12))
    lines = ['l0: &a0 ["' + "x" * draw(st.integers(1, 20)) + '"]']
    for d in range(1, depth + 1):
        lines.append(f"l{d}: &a{d} [" + ", ".join([f"*a{d - 1}"] * width) + "]")
    where = draw(st.sampled_from(["ports", "source", "members", "top"]))
    body = {"ports": f"ports: *a{depth}, source: 0.0.0.0/0",
            "source": f"ports: 22, source: *a{depth}",
            "members": "ports: 22, source: 0.0.0.0/0"}.get(where, "ports: 22, source: 0.0.0.0/0")
    return "\n".join(lines) + (
        "\nversion: 1\nhost: {instance: i, nics: [{name: eth0, security_groups: [sg]}]}\n"
        f"security_groups:\n  sg:\n    members: {'*a' + str(depth) if where == 'members' else '[]'}\n"
        f"    rules: [{{direction: inbound, protocol: tcp, {body}}}]\n")


# --------------------------------------------------------------------------- the properties

@settings(max_examples=120, **SETTINGS)
@given(VALUES, st.booleans())
def test_random_structures(lab, data, as_json):
    lab.check(dump(data, as_json), ".json" if as_json else ".yaml")


@settings(max_examples=150, **SETTINGS)
@given(mutated_documents(), st.booleans())
def test_mutated_host_documents(lab, doc, as_json):
    lab.check(dump(doc, as_json), ".json" if as_json else ".yaml", kernel_budget=40)


@settings(max_examples=25, **SETTINGS)
@given(documents(max_groups=3, max_rules=6), st.booleans())
def test_valid_host_documents_pass_every_command(lab, doc, as_json):
    reply = lab.check(dump(doc, as_json), ".json" if as_json else ".yaml", kernel_budget=60)
    assert reply["rc"] == 0, reply["err"]


@settings(max_examples=150, **SETTINGS)
@given(yaml_texts())
def test_spoilt_yaml_text(lab, text):
    lab.check(text)


@settings(max_examples=100, **SETTINGS)
@given(NOISE)
def test_yaml_looking_noise(lab, text):
    lab.check(text)


@settings(max_examples=30, **SETTINGS)
@given(alias_bombs())
def test_alias_bombs_are_refused(lab, text):
    reply = lab.check(text)
    assert reply["rc"] == 1 and "anchors and aliases are not accepted" in reply["err"], reply


@settings(max_examples=40, **SETTINGS)
@given(st.binary(max_size=200))
def test_random_bytes(lab, data):
    lab.check(data)
