"""The ``sgagent`` command line: the entry point.  User errors: one clear message, exit 1, never a
traceback.

Importing this module costs next to nothing: ``sgagent --version`` is answered here, before typer
or pydantic is loaded; a plain ``validate FILE [--json]`` runs :mod:`sgagent.validation` without
typer (its start-up would be a fifth of the check); every other command line goes to
:mod:`sgagent.commands`, whose commands import only what each one needs."""

from __future__ import annotations

import gc
import os
import re
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:  # what typer's eager --version would print, without loading it
        print(__version__)
        return 0
    collecting = gc.isenabled()
    if collecting and "run" not in args[:1]:
        # A one-shot command frees everything when it exits: the cyclic collector would only
        # walk the document again and again (0.2-0.4 s of a 10,000-rule apply). The daemon
        # (`run`) keeps it.
        gc.disable()
    try:
        return _main(argv)
    finally:
        if collecting:
            gc.enable()


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plain = _plain_validate(args)
    if plain is not None:
        return _validate(*plain)
    import typer

    from .commands import UserError, app
    if not args and "_SGAGENT_COMPLETE" not in os.environ:  # (a shell asking to complete)
        # No command is a usage error (DECISIONS 10, 24): the help, on stderr, and exit 1.
        import contextlib
        with contextlib.redirect_stdout(sys.stderr):
            _main(["--help"])
        return 1

    def run() -> int:
        try:
            rc = app(args=args, standalone_mode=False, prog_name="sgagent")
            return rc if isinstance(rc, int) else 0
        except typer.Exit as exc:
            return exc.exit_code
        except typer.Abort:
            print("aborted", file=sys.stderr)
            return 1
        except typer.TyperException as exc:  # usage errors: unknown command, bad option, ...
            message = exc.format_message()
            if not message:  # a group without its command: the help was printed
                return 1
            print(f"error: {message.replace('Value error, ', '')}", file=sys.stderr)
            return 1
    return _reported(run, UserError)


def _plain_validate(args: list[str]) -> tuple[str, bool] | None:
    """``validate FILE``, ``validate FILE --json`` or ``validate --json FILE``: the file and
    whether JSON was asked for; None for any other command line (typer's)."""
    if args[:1] != ["validate"] or len(args) not in (2, 3) or "_SGAGENT_COMPLETE" in os.environ:
        return None
    rest = [a for a in args[1:] if a != "--json"]
    as_json = len(rest) < len(args) - 1
    if len(rest) != 1 or len(args) != 2 + as_json or not rest[0] or rest[0].startswith("-"):
        return None
    return rest[0], as_json


def _validate(file: str, as_json: bool) -> int:
    """``sgagent validate``, its errors mapped to messages and exit codes as :func:`_main`
    maps them."""
    from pathlib import Path

    from .validation import validate
    return _reported(lambda: validate(Path(file), as_json), None)


def _reported(run, user_error: type[Exception] | None) -> int:
    """``run()``'s exit code; an error the user can act on printed as one message (exit 1), an
    interrupt exit 130, anything else raised (a bug: the traceback shows)."""
    try:
        return run()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = _error_message(exc, user_error)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1


def _error_message(exc: Exception, user_error: type[Exception] | None) -> str | None:
    """What to print for an error the user can act on; None for any other (a bug: the
    traceback shows).  The error classes of the document reader, the network namespaces and
    the nftables backend are looked up among the modules already imported: an exception of a
    class whose module the command never imported cannot have been raised, and importing those
    modules only to compare would load the backend for every command."""
    if _is(exc, ".load", "DocumentError"):
        return exc.render()  # type: ignore[attr-defined]
    if _is(exc, ".nft.backend", "ApplyError"):
        return f"error: {one_per_problem(str(exc))}"
    if _is(exc, ".backend.kernel", "ApplyError") or _is(exc, ".backend.kernel", "Refused"):
        return f"error: {exc}"  # another backend's (iptables): its tool's own message
    if (user_error is not None and isinstance(exc, user_error)) or \
            _is(exc, ".netns", "NetnsError"):
        return f"error: {exc}"
    if _is(exc, ".nft.libnft", "NftError"):
        msg = one_per_problem(str(exc))
        if "Operation not permitted" in msg:
            msg = "the kernel said 'Operation not permitted': run as root (needs CAP_NET_ADMIN)"
        return f"error: {msg}"
    if isinstance(exc, PermissionError):
        return f"error: {exc.strerror}: {exc.filename or ''} (run as root)".rstrip()
    return None


_NFT_ERROR = re.compile(r"(?:\S+:\d+:\d+(?:-\d+)?: )?Error: (?P<what>.*)$")


def one_per_problem(message: str) -> str:
    """nftables reports an error once per command of the transaction it hit (the same
    ``Error: Could not process rule: ...`` with each command and a caret line): each distinct
    error is kept once, with its first command, and the number of commands it also hit."""
    blocks: list[list[str]] = []
    for line in message.splitlines():
        if _NFT_ERROR.search(line) or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    seen: dict[str, list] = {}
    for block in blocks:
        m = _NFT_ERROR.search(block[0])
        key = m.group("what") if m else "\n".join(block)
        if key in seen:
            seen[key][1] += 1
        else:
            seen[key] = [block, 0]
    out = []
    for block, more in seen.values():
        out += block
        if more:
            out.append(f"(the same error for {more} more command{'s' if more != 1 else ''})")
    return "\n".join(out)


def _is(exc: Exception, module: str, name: str) -> bool:
    """Whether ``exc`` is an instance of class ``name`` of the sgagent module ``module``
    (``.load``), if that module is imported at all."""
    loaded = sys.modules.get(f"{__package__}{module}")
    return loaded is not None and isinstance(exc, getattr(loaded, name))


if __name__ == "__main__":
    sys.exit(main())
