"""Options predict and eval share for ONNX files without imgcls metadata (--classes, --size, --mean, --std)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click


def _names(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as fh:
                names = [line.strip() for line in fh if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {getattr(exc, 'strerror', None) or exc}") from None
    else:
        names = [name.strip() for name in value.split(",")]
    if not names or any(not name for name in names):
        raise click.BadParameter("expected class names separated by commas (or @FILE, one per line), none empty")
    return names


def _numbers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected numbers separated by commas, one per channel") from None
    if not all(n == n and abs(n) != float("inf") for n in numbers):
        raise click.BadParameter(f"{value!r}: numbers must be finite")
    return numbers


def onnx_options(func: Callable) -> Callable:
    """Adds the four options and hands the command one ``overrides`` (a ModelOverrides) instead."""

    @functools.wraps(func)
    def wrapper(*args, onnx_classes=None, onnx_size=None, onnx_mean=None, onnx_std=None, **kwargs):
        from imgcls.evaluation.onnx_backend import ModelOverrides

        return func(*args, overrides=ModelOverrides(onnx_classes, onnx_size, onnx_mean, onnx_std), **kwargs)

    options = [
        click.option("--classes", "onnx_classes", metavar="NAMES|@FILE", callback=_names,
                     help="For an ONNX file without imgcls metadata: its class names in output order, separated "
                          "by commas, or @FILE with one per line."),
        click.option("--size", "onnx_size", type=click.IntRange(min=1, max=16384), metavar="PX",
                     help="For an ONNX file without imgcls metadata: the input size (images are resized to "
                          "PX x PX). Default: the graph's own input size, where it is fixed."),
        click.option("--mean", "onnx_mean", metavar="M[,M,M]", callback=_numbers,
                     help="For an ONNX file without imgcls metadata: per-channel mean subtracted after scaling "
                          "pixels to 0..1. Default: 0."),
        click.option("--std", "onnx_std", metavar="S[,S,S]", callback=_numbers,
                     help="For an ONNX file without imgcls metadata: per-channel standard deviation divided by. "
                          "Default: 1."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
