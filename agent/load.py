"""Reading a host document from bytes or a file, with every error named by its path."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from .checks import document_errors
from .model import (NAME_RE, RULE_ID_RE, SHOWN_CHARS, Document, GroupPeer, Host, Nic, Rule,
                    SecurityGroup, shown)

MAX_BYTES = 64 * 1024 * 1024
# A host document nests about seven levels deep; the builder below is iterative, but what comes
# after it (validation, comparison, repr) recurses, so nesting is bounded while reading.
MAX_DEPTH = 200
# An error report lists at most this many errors, then how many more there are.
MAX_ERRORS_SHOWN = 50

class DocumentError(Exception):
    """A document that cannot be enforced; ``errors`` lists each problem with its path.

    However many errors there are, what is printed or logged (:meth:`lines`, :meth:`render`,
    ``str()``) names the first :data:`MAX_ERRORS_SHOWN` and then how many more."""

    def __init__(self, errors: list[str], source: str = "document"):
        self.errors = errors
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.lines()))

    def lines(self) -> list[str]:
        """The errors to show: the first :data:`MAX_ERRORS_SHOWN`, then a count of the rest."""
        more = len(self.errors) - MAX_ERRORS_SHOWN
        if more <= 0:
            return list(self.errors)
        return self.errors[:MAX_ERRORS_SHOWN] + [f"... and {more} more error{'s' if more != 1 else ''}"]

    def render(self) -> str:
        n = len(self.errors)
        head = f"{self.source}: refused, {n} error{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  {e}" for e in self.lines()])


class UnreadableFile(DocumentError):
    """The file could not be read at all (missing, a directory, no permission): one line."""

    def render(self) -> str:
        return f"{self.source}: " + "; ".join(self.errors)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_./@:-]{1,%d}" % SHOWN_CHARS)


def format_loc(loc: tuple[Any, ...]) -> str:
    """``security_groups.sg-web.rules[3].ports``; a key that is long or not plain text shows as
    a short quoted prefix (a key can be anything a document holds)."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = part if isinstance(part, str) and _PLAIN_KEY.fullmatch(part) else shown(part)
            out += ("." if out else "") + text
    return out


def pydantic_errors(exc: ValidationError) -> list[str]:
    lines = []
    errors = []
    for err in exc.errors(include_url=False):
        # Drop pydantic's internal location parts (union branch names, function-before, ...).
        errors.append((tuple(p for p in err["loc"] if isinstance(p, int) or not _internal(str(p))),
                       err))
    # "should have at least 1 item after validation, not 0" only repeats that its items failed
    inner = {loc[:k] for loc, _ in errors for k in range(len(loc))}
    for loc, err in errors:
        if err["type"] == "too_short" and loc in inner:
            continue
        msg = _in_our_words(loc, err)
        where = format_loc(loc) or "(document)"
        lines.append(f"{where}: {msg}")
    return list(dict.fromkeys(lines))


# What a list or a mapping holds, by the field's name, for the errors' own words.
_LIST_OF = {"rules": "rules", "failsafe": "rules", "nics": "NICs", "members": "addresses",
            "security_groups": "group names"}
_MAPPING = {"Rule": "a rule (a mapping of its fields)", "Nic": "a NIC (a mapping: name, "
            "security_groups, ...)", "SecurityGroup": "a security group (a mapping of its fields)",
            "Host": "the host (a mapping: instance, nics, ...)",
            "FailsafeEntry": "a failsafe rule (a mapping of its fields)"}


def _in_our_words(loc: tuple, err: dict[str, Any]) -> str:
    """One validation error in the document's terms (``rules: a list of rules, not a string``),
    not the library's (``Input should be a valid tuple``)."""
    kind, field = err["type"], next((p for p in reversed(loc) if isinstance(p, str)), "")
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind in ("tuple_type", "list_type", "set_type"):
        return f"a list of {_LIST_OF.get(field, 'values')}, not {_kind(value)}"
    if kind == "dict_type":
        if loc == ("security_groups",):
            return f"a mapping of group names to groups, not {_kind(value)}"
        return f"a mapping, not {_kind(value)}"
    if kind == "model_type":
        return f"{_MAPPING.get(ctx.get('class_name'), 'a mapping')}, not {_kind(value)}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, not {shown(value)}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return f"needs at least {'one' if n == 1 else n} {_LIST_OF.get(field, 'item')}" \
            .replace("one NICs", "one NIC").replace("one rules", "one rule")
    if kind in ("string_type", "int_type", "int_parsing", "bool_type", "bool_parsing",
                "float_type", "float_parsing"):
        what = {"s": "a string", "i": "a whole number", "b": "true or false", "f": "a number"}[kind[0]]
        return f"{what}, not {_kind(value)}"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg.replace("Input should be", "must be")


def _kind(value: Any) -> str:
    """What a value is, in YAML/JSON terms."""
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    if isinstance(value, (int, float)):
        return f"a number ({shown(value)})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


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
            if isinstance(rid, str) and RULE_ID_RE.fullmatch(rid):
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
        raise DocumentError(pydantic_errors(exc) + _errors_beyond(data, exc), source) from None
    errors = document_errors(doc)
    if errors:
        raise DocumentError(errors, source)
    return doc


def parse_bytes(raw: bytes, source: str = "document",
                cache: "DocumentCache | None" = None) -> Document:
    if cache is not None:
        return cache.parse_bytes(raw, source)
    return parse_data(parse_text(document_text(raw, source), source), source)


def document_text(raw: bytes, source: str = "document") -> str:
    """A document's bytes as text: at most :data:`MAX_BYTES`, UTF-8."""
    if len(raw) > MAX_BYTES:
        raise DocumentError([f"(document): {len(raw)} bytes is over the {MAX_BYTES} byte limit"], source)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError([f"(document): not UTF-8 text (byte {exc.start})"], source) from None


def parse_text(text: str, source: str = "document", at: tuple = ()) -> Any:
    """The plain data of a document's text: JSON, or YAML 1.2 without anchors, aliases or tags
    (SEMANTICS section 7).  A key twice in one mapping is an error, in either.  ``at`` is where
    the text sits in a larger document (an etcd key's part of it), for the errors' paths."""
    json_error: json.JSONDecodeError | None = None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=_json_object, parse_constant=_json_constant)
        except json.JSONDecodeError as exc:
            json_error = exc  # perhaps a YAML flow mapping: {version: 1, ...}
        except (_JsonProblem, ValueError, RecursionError) as exc:
            # A key twice, NaN, an integer too long, deep nesting: the YAML reading of the same
            # text names the line and column (JSON is YAML 1.2); if it cannot, the JSON problem
            # is reported as it is.
            problem = exc.args[0] if isinstance(exc, _JsonProblem) else \
                "nested too deeply" if isinstance(exc, RecursionError) else \
                "an integer of more than 4300 digits"
            try:
                _yaml_data(text, at)
            except _YamlProblem as yexc:
                raise DocumentError([yexc.args[0]], source) from None
            except yaml.YAMLError:
                pass
            raise DocumentError([f"{_where(at)}: not valid JSON: {problem}"], source) from None
        else:
            if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(data):
                raise DocumentError([f"{_where(at)}: nested more than {MAX_DEPTH} levels deep"],
                                    source)
            return data
    try:
        return _yaml_data(text, at)
    except _YamlProblem as exc:
        raise DocumentError([exc.args[0]], source) from None
    except yaml.YAMLError as exc:
        if json_error is not None:  # neither JSON nor YAML: the JSON error is the one that helps
            raise DocumentError([f"{_where(at)}: not valid JSON: {json_error.msg} at line "
                                 f"{json_error.lineno} column {json_error.colno}"], source) from None
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DocumentError([f"{_where(at)}: not valid YAML: {problem}{_at_mark(mark)}"],
                            source) from None


def _too_deep(data: Any) -> bool:
    """Whether JSON data nests more than MAX_DEPTH levels (a walk with an explicit stack)."""
    todo = [(data, 1)]
    while todo:
        obj, depth = todo.pop()
        items = obj.values() if type(obj) is dict else obj
        for v in items:
            if type(v) is dict or type(v) is list:
                if depth >= MAX_DEPTH:
                    return True
                todo.append((v, depth + 1))
    return False


def _where(at: tuple) -> str:
    return format_loc(at) or "(document)"


def _at_mark(mark) -> str:
    return f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""


class _JsonProblem(Exception):
    """A JSON object with a key twice, or a NaN/Infinity (not JSON numbers)."""


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _JsonProblem(f"key {shown(key)} appears twice in one object")
            seen.add(key)
    return obj


def _json_constant(name: str) -> Any:
    raise _JsonProblem(f"{name} is not a JSON number")


# -- YAML 1.2 without anchors, aliases or tags ---------------------------------------------------
#
# The document is built straight from libyaml's event stream (no node graph, no constructor):
# an alias, anchor or tag is refused where it appears, so nothing is ever expanded; the build is
# a loop with an explicit stack, so nesting costs no recursion; a key is checked against the
# mapping it goes into as it arrives.  Plain scalars are resolved by the YAML 1.2 core schema:
# null, true/false, decimal/0o octal/0x hex integers and floats; everything else (``yes``,
# ``on``, ``1:20``, ``2024-01-01``, ``1_000``) is a string, and ``0755`` is the decimal 755.

try:
    from yaml.cyaml import CParser as _Parser
except ImportError:  # PyYAML without libyaml: the same events, in Python
    _Parser = yaml.SafeLoader  # type: ignore[assignment, misc]
_WORDS: dict[str, Any] = {"": None, "~": None, "null": None, "Null": None, "NULL": None,
                          "true": True, "True": True, "TRUE": True,
                          "false": False, "False": False, "FALSE": False}
_RESOLVED_FIRST = frozenset("~nNtTfF0123456789+-.")   # plain scalars that may not be strings
_NUMBER = re.compile(r"(?P<int>[-+]?[0-9]+)|0o(?P<oct>[0-7]+)|0x(?P<hex>[0-9a-fA-F]+)"
                     r"|(?P<float>[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?)"
                     r"|(?P<inf>[-+]?\.(?:inf|Inf|INF))|(?P<nan>\.(?:nan|NaN|NAN))")
_INT_LIMIT = 10 ** 4300   # as for JSON: Python reads no longer decimal integers
_NOKEY = object()


class _YamlProblem(Exception):
    """A YAML document outside the subset; its one argument is the whole message."""


def _yaml_data(text: str, at: tuple = ()) -> Any:
    parser = _Parser(text)
    try:
        return _build(parser.get_event, at)
    finally:
        parser.dispose()


def _build(next_event: Callable[[], Any], at: tuple) -> Any:
    scalar, alias = yaml.ScalarEvent, yaml.AliasEvent
    map_start, seq_start = yaml.MappingStartEvent, yaml.SequenceStartEvent
    map_end, seq_end = yaml.MappingEndEvent, yaml.SequenceEndEvent
    next_event()                                    # StreamStartEvent
    ev = next_event()
    if type(ev) is yaml.StreamEndEvent:
        return None                                 # nothing but comments, or nothing
    _check_directives(ev, at)                       # DocumentStartEvent
    root: Any = _NOKEY
    stack: list[list] = []                          # [container, key being filled (maps)]
    while True:
        ev = next_event()
        kind = type(ev)
        if kind is scalar:
            if ev.anchor is not None or ev.tag is not None:
                raise _YamlProblem(_not_subset(ev, stack, at))
            value = ev.value
            if ev.implicit[0] and (not value or value[0] in _RESOLVED_FIRST):
                value = _resolve(value, ev, stack, at)
        elif kind is map_start or kind is seq_start:
            if ev.anchor is not None or ev.tag is not None:
                raise _YamlProblem(_not_subset(ev, stack, at))
            if stack and stack[-1][1] is _NOKEY and type(stack[-1][0]) is dict:
                raise _YamlProblem(f"{_path(stack, at)}: a mapping key is a collection"
                                   f"{_at_mark(ev.start_mark)}; keys are scalars")
            if len(stack) >= MAX_DEPTH:
                raise _YamlProblem(f"{_where(at)}: nested more than {MAX_DEPTH} levels deep"
                                   f"{_at_mark(ev.start_mark)}")
            stack.append([{} if kind is map_start else [], _NOKEY])
            continue
        elif kind is map_end or kind is seq_end:
            value = stack.pop()[0]
        elif kind is alias:
            raise _YamlProblem(_not_subset(ev, stack, at))
        else:                                       # DocumentEndEvent: one document only
            ev = next_event()
            if type(ev) is not yaml.StreamEndEvent:
                raise _YamlProblem(f"{_where(at)}: not valid YAML: expected a single document, "
                                   f"found another document{_at_mark(ev.start_mark)}")
            return root
        if not stack:
            root = value
            continue
        frame = stack[-1]
        container = frame[0]
        if type(container) is list:
            container.append(value)
        elif frame[1] is _NOKEY:
            if value in container:
                raise _YamlProblem(_twice(value, container, ev, stack, at))
            frame[1] = value
        else:
            container[frame[1]] = value
            frame[1] = _NOKEY


def _resolve(text: str, ev: Any, stack: list[list], at: tuple) -> Any:
    """A plain scalar by the YAML 1.2 core schema (only called for the ones that may not be
    strings: the others start with a letter that begins no null, bool or number)."""
    word = _WORDS.get(text, _NOKEY)
    if word is not _NOKEY:
        return word
    m = _NUMBER.fullmatch(text)
    if m is None:
        return text
    kind = m.lastgroup
    try:
        if kind == "int":
            return int(text)
        if kind == "oct" or kind == "hex":
            n = int(m.group(kind), 8 if kind == "oct" else 16)
            if n >= _INT_LIMIT:
                raise ValueError
            return n
    except ValueError:
        raise _YamlProblem(f"{_path(stack, at, value=True)}: an integer of more than 4300 digits"
                           f"{_at_mark(ev.start_mark)}") from None
    if kind == "float":
        return float(text)
    if kind == "inf":
        return float("-inf") if text[0] == "-" else float("inf")
    return float("nan")


def _twice(key: Any, mapping: dict, ev: Any, stack: list[list], at: tuple) -> str:
    same = next(k for k in mapping if k == key)
    what = f"key {shown(key)} appears twice" if type(same) is type(key) else \
        f"key {shown(key)} is the same as the key {shown(same)} before it"
    return f"{_path(stack, at)}: {what} in one mapping{_at_mark(ev.start_mark)}"


def _check_directives(ev: Any, at: tuple) -> None:
    if ev.version not in (None, (1, 2)):
        raise _YamlProblem(f"{_where(at)}: %YAML {ev.version[0]}.{ev.version[1]}"
                           f"{_at_mark(ev.start_mark)}: documents are YAML 1.2")
    if ev.tags:
        raise _YamlProblem(f"{_where(at)}: a %TAG directive{_at_mark(ev.start_mark)}: tags are "
                           f"not accepted (SEMANTICS section 7)")


def _not_subset(ev: Any, stack: list[list], at: tuple) -> str:
    where = f"{_path(stack, at, value=True)}: "
    mark = _at_mark(ev.start_mark)
    if type(ev) is yaml.AliasEvent:
        return (f"{where}an alias (*{ev.anchor[:SHOWN_CHARS]}){mark}: anchors and aliases are "
                f"not accepted, write the value out")
    if ev.anchor is not None:
        return (f"{where}an anchor (&{ev.anchor[:SHOWN_CHARS]}){mark}: anchors and aliases are "
                f"not accepted, write the value out")
    tag = ev.tag.replace("tag:yaml.org,2002:", "!!", 1)
    return f"{where}a tag ({tag[:SHOWN_CHARS]}){mark}: tags are not accepted"


def _path(stack: list[list], at: tuple, value: bool = False) -> str:
    """The path of the innermost mapping or list being built; ``value``: of the next value in
    it instead (its key or index added)."""
    loc = list(at)
    frames = stack if value else stack[:-1]
    for container, key in frames:
        if type(container) is list:
            loc.append(len(container))
        elif key is not _NOKEY:
            loc.append(key)
    return _where(tuple(loc))


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
    """Parses a source's successive documents, remembering the last one and its groups.

    A document is not validated again whole when only its groups or its NICs changed:

    * each group whose data is unchanged is the very same validated object as before; a group
      whose members alone changed keeps its rules object and gets only the members
      validated; any other changed or added group is validated by itself;
    * when the host section changed in its ``nics`` only (a binding, a NIC added, removed or
      edited), each unchanged NIC is the very same object as before and each changed or added
      one is validated by itself; anything else in the host section (account, network,
      ordering, failsafe, defaults, instance) is read whole again.

    The whole-document checks (:func:`sgagent.checks.document_errors`) are then run on the
    part of the document a change can affect: the changed, added and removed groups, the
    groups that reference them, the NICs bound to them (every NIC when the NICs changed: the
    host-wide checks, such as a NIC listed twice, need them all), with the groups these bind or
    reference standing in without their rules (the rest was checked with the previous
    document, and nothing it depends on changed).  Keeping the objects lets
    :func:`sgagent.compiler.compile_document` reuse what it compiled from them.  At 10,000
    rules an edit of one rule costs one group's validation, and a binding added or removed
    one NIC's, instead of the whole document's.  Any error, or any doubt, goes through
    :func:`parse_data`, so a refused document is refused with exactly its errors.  Documents
    handed to it must not be changed afterwards (each is compared with the next).

    A JSON text (:meth:`parse_bytes`) is not parsed whole again either when it differs from the
    previous one inside the host's value or one group's value only: that value is parsed (the same JSON reading,
    duplicate keys and depth included) and put in place of the old one; the rest of the text
    is the same, so its data is too (see :func:`spliced`)."""

    def __init__(self) -> None:
        self._data: dict | None = None
        self._doc: Document | None = None
        # per group: the validated object and the names of the groups its rules reference
        self._refs: dict[str, tuple[SecurityGroup, frozenset[str]]] = {}
        # the JSON text of the last document read from bytes, and where the host's and each
        # group's value lie in it (None: not read from JSON text)
        self._layout: tuple[str, dict[tuple[str, ...], tuple[int, int]]] | None = None

    def parse_bytes(self, raw: bytes, source: str = "document") -> Document:
        text = document_text(raw, source)
        read = spliced(self._layout, self._data, text) if self._layout is not None else None
        if read is None:
            read = json_layout(text)
        if read is None:  # YAML, or JSON with a problem: read whole, the errors named
            doc, layout = self.parse_data(parse_text(text, source), source), None
        else:
            doc, layout = self.parse_data(read[0], source), (text, read[1])
        self._layout = layout
        return doc

    def parse_data(self, data: Any, source: str = "document") -> Document:
        doc = self._by_part(data)
        if doc is None:
            doc = parse_data(data, source)
            self._references(doc.security_groups)  # ready for the next document's checks
        self._data, self._doc, self._layout = data, doc, None
        return doc

    def _by_part(self, data: Any) -> Document | None:
        old, doc = self._data, self._doc
        if old is None or doc is None or not isinstance(data, dict):
            return None
        if not same_data({k: v for k, v in data.items() if k not in ("security_groups", "host")},
                         {k: v for k, v in old.items() if k not in ("security_groups", "host")}):
            return None
        host = _nics_changed(doc, data.get("host"), old.get("host"))
        if host is None:
            return None
        groups, old_groups = data.get("security_groups"), old.get("security_groups")
        if not isinstance(groups, dict) or not isinstance(old_groups, dict):
            return None
        classic = doc.host.network == "classic"
        new_groups: dict[str, SecurityGroup] = {}
        touched: set[str] = set(old_groups.keys() - groups.keys())  # removed
        for name, g in groups.items():
            o = old_groups.get(name, _NOKEY)
            if g is o or o is not _NOKEY and g == o:
                new_groups[name] = doc.security_groups[name]
                continue
            if not isinstance(name, str) or not NAME_RE.fullmatch(name) \
                    or not isinstance(g, dict):
                return None  # parse_data names the error with its path
            group = self._members_changed(doc, name, g, o, classic)
            if group is None:
                touched.add(name)
                group = _rules_changed(doc, name, g, o)
            if group is None:
                try:
                    group = SecurityGroup.model_validate(g)
                except ValidationError:
                    return None
            new_groups[name] = group
        host_changed = host is not doc.host
        if not host_changed and list(new_groups) == list(doc.security_groups) and all(
                new_groups[n] is doc.security_groups[n] for n in new_groups):
            return doc
        new = doc.model_copy(update={"host": host, "security_groups": new_groups})
        if (touched or host_changed) and document_errors(
                _affected(new, touched, self._references(new_groups), host_changed)):
            return None
        return new

    def _references(self, groups: dict[str, SecurityGroup]) -> dict[str, frozenset[str]]:
        """The groups each group references, computed again only for groups made again."""
        refs = {}
        for name, group in groups.items():
            known = self._refs.get(name)
            if known is None or known[0] is not group:
                known = self._refs[name] = (group, references(group))
            refs[name] = known[1]
        for name in self._refs.keys() - groups.keys():
            del self._refs[name]
        return refs

    @staticmethod
    def _members_changed(doc: Document, name: str, g: dict, o: Any,
                         classic: bool) -> SecurityGroup | None:
        """The old group with ``g``'s members, if they are all that changed and are valid."""
        if not isinstance(o, dict) or {k: v for k, v in g.items() if k != "members"} != \
                {k: v for k, v in o.items() if k != "members"}:
            return None
        try:  # the field's own validation, on a group with nothing else
            members = SecurityGroup.model_validate({"members": g.get("members")}).members
        except ValidationError:
            return None
        if classic and any(m.version == 6 for m in members):
            return None
        return doc.security_groups[name].model_copy(update={"members": members})


def _rules_changed(doc: Document, name: str, g: dict, o: Any) -> SecurityGroup | None:
    """Group ``g`` with the rules before and after those that changed since ``o`` (the same
    data, types included) the very same objects as in the previous document, the changed,
    added or removed ones between them validated one by one: an edit of one rule of a group
    of 1,000 validates one rule, and the compiler finds the others' matches already made.
    None if ``o`` is no group with a list of rules, or something is wrong (then the group is
    validated whole, which names the error)."""
    rules = g.get("rules")
    old_rules = o.get("rules") if isinstance(o, dict) else None
    if type(rules) is not list or type(old_rules) is not list:
        return None
    old = doc.security_groups[name].rules
    if len(old) != len(old_rules):
        return None
    n = min(len(rules), len(old_rules))
    head = 0
    while head < n and _same_rule(rules[head], old_rules[head]):
        head += 1
    tail = 0
    while tail < n - head and _same_rule(rules[-1 - tail], old_rules[-1 - tail]):
        tail += 1
    try:
        shell = SecurityGroup.model_validate({k: v for k, v in g.items() if k != "rules"})
        made = tuple(Rule.model_validate(r) for r in rules[head:len(rules) - tail])
    except ValidationError:
        return None
    return shell.model_copy(update={"rules": old[:head] + made + old[len(old) - tail:]})


def _same_rule(a: Any, b: Any) -> bool:
    return a is b or (a == b and same_data(a, b))


def _nics_changed(doc: Document, h: Any, o: Any) -> Host | None:
    """``doc``'s host if the host section ``h`` is the same as the previous one ``o``; a host
    with the NICs of ``h`` if they are all that changed and each changed one is valid by
    itself (the unchanged NICs the very same objects); None otherwise."""
    if h is o or h == o and same_data(h, o):
        return doc.host
    if not isinstance(h, dict) or not isinstance(o, dict) or "nics" not in h \
            or not same_data({k: v for k, v in h.items() if k != "nics"},
                             {k: v for k, v in o.items() if k != "nics"}):
        return None
    nics, old_nics = h["nics"], o.get("nics")
    if type(nics) is not list or not nics or type(old_nics) is not list \
            or len(old_nics) != len(doc.host.nics):
        return None
    by_name: dict[Any, list[int]] = {}
    for i, raw in enumerate(old_nics):
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            by_name.setdefault(raw["name"], []).append(i)
    made = []
    for j, raw in enumerate(nics):
        if not isinstance(raw, dict):
            return None  # parse_data names the error with its path
        same = [j] if j < len(old_nics) else []
        name = raw.get("name")
        if isinstance(name, str):
            same += by_name.get(name, ())
        for i in same:
            if raw == old_nics[i] and same_data(raw, old_nics[i]):
                made.append(doc.host.nics[i])
                break
        else:
            try:
                made.append(Nic.model_validate(raw))
            except ValidationError:
                return None
    return doc.host.model_copy(update={"nics": tuple(made)})


def same_data(a: Any, b: Any) -> bool:
    """Whether two pieces of plain document data are the same, types included: ``==`` alone
    takes ``true`` for ``1`` and ``1.0`` for ``1``, which validation may not (for a small
    part of a document: it walks the whole of it)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same_data(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return len(a) == len(b) and all(same_data(x, y) for x, y in zip(a, b))
    return a == b


def _affected(doc: Document, touched: set[str], refs: dict[str, frozenset[str]],
              all_nics: bool = False) -> Document:
    """The part of ``doc`` whose whole-document checks a change of the groups ``touched``
    (changed, added or removed) can change: those groups, the groups that reference them, the
    NICs bound to them (``all_nics``: every NIC, for a change of the NICs); the groups these
    bind or reference stand in without their rules."""
    groups = doc.security_groups
    checked = {n for n in touched if n in groups}
    for name in groups:
        if name not in checked and not touched.isdisjoint(refs[name]):
            checked.add(name)
    nics = doc.host.nics if all_nics else \
        tuple(n for n in doc.host.nics if not touched.isdisjoint(n.security_groups))
    context = {t for n in checked for t in refs[n]}
    context.update(g for n in nics for g in n.security_groups)
    part = {n: groups[n] for n in checked}
    for n in context - checked:
        if n in groups:
            part[n] = groups[n].model_copy(update={"rules": ()})
    return doc.model_copy(update={"host": doc.host.model_copy(update={"nics": nics}),
                                  "security_groups": part})


def references(group: SecurityGroup) -> frozenset[str]:
    """The names of the groups that ``group``'s rules reference."""
    return frozenset(item.group for rule in group.rules for item in rule.peer or ()
            if isinstance(item, GroupPeer))


# -- JSON text read group by group ---------------------------------------------------------------
#
# A host document's JSON text is read at its top level and at the level of ``security_groups``
# by the loop below, each value by the json module's own C scanner with the same hooks as
# parse_text's json.loads (a key twice, NaN), so that the data is exactly json.loads' and the
# span of the host's value and of each group's value in the text is known.  The next text that
# differs from it only inside one of these values is then read by parsing that value alone (an
# edit of a rule, of a group's members, of a binding).  Whatever does not fit
# (YAML, a JSON problem, a key twice, deep nesting) gives None: parse_text reads it whole and
# names the problem.

_DECODER = json.JSONDecoder(object_pairs_hook=_json_object, parse_constant=_json_constant)
_SCAN = _DECODER.scan_once
_SPACE = re.compile(r"[ \t\n\r]*")
_CHUNK = 1 << 18


def json_layout(text: str) -> tuple[dict, dict[tuple[str, ...], tuple[int, int]]] | None:
    """The data of a JSON document text and the (start, end) of the host's value and of each
    group's value in it, by path: ``("host",)``, ``("security_groups", name)``."""
    try:
        i = _SPACE.match(text, 0).end()
        if text[i:i + 1] != "{":
            return None
        spans: dict[tuple[str, ...], tuple[int, int]] = {}
        data, i = _members(text, i, spans)
        if _SPACE.match(text, i).end() != len(text):
            return None
    except Exception:  # noqa: BLE001 - any problem: parse_text reads it and names it
        return None
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(data):
        return None
    return data, spans


def _members(text: str, i: int,
             spans: dict[tuple[str, ...], tuple[int, int]] | None) -> tuple[dict, int]:
    """The object starting at ``text[i]`` (``{``) and where it ends; ``spans``: the top level,
    whose ``security_groups`` object is read the same way, the host's and each group's
    span kept."""
    def value(key: str, start: int) -> tuple[Any, int]:
        if spans is not None and key == "security_groups" and text[start] == "{":
            return _object(text, start, group)
        read, end = _SCAN(text, start)
        if spans is not None and key == "host":
            spans[("host",)] = (start, end)
        return read, end

    def group(key: str, start: int) -> tuple[Any, int]:
        read, end = _SCAN(text, start)
        spans[("security_groups", key)] = (start, end)
        return read, end

    return _object(text, i, value)


def _object(text: str, i: int, value) -> tuple[dict, int]:
    """The JSON object starting at ``text[i]`` (``{``) and where it ends; ``value(key, start)``
    reads each member's value (and where it ends) from its first character."""
    pairs = []
    i = _SPACE.match(text, i + 1).end()
    if text[i] == "}":
        return _json_object(pairs), i + 1
    while True:
        if text[i] != '"':
            raise ValueError(i)
        key, i = json.decoder.scanstring(text, i + 1)
        i = _SPACE.match(text, i).end()
        if text[i] != ":":
            raise ValueError(i)
        item, i = value(key, _SPACE.match(text, i + 1).end())
        pairs.append((key, item))
        i = _SPACE.match(text, i).end()
        if text[i] == ",":
            i = _SPACE.match(text, i + 1).end()
            continue
        if text[i] == "}":
            return _json_object(pairs), i + 1
        raise ValueError(i)


def spliced(layout: tuple[str, dict[tuple[str, ...], tuple[int, int]]], data: Any,
             text: str) -> tuple[dict, dict[tuple[str, ...], tuple[int, int]]] | None:
    """The data of ``text`` from the previous text's ``data``, when the two texts differ inside
    the host's value or one group's value only: the text before that value and after it is
    the same, and the new value is one JSON value that ends where the old one did (shifted
    by the change in length), so the new text is the old one with that value replaced and
    reads as the old data with that value replaced.  None otherwise."""
    old, spans = layout
    if not isinstance(data, dict) or not isinstance(data.get("security_groups"), dict):
        return None
    p = _common_prefix(old, text)
    if p == len(old) == len(text):
        return data, spans
    s = _common_suffix(old, text, min(len(old), len(text)) - p)
    delta = len(text) - len(old)
    for path, (a, b) in spans.items():
        if a <= p and len(old) - s <= b:
            break
    else:
        return None
    try:
        value, end = _SCAN(text, a)
    except Exception:  # noqa: BLE001 - read whole, and the problem named
        return None
    nested: Any = value
    for _ in path:  # as deep in the document as the value is
        nested = {"": nested}
    if end != b + delta or _too_deep(nested):
        return None
    new = dict(data)
    if len(path) == 1:
        new[path[0]] = value
    else:
        groups = new[path[0]] = dict(data[path[0]])
        groups[path[1]] = value
    shifted = {n: (x + delta, y + delta) if x > a else (x, y) for n, (x, y) in spans.items()}
    shifted[path] = (a, end)
    return new, shifted


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of ``a`` and ``b`` (slices compared in C)."""
    n = min(len(a), len(b))
    lo = 0
    while lo < n:
        hi = min(n, lo + _CHUNK)
        if a[lo:hi] != b[lo:hi]:
            break
        lo = hi
    else:
        return n
    while hi - lo > 1:  # a[:lo] == b[:lo], a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    """The length of the longest common suffix of ``a`` and ``b``, at most ``limit``."""
    la, lb = len(a), len(b)
    lo = 0
    while lo < limit:
        hi = min(limit, lo + _CHUNK)
        if a[la - hi:la - lo] != b[lb - hi:lb - lo]:
            break
        lo = hi
    else:
        return limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[la - mid:la - lo] == b[lb - mid:lb - lo]:
            lo = mid
        else:
            hi = mid
    return lo
