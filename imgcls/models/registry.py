"""A model registry in torchvision's style: ``register_model`` / ``get_model`` / ``list_models``.

Every architecture is built as a :class:`~imgcls.models.classifier.Classifier`
(a backbone that yields a feature vector plus a Dropout + Linear head), so freezing,
fine-tuning, feature caching and saving work the same for all of them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from imgcls.errors import UsageProblem


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., Any]
    default_size: int | None  # None: take it from the data (scratch models)
    channels: int | None  # None: 1 or 3, from the data; 3 for ImageNet backbones
    pretrainable: bool  # ImageNet weights exist for it (torchvision's weights API)
    description: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)  # arch options it accepts (width, depth, ...)


_REGISTRY: dict[str, ArchSpec] = {}
_loaded = False


def _load_architectures() -> None:
    """Import the modules that register the architectures (imgcls.models.ARCH_MODULES), once."""
    global _loaded
    if not _loaded:
        from importlib import import_module

        from imgcls.models import ARCH_MODULES

        for module in ARCH_MODULES:
            import_module(module)
        _loaded = True


def register_model(
    name: str,
    *,
    default_size: int | None = None,
    channels: int | None = None,
    pretrainable: bool = False,
    description: str = "",
    options: tuple[str, ...] = (),
) -> Callable:
    """Decorator: register a builder ``fn(num_classes, in_channels, dropout, pretrained, weights, **options)``."""

    def decorate(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = ArchSpec(name, builder, default_size, channels, pretrainable, description, tuple(options))
        return builder

    return decorate


def list_models() -> list[str]:
    _load_architectures()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    _load_architectures()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(list_models())}"
        raise UsageProblem(f"unknown architecture {name!r}{hint}") from None


def get_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    dropout: float = 0.2,
    pretrained: bool = False,
    weights: Any = None,
    **options: Any,
):
    """Build a registered architecture with a fresh head for ``num_classes``."""
    spec = get_spec(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise UsageProblem(f"architecture {name!r} does not take {', '.join(sorted(unknown))}")
    return spec.builder(
        num_classes=num_classes, in_channels=in_channels, dropout=dropout, pretrained=pretrained, weights=weights, **options
    )
