"""A click command whose epilog is built only when its --help is shown.

``imgcls --help`` imports every command module; tables built from library constants
(augment's ops, perturb's severities) would pull in NumPy there for nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import click


class LazyEpilogCommand(click.Command):
    """``epilog_factory()`` returns extra epilog text, appended after the static epilog."""

    def __init__(self, *args, epilog_factory: Callable[[], str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_factory = epilog_factory

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if self.epilog_factory is not None:
            text = self.epilog_factory()
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(text)
