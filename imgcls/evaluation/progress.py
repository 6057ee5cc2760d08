"""A progress bar on stderr for long inference runs; nothing when stderr is not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from imgcls.console import get_console, is_interactive, settings, visible


@contextlib.contextmanager
def progress_bar(total: int, description: str, min_total: int = 2) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; a live bar only for a terminal, -q off, and at least ``min_total`` items."""
    if total < min_total or settings.verbosity < 0 or not is_interactive():
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=get_console(), transient=True) as bar:
        task = bar.add_task(visible(description), total=total)
        yield lambda n: bar.advance(task, n)
