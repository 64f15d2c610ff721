"""Every host document under examples/ validates and compiles (no root needed), and is listed
in examples/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgagent.compiler import compile_document
from sgagent.load import load_file

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Directories of examples/ that hold other things than host documents (Prometheus, Grafana).
NOT_HOST_DOCUMENTS = {"monitoring"}
FILES = sorted(p for ext in ("*.yaml", "*.yml", "*.json") for p in EXAMPLES.rglob(ext)
               if not NOT_HOST_DOCUMENTS & set(p.relative_to(EXAMPLES).parts[:-1]))


def test_there_are_examples():
    assert len(FILES) >= 30, FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_validates_and_compiles(path):
    doc = load_file(path)
    rs = compile_document(doc)
    assert len(rs.chains) == 2 * len(doc.host.nics)
    for group in doc.security_groups.values():
        for rule in group.rules:
            assert rule.id, f"{path}: every example rule has an explicit id"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_is_listed_in_readme(path):
    readme = (EXAMPLES / "README.md").read_text()
    assert str(path.relative_to(EXAMPLES)) in readme, f"{path.name} missing from examples/README.md"
