"""A thin ctypes binding to libnftables, nftables' own library (the one the ``nft`` tool uses).

One context per :class:`Nft`, used from one thread only.  Commands go in as nft's own syntax
(exactly what ``sgagent compile`` prints); listings come back as nft's JSON.
"""

from __future__ import annotations

import ctypes
import json
from ctypes import c_bool, c_char_p, c_int, c_uint, c_void_p
from typing import Any

_OUTPUT_STATELESS = 1 << 2
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4
_OUTPUT_TERSE = 1 << 11  # leave set and map elements out of listings
_lib = None


class NftError(Exception):
    """libnftables refused a command; the message is nft's own."""


def _load():
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise NftError("libnftables.so.1 not found: install the nftables package") from exc
        lib.nft_ctx_new.restype = c_void_p
        lib.nft_ctx_new.argtypes = [c_int]
        lib.nft_ctx_free.argtypes = [c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [c_void_p, c_uint]
        lib.nft_ctx_output_get_flags.restype = c_uint
        lib.nft_ctx_output_get_flags.argtypes = [c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [c_void_p]
        lib.nft_ctx_get_output_buffer.restype = c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [c_void_p]
        lib.nft_ctx_get_error_buffer.restype = c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [c_void_p]
        lib.nft_ctx_set_dry_run.argtypes = [c_void_p, c_bool]
        lib.nft_run_cmd_from_buffer.restype = c_int
        lib.nft_run_cmd_from_buffer.argtypes = [c_void_p, c_char_p]
        _lib = lib
    return _lib


class Nft:
    def __init__(self) -> None:
        self._lib = _load()
        self._ctx = self._lib.nft_ctx_new(0)
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def run(self, script: str, *, json_out: bool = False, stateless: bool = False,
            dry_run: bool = False, terse: bool = False) -> str:
        """Run ``script`` (nft syntax) as one transaction; return nft's output."""
        flags = ((_OUTPUT_JSON if json_out else 0) | (_OUTPUT_STATELESS if stateless else 0)
                 | (_OUTPUT_TERSE if terse else 0))
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        self._lib.nft_ctx_set_dry_run(self._ctx, dry_run)
        try:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
        finally:
            self._lib.nft_ctx_set_dry_run(self._ctx, False)
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with code {rc}")
        return out

    def list_json(self, what: str, *, terse: bool = False) -> list[dict[str, Any]]:
        """``nft -j list WHAT`` as a list of objects; [] when it does not exist."""
        try:
            out = self.run(f"list {what}", json_out=True, terse=terse)
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return []
            raise
        return json.loads(out).get("nftables", []) if out.strip() else []
