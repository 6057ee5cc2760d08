"""``imgcls`` and ``python -m imgcls``: the signal policy first, then the (heavier) command group.

The handlers are installed before click and the commands are imported, so a Ctrl-C or
SIGTERM in the first tenth of a second ends the command with one line and its exit
status, not a traceback from the middle of an import.
"""

import sys


def main(args=None, prog_name: str = "imgcls") -> None:
    try:
        from imgcls import signals

        signals.install()
        from imgcls.cli import main as cli_main
    except KeyboardInterrupt as exc:
        sys.stderr.write("imgcls: interrupted\n")
        sys.exit(getattr(exc, "exit_code", 130))
    cli_main(args=args, prog_name=prog_name)


if __name__ == "__main__":
    main(prog_name="imgcls")
