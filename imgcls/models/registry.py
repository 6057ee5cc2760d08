"""A model registry in torchvision's style: ``register_model`` / ``get_model`` / ``list_models``.

Every architecture is built as a :class:`~imgcls.models.classifier.Classifier`
(a backbone that yields a feature vector plus a Dropout + Linear head), so freezing,
fine-tuning, feature caching and saving work the same for all of them.

Names not registered up front are asked of the resolvers (``add_resolver``): ``timm/<name>``
(any timm model, when timm is installed) and torchvision models newer than the generated
architecture table.
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
    pretrainable: bool  # ImageNet weights exist for it (torchvision's weights API, timm's hub)
    description: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)  # arch options it accepts (width, depth, ...)
    family: str = ""  # torchvision module (resnet, vision_transformer, ...), timm module, or "scratch"
    min_size: int | None = None  # smallest input side it runs at (None: 8 px scratch, 32 px pretrainable)
    takes_size: bool = False  # built for one input size (ViT, MaxViT): the builder takes image_size
    source: str = "scratch"  # scratch, torchvision or timm
    weights: tuple[str, ...] = ()  # names of its pretrained weights (--weights-name)
    default_weights: str | None = None


_REGISTRY: dict[str, ArchSpec] = {}
_RESOLVERS: list[Callable[[str], ArchSpec | None]] = []
_RESOLVED: dict[str, ArchSpec] = {}  # names a resolver answered (timm/<name>): kept, but not listed
_loaded = False


def _load_builtin() -> None:
    """Import the modules that register imgcls' own architectures (imgcls.models.ARCH_MODULES), once:
    at the first look-up, so that importing imgcls.models (and its torch-free table,
    imgcls.models.catalog) costs no torch."""
    global _loaded
    if not _loaded:
        from importlib import import_module

        from imgcls.models import ARCH_MODULES

        _loaded = True
        for module in ARCH_MODULES:
            import_module(module)


def register_model(
    name: str,
    *,
    default_size: int | None = None,
    channels: int | None = None,
    pretrainable: bool = False,
    description: str = "",
    options: tuple[str, ...] = (),
    **details: Any,
) -> Callable:
    """Decorator: register a builder ``fn(num_classes, in_channels, dropout, pretrained, weights, **options)``.

    ``details`` are the other :class:`ArchSpec` fields (family, min_size, takes_size, ...).
    """

    def decorate(builder: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} registered twice")
        _REGISTRY[name] = ArchSpec(name, builder, default_size, channels, pretrainable, description, tuple(options),
                                   **details)
        return builder

    return decorate


def add_resolver(resolver: Callable[[str], ArchSpec | None]) -> None:
    """``resolver(name)`` returns a spec for a name not registered yet, or None when it does not know it."""
    _RESOLVERS.append(resolver)


def list_models() -> list[str]:
    """The registered architectures (timm's are not listed: any ``timm/<name>`` resolves on demand)."""
    _load_builtin()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    _load_builtin()
    spec = _REGISTRY.get(name) or _RESOLVED.get(name)
    if spec is not None:
        return spec
    for resolver in _RESOLVERS:
        spec = resolver(name)
        if spec is not None:
            return _RESOLVED.setdefault(name, spec)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = (f"; did you mean {' or '.join(close)}?" if close
            else "; imgcls train --list-archs shows them all (timm models: timm/<name>)")
    raise UsageProblem(f"unknown architecture {name!r}{hint}") from None


def get_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    dropout: float = 0.2,
    pretrained: bool = False,
    weights: Any = None,
    image_size: int | None = None,
    **options: Any,
):
    """Build a registered architecture with a fresh head for ``num_classes``.

    ``image_size`` reaches only the builders of models made for one input size (ViT, MaxViT,
    fixed-size timm models); the others run at any size.
    """
    spec = get_spec(name)
    unknown = set(options) - set(spec.options)
    if unknown:
        raise UsageProblem(f"architecture {name!r} does not take {', '.join(sorted(unknown))}")
    if spec.takes_size:
        options["image_size"] = image_size
    return spec.builder(
        num_classes=num_classes, in_channels=in_channels, dropout=dropout, pretrained=pretrained, weights=weights, **options
    )
