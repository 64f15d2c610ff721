"""Last known good: the last document the kernel accepted, kept in the state directory.

One file, ``last-good.json``, written atomically (temporary file in the same directory, fsync,
rename, fsync of the directory), so a crash or power loss leaves either the old or the new
version, never a torn one::

    {"format": 1, "saved_at": "2024-05-01T12:00:00+00:00", "origin": "etcd://...",
     "digest": "sha256 of document", "document": "<the document text, YAML or JSON>"}

``sgagent run`` applies it when the source cannot be reached at start; ``sgagent restore``
(the ``sgagent-restore.service`` unit) applies it at boot before the network comes up.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..load import DocumentError, parse_bytes
from ..model import Document

STATE_FILE = "last-good.json"
FORMAT = 1


@dataclass(frozen=True)
class Saved:
    document: Document
    raw: bytes
    origin: str
    saved_at: str
    digest: str
    live: str | None = None   # fingerprint of the kernel's table it was saved from
    kernel: str | None = None  # the kernel state right after it was applied (see save)


@dataclass(frozen=True)
class SavedInfo:
    """What a reboot would restore, without the document itself."""
    origin: str
    saved_at: str
    digest: str
    mtime: float        # Unix time the file was written


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class StateStore:
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def save(self, raw: bytes, origin: str, live: str | None = None,
             kernel: str | None = None, *, known_digest: str | None = None) -> None:
        """Atomically replace the saved document with ``raw``; ``live`` is the fingerprint of
        the table the kernel loaded from it (see ``NftBackend.fingerprint``), ``kernel`` names
        the kernel state right after it was loaded (boot, namespace and ruleset generation):
        by either a restarted daemon recognises that table as this document's.
        ``known_digest``: :func:`digest` of ``raw`` when the caller has it already (not
        hashed again: ~10-20 ms at 100,000 rules)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        record = {
            "format": FORMAT,
            "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "origin": origin,
            "digest": known_digest or digest(raw),
            "document": raw.decode("utf-8"),
            **({"live": live} if live else {}),
            **({"kernel": kernel} if kernel else {}),
        }
        data = json.dumps(record, indent=1).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=".last-good.", suffix=".tmp", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o640)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def info(self) -> SavedInfo | None:
        """Origin, time and digest of the saved document; None if nothing (usable) is saved.
        Never raises."""
        try:
            with self.path.open("rb") as fh:
                mtime = os.fstat(fh.fileno()).st_mtime
                record = json.loads(fh.read())
            return SavedInfo(str(record["origin"]), str(record["saved_at"]),
                             str(record["digest"]), mtime)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def saved_time(self) -> float | None:
        """Unix time the saved document was written (the file's mtime), or None."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def load(self) -> Saved | None:
        """The saved document, or None if nothing was saved yet.

        Raises :class:`DocumentError` if the file is unreadable or no longer a valid document.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DocumentError([exc.strerror or str(exc)], str(self.path)) from None
        try:
            record = json.loads(data)
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError("unknown format")
            raw = record["document"].encode("utf-8")
            origin = str(record.get("origin", "?"))
            saved_at = str(record.get("saved_at", "?"))
            live = record.get("live")
            live = live if isinstance(live, str) else None
            kernel = record.get("kernel")
            kernel = kernel if isinstance(kernel, str) else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DocumentError([f"(state): not a saved document ({exc})"], str(self.path)) from None
        doc = parse_bytes(raw, f"{self.path} (saved from {origin})")
        return Saved(doc, raw, origin, saved_at, digest(raw), live, kernel)
