"""Options and helpers every subcommand shares."""

from __future__ import annotations

import sys
from typing import Callable

import click

from imgcls.console import settings


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        settings.debug = True


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        settings.verbosity = -1


def _set_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        settings.verbosity = max(settings.verbosity, 0) + value


def common_options(func: Callable) -> Callable:
    """--debug, -q and -v, accepted before or after the subcommand name."""
    func = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show full tracebacks for errors (also IMGCLS_DEBUG=1).")(func)
    func = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                        help="Only warnings and errors on stderr.")(func)
    func = click.option("-v", "--verbose", count=True, expose_value=False, callback=_set_verbose, show_default=False,
                        help="More detail on stderr (repeat for more).")(func)
    return func


def reset_settings() -> None:
    """Each CLI invocation starts from the environment's defaults (CliRunner reuses the process)."""
    import os

    settings.verbosity = 0
    settings.debug = os.environ.get("IMGCLS_DEBUG", "") not in ("", "0")


def open_input(source: str):
    """A text stream for a manifest argument; '-' is stdin, which must not be a terminal."""
    from imgcls.errors import UsageProblem

    if source == "-":
        stream = sys.stdin  # CliRunner swaps sys.stdin, so tests feed it too
        if stream is None or stream.isatty():
            raise UsageProblem("no manifest given: pass a manifest file or pipe one in (e.g. imgcls prepare DIR | ...)")
        return stream
    return source


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
