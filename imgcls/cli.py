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
from imgcls.console import settings, visible
from imgcls.errors import UsageProblem, describe_error

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
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            # A signal while click parses the command line ends as click's "Aborted!" (status 1):
            # give it the signal's status, as everywhere else.
            from imgcls import signals

            received = signals.received()
            if received is not None and exc.code == 1:
                sys.exit(128 + received)
            raise

    def invoke(self, ctx: click.Context):
        from imgcls import signals

        with signals.policy():  # SIGINT/SIGTERM/SIGHUP: clean up, exit 128 + signal (imgcls.signals)
            try:
                return super().invoke(ctx)
            except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
                raise
            except BrokenPipeError:
                # A closed reader (`| head`) is not an error worth a message; the status says
                # what a default SIGPIPE would (128 + 13), so `set -o pipefail` still sees it.
                _silence_stdout()
                sys.exit(141)
            except KeyboardInterrupt as exc:
                description = describe_error(exc)
                click.echo(f"imgcls: {description.message}", err=True)
                sys.exit(description.code)
            except Exception as exc:  # noqa: BLE001 - the last line of defence for users
                if settings.debug:
                    raise
                description = describe_error(exc)
                message = visible(description.message)
                if description.internal:
                    message = f"internal error: {message} (rerun with --debug for the traceback)"
                if description.code == 2:
                    raise click.UsageError(message, ctx=click.get_current_context(silent=True) or ctx) from None
                raise click.ClickException(message) from None


def _usage_errors_in_context(invoke):
    """A UsageProblem raised by a subcommand shows that subcommand's usage line."""

    def wrapped(ctx: click.Context):
        try:
            return invoke(ctx)
        except UsageProblem as exc:
            if settings.debug:
                raise
            raise click.UsageError(visible(str(exc)), ctx=ctx) from None

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
    1 bad data or files, 2 bad usage, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM,
    129 by SIGHUP: every command cleans up first (no partial output is left).
    """


def main(args: list[str] | None = None, prog_name: str = "imgcls") -> None:
    """Console-script entry point (``imgcls.__main__.main`` installs the signal policy before importing this)."""
    from imgcls import signals

    signals.install()
    if hasattr(signal, "SIGPIPE"):
        # `imgcls prepare d/ | head` should end quietly, as Unix tools do.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    cli.main(args=args, prog_name=prog_name)
