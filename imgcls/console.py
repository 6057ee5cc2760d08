"""The one stderr console every command reports through.

stdout carries data only; everything meant for people goes here. rich honours
``NO_COLOR`` and drops colour and live progress when stderr is not a terminal
(cron jobs, pytest, pipes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Settings:
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    debug: bool = False


settings = Settings()
_consoles: dict[int, Any] = {}


def get_console():
    """A rich Console on the *current* sys.stderr (CliRunner swaps it per test)."""
    from rich.console import Console

    stream = sys.stderr
    console = _consoles.get(id(stream))
    if console is None or console.file is not stream:
        console = Console(file=stream, highlight=False, soft_wrap=True)
        _consoles.clear()
        _consoles[id(stream)] = console
    return console


def is_interactive() -> bool:
    """True when stderr is a terminal: live progress bars make sense."""
    return get_console().is_terminal


def info(message: str) -> None:
    """A normal progress or summary line; silenced by -q."""
    if settings.verbosity >= 0:
        get_console().print(message)


def detail(message: str) -> None:
    """Extra detail shown with -v."""
    if settings.verbosity >= 1:
        get_console().print(message, style="dim")


def warn(message: str) -> None:
    """Something the user should know even with -q."""
    get_console().print(f"[yellow]warning:[/yellow] {message}")


def print_renderable(renderable: Any) -> None:
    """A rich table or panel for people; silenced by -q."""
    if settings.verbosity >= 0:
        get_console().print(renderable)
