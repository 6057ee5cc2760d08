"""The one stderr console every command reports through.

stdout carries data only; everything meant for people goes here. rich honours
``NO_COLOR`` and drops colour and live progress when stderr is not a terminal
(cron jobs, pytest, pipes).

Everything printed here is plain text: file names, class names and messages are never
read as rich markup (a label ``[/oops]`` or ``[blink]x`` prints as written), and control
characters are made visible (:func:`visible`: ``\\x1b``, ``\\n``, ...), so a hostile name
cannot move the cursor, retitle the window or split a table row. Colour comes only from
explicit ``style`` arguments (:func:`styled`, ``info(..., style=...)``), never from the
text. Tables are made with :func:`table`, whose cells get the same treatment.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Settings:
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    debug: bool = False


settings = Settings()
_consoles: dict[int, Any] = {}

# C0 and C1 controls, DEL, the Unicode line/paragraph separators, the bidirectional
# overrides and isolates (they reorder what follows them), and lone surrogates.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match) -> str:
    ch = match.group()
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: Any) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``, ``\\n``, ``\\u202e``)."""
    text = str(text)
    if _INVISIBLE.search(text) is None:
        return text
    return _INVISIBLE.sub(_escape_char, text)


def get_console(file: Any = None):
    """A rich Console on the *current* sys.stderr (CliRunner swaps it per test), or on ``file``."""
    from rich.console import Console

    if file is not None:
        return Console(file=file, highlight=False, emoji=False, markup=False)
    stream = sys.stderr
    console = _consoles.get(id(stream))
    if console is None or console.file is not stream:
        console = Console(file=stream, highlight=False, soft_wrap=True, emoji=False, markup=False)
        _consoles.clear()
        _consoles[id(stream)] = console
    return console


def is_interactive() -> bool:
    """True when stderr is a terminal: live progress bars make sense."""
    return get_console().is_terminal


def styled(text: Any, style: str | None = None):
    """Plain ``text`` (control characters made visible) shown in ``style``: for table cells and messages."""
    from rich.text import Text

    if isinstance(text, Text):
        if style:
            text.stylize(style)
        return text
    return Text(visible(text), style=style or "")


def _line(message: Any, style: str | None = None, prefix: tuple[str, str] | None = None):
    from rich.text import Text

    body = styled(message, style)
    if prefix is None:
        return body
    return Text.assemble(prefix, " ", body)


def _plain_stderr():
    """sys.stderr when rich would write plain text to it anyway (not a terminal, colour not forced), else None.

    Then a line is written directly: the same characters, without importing rich (about 70 ms of
    every ``imgcls predict`` in a cron job or pipe).
    """
    import os

    if any(os.environ.get(name) for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")):
        return None
    stream = sys.stderr
    try:
        return None if stream is None or stream.isatty() else stream
    except (AttributeError, ValueError):
        return None


def _emit(message: Any, style: str | None = None, prefix: tuple[str, str] | None = None) -> None:
    stream = _plain_stderr()
    if stream is None or "rich" in sys.modules and not isinstance(message, str):
        get_console().print(_line(message, style, prefix))
        return
    text = visible(message)
    stream.write(f"{prefix[0]} {text}\n" if prefix else f"{text}\n")
    stream.flush()


def info(message: Any, style: str | None = None) -> None:
    """A normal progress or summary line; silenced by -q."""
    if settings.verbosity >= 0:
        _emit(message, style)


def detail(message: Any) -> None:
    """Extra detail shown with -v."""
    if settings.verbosity >= 1:
        _emit(message, "dim")


def warn(message: Any) -> None:
    """Something the user should know even with -q."""
    _emit(message, prefix=("warning:", "yellow"))


def table(*columns: str | tuple[str, dict[str, Any]], **options: Any):
    """A rich Table whose title, headers and string cells are plain text (see the module docstring).

    ``columns``: header names, or ``(header, column options)``. Cells that should be
    coloured are given as ``styled(text, style)``.
    """
    table_cls = _safe_table_class()
    if isinstance(options.get("title"), str):
        options["title"] = styled(options["title"])
    result = table_cls(**options)
    for column in columns:
        header, kwargs = (column, {}) if isinstance(column, str) else column
        result.add_column(header, **kwargs)
    return result


_TABLE_CLASS: Any = None


def _safe_table_class():
    global _TABLE_CLASS
    if _TABLE_CLASS is None:
        from rich.table import Table

        class SafeTable(Table):
            """Table cells, headers and footers are never markup; control characters are visible."""

            def add_column(self, header: Any = "", *args: Any, **kwargs: Any) -> None:
                if isinstance(kwargs.get("footer"), str):
                    kwargs["footer"] = styled(kwargs["footer"])
                super().add_column(styled(header) if isinstance(header, str) else header, *args, **kwargs)

            def add_row(self, *cells: Any, **kwargs: Any) -> None:
                super().add_row(*(styled(c) if isinstance(c, str) else c for c in cells), **kwargs)

        _TABLE_CLASS = SafeTable
    return _TABLE_CLASS


def print_renderable(renderable: Any, file: Any = None) -> None:
    """A table made with :func:`table` (or plain text) for people; silenced by -q (stderr only).

    ``file``: another stream, e.g. stdout for ``predict --table``.
    """
    if file is None and settings.verbosity < 0:
        return
    if isinstance(renderable, str):
        renderable = styled(renderable)
    get_console(file).print(renderable)
