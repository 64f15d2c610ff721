"""Help as people expect it, for every ``sgagent`` command group (the main app and ``fleet``):
a flag shows no value (typer would show ``--json <bool>``), an argument shows its metavar
(``FILE``, not ``{file}``); drawn panels on a terminal, plain text in a pipe (rich is not even
imported there).  :class:`Group` and :class:`Command` are the typer classes to pass as ``cls``."""

from __future__ import annotations

import typer


class PlainHelp:
    """The mixin behind :class:`Group` and :class:`Command` (put it before typer's class)."""

    def format_help(self, ctx, formatter):  # type: ignore[no-untyped-def]
        from .console import is_terminal
        if is_terminal():
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        rich_mode, self.rich_markup_mode = self.rich_markup_mode, None  # type: ignore[attr-defined]
        try:
            return super().format_help(ctx, formatter)  # type: ignore[misc]
        finally:
            self.rich_markup_mode = rich_mode

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params

    def collect_usage_pieces(self, ctx):  # type: ignore[no-untyped-def]
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = p.metavar or p.name.upper()
                pieces.append(name if p.required else f"[{name}]")
        pieces += getattr(self, "subcommand_metavar", None) and [self.subcommand_metavar] or []
        return pieces


class Group(PlainHelp, typer.core.TyperGroup):
    """A command group (``typer.Typer(cls=Group)``) whose help reads as people expect."""


class Command(PlainHelp, typer.core.TyperCommand):
    """A command (``app.command(cls=Command)``) whose help reads as people expect."""
