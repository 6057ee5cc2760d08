"""imgcls.console's info/detail/warn with rich markup escaped: file and class names may hold [brackets]."""

from __future__ import annotations

from imgcls import console


def _plain(message: str) -> str:
    from rich.markup import escape

    return escape(message)


def info(message: str) -> None:
    console.info(_plain(message))


def detail(message: str) -> None:
    console.detail(_plain(message))


def warn(message: str) -> None:
    console.warn(_plain(message))
