"""Reading a host document from bytes or a file, with every error named by its path."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .checks import document_errors
from .model import RULE_ID_RE, Document, SecurityGroup

MAX_BYTES = 64 * 1024 * 1024
# A host document nests about seven levels deep.  libyaml's C composer recurses once per level
# without a limit, so a small file of "[[[[..." crashes the interpreter (SIGSEGV) instead of
# raising; the nesting is checked on the (iterative) event stream before composing.
MAX_DEPTH = 200
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_OPEN = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class DocumentError(Exception):
    """A document that cannot be enforced; ``errors`` lists each problem with its path."""

    def __init__(self, errors: list[str], source: str = "document"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(errors))

    def render(self) -> str:
        n = len(self.errors)
        head = f"{self.source}: refused, {n} error{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  {e}" for e in self.errors])


class UnreadableFile(DocumentError):
    """The file could not be read at all (missing, a directory, no permission): one line."""

    def render(self) -> str:
        return f"{self.source}: " + "; ".join(self.errors)


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_errors(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        # Drop pydantic's internal location parts (union branch names, function-before, ...).
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or not _internal(str(p)))
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        where = format_loc(loc) or "(document)"
        lines.append(f"{where}: {msg}")
    return list(dict.fromkeys(lines))


def _internal(part: str) -> bool:
    return part.startswith(("function-", "tagged-union")) or part in {
        "IPv4Network", "IPv6Network", "GroupPeer", "tuple[int, int]", "IPv4Address", "IPv6Address"}


def _errors_beyond(data: dict, exc: ValidationError) -> list[str]:
    """The whole-document errors (group references, ids, classic and vpc rules) of a document
    that also has field errors, so that one round lists them all.

    Rules, failsafe entries and members with field errors stand in as harmless placeholders
    (a rule keeps its id, so duplicate ids still show); if an error lies anywhere else, the
    structure itself is in doubt and only the field errors are reported."""
    bad_rules: set[tuple[str, int]] = set()
    bad_failsafe: set[int] = set()
    bad_members: set[tuple[str, int]] = set()
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or not _internal(str(p)))
        if len(loc) >= 4 and loc[0] == "security_groups" and loc[2] == "rules" \
                and isinstance(loc[3], int):
            bad_rules.add((str(loc[1]), loc[3]))
        elif len(loc) >= 3 and loc[:2] == ("host", "failsafe") and isinstance(loc[2], int):
            bad_failsafe.add(loc[2])
        elif len(loc) == 4 and loc[0] == "security_groups" and loc[2] == "members" \
                and isinstance(loc[3], int):
            bad_members.add((str(loc[1]), loc[3]))
        else:
            return []
    try:
        patched = copy.deepcopy(data)
        classic = str(patched["host"].get("network", "vpc")).lower() == "classic"
        for g, i in bad_rules:
            old = patched["security_groups"][g]["rules"][i]
            rid = old.get("id") if isinstance(old, dict) else None
            stand_in = {"direction": "outbound", "protocol": "tcp", "destination": "0.0.0.0/0",
                        **({"nic": "internet"} if classic else {})}
            if isinstance(rid, str) and RULE_ID_RE.match(rid):
                stand_in["id"] = rid
            patched["security_groups"][g]["rules"][i] = stand_in
        for i in bad_failsafe:
            patched["host"]["failsafe"][i] = {"direction": "inbound", "protocol": "tcp",
                                              "source": "0.0.0.0/0"}
        for g, k in bad_members:
            patched["security_groups"][g]["members"][k] = "0.0.0.0"
        doc = Document.model_validate(patched)
    except (ValidationError, KeyError, IndexError, TypeError, AttributeError):
        return []
    return document_errors(doc)


def parse_data(data: Any, source: str = "document") -> Document:
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise DocumentError([f"(document): a host document is a mapping, not {kind}"], source)
    try:
        doc = Document.model_validate(data)
    except ValidationError as exc:
        raise DocumentError(_pydantic_errors(exc) + _errors_beyond(data, exc), source) from None
    errors = document_errors(doc)
    if errors:
        raise DocumentError(errors, source)
    return doc


def parse_bytes(raw: bytes, source: str = "document",
                cache: "DocumentCache | None" = None) -> Document:
    parse = cache.parse_data if cache is not None else parse_data
    if len(raw) > MAX_BYTES:
        raise DocumentError([f"(document): {len(raw)} bytes is over the {MAX_BYTES} byte limit"], source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError([f"(document): not UTF-8 text (byte {exc.start})"], source) from None
    json_error: json.JSONDecodeError | None = None
    try:
        if text.lstrip().startswith("{"):
            try:
                return parse(json.loads(text), source)
            except json.JSONDecodeError as exc:
                json_error = exc  # perhaps a YAML flow mapping: {version: 1, ...}
        _check_depth(text, source)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        if json_error is not None:  # neither JSON nor YAML: the JSON error is the one that helps
            raise DocumentError([f"(document): not valid JSON: {json_error.msg} at line "
                                 f"{json_error.lineno} column {json_error.colno}"], source) from None
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DocumentError([f"(document): not valid YAML: {problem}{where}"], source) from None
    except RecursionError:
        raise DocumentError(["(document): nested too deeply"], source) from None
    return parse(data, source)


def _check_depth(text: str, source: str) -> None:
    # Every collection starts at its own indicator character; with few of them the document
    # cannot nest deeply and the extra pass is skipped.
    if sum(text.count(c) for c in "[{-:?") <= MAX_DEPTH:
        return
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, _OPEN):
            depth += 1
            if depth > MAX_DEPTH:
                raise DocumentError([f"(document): nested more than {MAX_DEPTH} levels deep"],
                                    source)
        elif isinstance(event, _CLOSE):
            depth -= 1


def read_file(path: str | Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of a file; UnreadableFile with one clear reason if not."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(limit + 1)
    except FileNotFoundError:
        raise UnreadableFile(["no such file"], str(path)) from None
    except IsADirectoryError:
        raise UnreadableFile(["is a directory, not a file"], str(path)) from None
    except PermissionError:
        raise UnreadableFile(["permission denied"], str(path)) from None
    except OSError as exc:
        raise UnreadableFile([exc.strerror or str(exc)], str(path)) from None


def load_file(path: str | Path) -> Document:
    return parse_bytes(read_file(path, MAX_BYTES), str(path))


class DocumentCache:
    """Parses a source's successive documents, remembering the last one: a document that
    differs from it only in groups' members is not validated again whole -- only the changed
    members are, and the rest (host, rules) is the very same objects as before, which lets
    :func:`sgagent.compiler.compile_document` reuse the previous compilation too.  At 10,000
    rules that is milliseconds instead of about a second.  Any other change, or any doubt, goes
    through :func:`parse_data` as usual.  Documents handed to it must not be changed
    afterwards (each is compared with the next)."""

    def __init__(self) -> None:
        self._data: dict | None = None
        self._doc: Document | None = None

    def parse_bytes(self, raw: bytes, source: str = "document") -> Document:
        return parse_bytes(raw, source, cache=self)

    def parse_data(self, data: Any, source: str = "document") -> Document:
        doc = self._members_only(data)
        if doc is None:
            doc = parse_data(data, source)
        self._data, self._doc = data, doc
        return doc

    def _members_only(self, data: Any) -> Document | None:
        old, doc = self._data, self._doc
        if old is None or doc is None or not isinstance(data, dict):
            return None
        if {k: v for k, v in data.items() if k != "security_groups"} != \
                {k: v for k, v in old.items() if k != "security_groups"}:
            return None
        groups, old_groups = data.get("security_groups"), old.get("security_groups")
        if not isinstance(groups, dict) or not isinstance(old_groups, dict) \
                or groups.keys() != old_groups.keys():
            return None
        changed = {}
        for name, g in groups.items():
            o = old_groups[name]
            if not isinstance(g, dict) or not isinstance(o, dict):
                return None
            if g == o:
                continue
            if {k: v for k, v in g.items() if k != "members"} != \
                    {k: v for k, v in o.items() if k != "members"}:
                return None  # more than members changed
            changed[name] = g.get("members")
        if not changed:
            return doc
        classic = doc.host.network == "classic"
        new_groups = dict(doc.security_groups)
        for name, members in changed.items():
            try:  # the field's own validation, on a group with nothing else
                members = SecurityGroup.model_validate({"members": members}).members
            except ValidationError:
                return None  # parse_data names the error with its path
            if classic and any(m.version == 6 for m in members):
                return None
            new_groups[name] = doc.security_groups[name].model_copy(update={"members": members})
        return doc.model_copy(update={"security_groups": new_groups})
