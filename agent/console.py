"""What the commands print for people: colour and drawn tables on a terminal, plain aligned
text in a pipe or a file (what scripts and ``grep`` read), no colour when ``NO_COLOR`` is set
(https://no-color.org) or ``TERM=dumb``.  rich is imported only when printing to a terminal,
so a command in a pipe loads none of it."""

from __future__ import annotations

import os
import sys
from typing import IO, Sequence

# Words that carry a verdict, and their colour on a terminal.
GOOD = {"accept", "open", "valid", ".", "probed", "yes"}
BAD = {"drop", "dropped", "reject", "rejected", "blocked", "refused", "no"}


def is_terminal(stream: IO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def colour_wanted() -> bool:
    return not os.environ.get("NO_COLOR")


def _console(stream: IO):
    from rich.console import Console
    return Console(file=stream, no_color=not colour_wanted(), highlight=False,
                   soft_wrap=False)


def style_of(cell: str) -> str | None:
    word = cell.split(" ", 1)[0].lower()
    if cell.startswith("X"):
        return "bold red"
    if cell.startswith("not probed"):
        return "yellow"
    if word in GOOD:
        return "green"
    if word in BAD:
        return "red"
    return None


def table(head: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None,
          stream: IO | None = None) -> None:
    """Rows under a header: a drawn table on a terminal (verdict words coloured), else columns
    padded with spaces, the header in capitals, trailing spaces cut."""
    stream = sys.stdout if stream is None else stream
    if not is_terminal(stream):
        if title:
            print(title, file=stream)
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
                  for i, h in enumerate(head)]
        print("  ".join(h.upper().ljust(w) for h, w in zip(head, widths)).rstrip(), file=stream)
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=stream)
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text
    t = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", title_justify="left",
              title_style="bold")
    for h in head:
        t.add_column(h.upper())
    for r in rows:
        t.add_row(*(Text(c, style=style_of(c) or "") for c in r))
    _console(stream).print(t)


def line(text: str, style: str | None = None, *, stream: IO | None = None) -> None:
    """One line; on a terminal in ``style`` (a rich style such as ``"green"``)."""
    stream = sys.stdout if stream is None else stream
    if style is None or not is_terminal(stream) or not colour_wanted():
        print(text, file=stream)
        return
    from rich.text import Text
    _console(stream).print(Text(text, style=style))
