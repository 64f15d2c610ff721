"""The repository stands on its own: no tracked file points outside it, and every relative
markdown link leads to a file a fresh clone has.

A clone has only what git tracks, so a link to a sibling checkout (the contract's source, the
vendor guides) is a dead link for every reader; the contract lives in docs/SEMANTICS.md.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP = ".." + "/"  # spelled apart so that this file does not trip its own check
# Places outside the repository that project files used to name.
FORBIDDEN = ("shared" + "/spec", "/work" + "/shared")

# A relative path that climbs: "../x", "./../x", at the start of a token (not "/../x", which is
# an absolute URL path, nor "a/../b", which stays where it started).
_CLIMB = re.compile(r"(?<![\w./\\-])((?:\./)?(?:\.\./)+[^\s'\"`()<>\[\]{},;|*]*)")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
_REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _escapes(relpath: str, target: str) -> bool:
    """Does ``target``, relative to the directory of ``relpath``, leave the repository?"""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), target))
    return joined == ".." or joined.startswith(UP)


def _relative_target(target: str) -> str | None:
    """The path part of a link target, or None for URLs, anchors and site-absolute paths."""
    target = target.strip()
    if not target or target.startswith(("#", "/")) or _SCHEME.match(target):
        return None
    path = unquote(re.split(r"[#?]", target, maxsplit=1)[0])
    return path or None


def _markdown_prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (examples, not links)."""
    out, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
                fence = None
            continue
        out.append(line)
    return _CODE_SPAN.sub("", "\n".join(out))


def markdown_links(text: str) -> list[str]:
    prose = _markdown_prose(text)
    return [m.group(1) for m in _INLINE_LINK.finditer(prose)] + _REF_DEF.findall(prose)


def outside_references(relpath: str, text: str) -> list[str]:
    """Every place in a tracked file that points outside the repository."""
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for marker in FORBIDDEN:
            if marker in line:
                problems.append(f"{relpath}:{lineno}: names {marker!r}, outside the repository")
        for m in _CLIMB.finditer(line):
            if _escapes(relpath, m.group(1)):
                problems.append(f"{relpath}:{lineno}: {m.group(1)!r} leaves the repository")
    for target in markdown_links(text):
        path = _relative_target(target)
        if path is not None and _escapes(relpath, path):
            problems.append(f"{relpath}: link {target!r} leaves the repository")
    return list(dict.fromkeys(problems))


def broken_links(relpath: str, text: str, tracked: set[str]) -> list[str]:
    """Relative links of a markdown file that lead to nothing a clone has."""
    dirs = {posixpath.dirname(p) for p in tracked}
    dirs |= {d for p in list(dirs) for d in _parents(p)}
    problems = []
    for target in markdown_links(text):
        path = _relative_target(target)
        if path is None or _escapes(relpath, path):
            continue  # URLs and anchors; escaping links are outside_references' business
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(relpath), path))
        if resolved not in tracked and resolved not in dirs:
            problems.append(f"{relpath}: link {target!r} -> {resolved}: no such tracked file")
    return problems


def _parents(path: str):
    while path:
        path = posixpath.dirname(path)
        yield path


def _tracked() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run([git, "-C", str(ROOT), "ls-files", "-z"], check=True,
                         capture_output=True).stdout
    return [rel for rel in out.decode().split("\0") if rel]


def _texts(tracked: list[str]) -> dict[str, str]:
    """The tracked files that are text (UTF-8, no NUL byte)."""
    texts = {}
    for rel in tracked:
        try:
            raw = (ROOT / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            continue  # deleted in the work tree, not yet committed
        if b"\0" in raw:
            continue
        try:
            texts[rel] = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


# --- the repository itself ---

def test_no_tracked_file_points_outside_the_repository():
    problems = [p for rel, text in sorted(_texts(_tracked()).items())
                for p in outside_references(rel, text)]
    assert not problems, "\n".join(problems)


def test_every_relative_markdown_link_leads_to_a_tracked_file():
    tracked = _tracked()
    texts = _texts([rel for rel in tracked if rel.endswith(".md")])
    problems = [p for rel, text in sorted(texts.items())
                for p in broken_links(rel, text, set(tracked))]
    assert not problems, "\n".join(problems)


def test_the_contract_is_in_the_repository_and_linked_from_the_readme():
    texts = _texts(_tracked())
    assert "docs/SEMANTICS.md" in texts
    assert "docs/SEMANTICS.md" in markdown_links(texts["README.md"])


# --- the checks, both sides ---

@pytest.mark.parametrize("relpath, text", [
    ("README.md", f"[contract]({UP}shared/x.md)"),
    ("docs/A.md", f"see [it]({UP}{UP}elsewhere/B.md#top)"),
    ("README.md", "[up](..)"),
    ("tests/unit/t.py", f"open('{UP}{UP}{UP}etc/passwd')"),
    ("x.yaml", f"  - ./{UP}sibling/file.yml"),
    ("a.md", "the " + "shared" + "/spec copy"),
    ("a.md", "the seeds at " + "/work" + "/shared/seeds/"),
])
def test_references_that_leave_are_found(relpath, text):
    assert outside_references(relpath, text)


@pytest.mark.parametrize("relpath, text", [
    ("README.md", "[decisions](docs/DECISIONS.md) and [web](https://example.org/../x)"),
    ("docs/A.md", f"[readme]({UP}README.md) and [anchor](#benchmarks)"),
    ("tests/metrics/alerts_test.yml", f"  - {UP}{UP}examples/monitoring/sgagent-alerts.yml"),
    ("tests/metrics/t.py", 'get("/' + UP + 'etc/passwd")'),  # a URL path, not a file path
    ("tests/sandbox/t.py", f'enter("{UP}etc")'),  # stays inside tests/
    ("agent/x.py", "a/" + UP + "b"),
])
def test_references_that_stay_are_not_found(relpath, text):
    assert outside_references(relpath, text) == []


def test_markdown_links_to_missing_files_are_found_and_existing_ones_pass():
    tracked = {"README.md", "docs/SEMANTICS.md", "examples/README.md", "examples/a/b.yaml"}
    text = ("[ok](docs/SEMANTICS.md#7-validation) [dir](examples/) [deep](examples/a/b.yaml)\n"
            "[ref]: docs/SEMANTICS.md\n[url](https://example.org/missing.md) [here](#x)\n"
            "```\n[in a fence](missing-in-fence.md)\n```\n`[in code](missing-in-code.md)`\n")
    assert broken_links("README.md", text, tracked) == []
    assert broken_links("docs/SEMANTICS.md", f"[back]({UP}README.md)", tracked) == []
    missing = broken_links("README.md", "[gone](docs/GONE.md) and\n[r]: examples/none.md\n",
                           tracked)
    assert [p.split(" -> ")[1].split(":")[0] for p in missing] == ["docs/GONE.md",
                                                                    "examples/none.md"]
