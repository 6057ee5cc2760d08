"""The ``imgcls`` command group.

Subcommands live in ``imgcls/commands/<name>.py`` (each exposes ``command``) and are
imported only when invoked, so ``imgcls --help`` and the torch-free commands start
fast. Domain errors become one-line messages here, in one place.
"""

from __future__ import annotations

import os
import pkgutil
import signal
import sys
from importlib import import_module

import click

from imgcls import __version__
from imgcls.commands._common import common_options, reset_settings
from imgcls.console import settings
from imgcls.errors import ImgclsError, UsageProblem

# The pipeline order users think in; any other command module is listed after these.
COMMAND_ORDER = ["prepare", "augment", "train", "finetune", "eval", "perturb", "predict"]


def _available_commands() -> list[str]:
    import imgcls.commands as package

    found = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    return [n for n in COMMAND_ORDER if n in found] + sorted(found - set(COMMAND_ORDER))


class ImgclsGroup(click.Group):
    """Lazily loads subcommands and turns ImgclsError into click errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return _available_commands()

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _available_commands():
            return None
        command = import_module(f"imgcls.commands.{cmd_name}").command
        if not getattr(command, "_imgcls_usage_wrapped", False):
            command.invoke = _usage_errors_in_context(command.invoke)
            command._imgcls_usage_wrapped = True
        return command

    def main(self, *args, **kwargs):
        reset_settings()
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageProblem as exc:
            if settings.debug:
                raise
            raise click.UsageError(str(exc), ctx=click.get_current_context(silent=True) or ctx) from None
        except ImgclsError as exc:
            if settings.debug:
                raise
            raise click.ClickException(str(exc)) from None
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except KeyboardInterrupt:
            click.echo("imgcls: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            # A closed reader (`| head`) is not an error worth a message.
            _silence_stdout()
            sys.exit(0)
        except OSError as exc:
            # A file-system problem (no such folder, permission, disk full) is the user's to
            # fix, not an internal error: name the path and the reason.
            if settings.debug:
                raise
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise click.ClickException(f"{exc.filename}: {reason}" if exc.filename else reason) from None
        except MemoryError:
            if settings.debug:
                raise
            raise click.ClickException("out of memory: try a smaller --batch-size or --image-size") from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence for users
            if settings.debug:
                raise
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            ) from None


def _usage_errors_in_context(invoke):
    """A UsageProblem raised by a subcommand shows that subcommand's usage line."""

    def wrapped(ctx: click.Context):
        try:
            return invoke(ctx)
        except UsageProblem as exc:
            if settings.debug:
                raise
            raise click.UsageError(str(exc), ctx=ctx) from None

    return wrapped


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(cls=ImgclsGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "-V", "--version", prog_name="imgcls")
@common_options
def cli() -> None:
    """Image classification on small data, as composable commands.

    Every command reads and writes the same JSON Lines manifest (see
    imgcls-manifest(5)), so they chain in pipelines:

    \b
      imgcls prepare flowers/ | imgcls train --arch densenet121 --freeze | imgcls eval

    Data goes to stdout, messages and progress to stderr. Exit status: 0 success,
    1 bad data or files, 2 bad usage, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
    """


def main(args: list[str] | None = None, prog_name: str = "imgcls") -> None:
    """Console-script entry point."""
    if hasattr(signal, "SIGPIPE"):
        # `imgcls prepare d/ | head` should end quietly, as Unix tools do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    cli.main(args=args, prog_name=prog_name)
