"""timm models as ``--arch timm/<name>`` (the optional extra: ``pip install 'imgcls[timm]'``).

Any model of ``timm.list_models()``, with an optional pretrained tag
(``timm/vit_small_patch16_224.augreg_in21k_ft_in1k``, or ``--weights-name TAG``). The
backbone is ``timm.create_model(name, num_classes=0)``: timm's own pooled features, so
the imgcls head, feature cache, freezing and fine-tuning work as for torchvision models.
timm's ``pretrained_cfg`` supplies the mean/std and the default input size; blocks for
``--unfreeze`` come from the model's ``group_matcher`` (stem, each stage, final norm).

Pretrained weights come through timm's own hub cache (the Hugging Face hub cache, or the
torch hub cache for weights timm keeps at a URL): a cached file is read without touching
the network; otherwise it is downloaded, after a quick check that the host answers, so an
offline machine gets one clear error naming the cache instead of a minute of retries.
Files are read with safetensors or ``torch.load(weights_only=True)`` only, then go
through the model's own checkpoint filter (e.g. resampling a ViT's position embedding to
the input size) and load strictly, ImageNet classifier keys aside.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Callable

from imgcls.errors import ImgclsError, UsageProblem, WeightsError
from imgcls.models.registry import ArchSpec, add_resolver

PREFIX = "timm/"
INSTALL = "pip install 'imgcls[timm]'"
CONNECT_TIMEOUT = 5.0


def require_timm(arch: str = "timm/...") -> Any:
    """The timm module, or one clear line saying what to install."""
    try:
        import timm
    except ImportError:
        raise ImgclsError(f"{arch} needs timm, which is not installed: {INSTALL}") from None
    return timm


def split_name(arch: str, weights_name: str | None = None) -> tuple[str, str | None]:
    """``timm/resnet18.a1_in1k`` -> ("resnet18", "a1_in1k"); ``weights_name`` overrides the tag."""
    name = arch[len(PREFIX):] if arch.startswith(PREFIX) else arch
    base, _, tag = name.partition(".")
    return base, (weights_name or tag or None)


def pretrained_cfg(arch: str, weights_name: str | None = None) -> Any:
    """timm's pretrained config for the (tagged) model; an unknown tag lists the valid ones."""
    timm = require_timm(arch)
    base, tag = split_name(arch, weights_name)
    if tag is None:
        return timm.get_pretrained_cfg(base)
    try:
        cfg = timm.get_pretrained_cfg(f"{base}.{tag}")
    except RuntimeError:  # "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        where = "--weights-name" if weights_name else "--arch"
        raise UsageProblem(f"{where} {tag}: not a pretrained tag of timm/{base}; valid: "
                           f"{', '.join(tags) if tags else '(none: it has no pretrained weights)'}")
    return cfg


def pretrained_norm(arch: str, weights_name: str | None = None) -> tuple[list[float], list[float]] | None:
    cfg = pretrained_cfg(arch, weights_name)
    if cfg is None or not cfg.mean or not cfg.std:
        return None
    return [float(v) for v in cfg.mean], [float(v) for v in cfg.std]


def resolve(arch: str) -> ArchSpec | None:
    """The registry's resolver for ``timm/<name>``."""
    if not arch.startswith(PREFIX):
        return None
    timm = require_timm(arch)
    base, tag = split_name(arch)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(PREFIX + c for c in close)}?" if close else ""
        raise UsageProblem(f"unknown timm model {base!r}{hint} (timm {timm.__version__}: timm.list_models())")
    cfg = pretrained_cfg(arch)
    tags = tuple(n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*"))
    family = timm.models.model_entrypoint(base).__module__.rsplit(".", 1)[-1]
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    has_weights = cfg is not None and bool(cfg.hf_hub_id or cfg.url)
    return ArchSpec(
        arch, _builder(arch), default_size=size, channels=3, pretrainable=has_weights,
        description=f"timm {base} ({family}){f', weights {cfg.tag}' if cfg is not None and cfg.tag else ''}",
        family=family, min_size=32, takes_size=bool(cfg is not None and cfg.fixed_input_size), source="timm",
        weights=tags, default_weights=cfg.tag if cfg is not None else None,
    )


# -- building -------------------------------------------------------------------------------

def _filter_fn(base: str) -> Callable | None:
    """The checkpoint filter timm applies to this model's pretrained files (key renames, resampling)."""
    import importlib

    import timm

    module = importlib.import_module(timm.models.model_entrypoint(base).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _classifier_prefixes(cfg: Any) -> tuple[str, ...]:
    names = cfg.classifier if cfg is not None and cfg.classifier else ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def _groups(net: Any) -> list[list[str]]:
    """Parameter names per block from timm's coarse group matcher (stem, stages, final norm)."""
    from timm.models import group_parameters

    try:
        groups = group_parameters(net, net.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError, TypeError):
        return [[n for n, _ in net.named_parameters()]]  # no matcher: the backbone is one block
    return [list(names) for _, names in sorted(groups.items())]


def build_backbone(arch: str, image_size: int | None = None) -> tuple[Any, int, list, Any]:
    """(net, feature_dim, blocks, pretrained cfg) for a timm model without its classifier."""
    from imgcls.models.classifier import blocks_from_param_groups

    timm = require_timm(arch)
    base, _ = split_name(arch)
    cfg = pretrained_cfg(arch)
    kwargs: dict[str, Any] = {}
    if cfg is not None and cfg.fixed_input_size and image_size:
        kwargs["img_size"] = image_size
    try:
        net = timm.create_model(base, pretrained=False, num_classes=0, **kwargs)
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise UsageProblem(f"timm/{base}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
    dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
    return net, dim, blocks_from_param_groups(net, _groups(net)), cfg


def _builder(arch: str) -> Callable:
    def build(num_classes: int, in_channels: int = 3, dropout: float = 0.2, pretrained: bool = False,
              weights: Any = None, image_size: int | None = None):
        from imgcls.models.classifier import Classifier
        from imgcls.models.weights import builder_weights, load_backbone_state, strip_prefixes

        if in_channels != 3:
            raise UsageProblem(f"{arch} takes 3-channel input (grayscale images are converted to RGB), not {in_channels}")
        net, dim, blocks, cfg = build_backbone(arch, image_size)
        pre = builder_weights(arch, weights, pretrained)
        if pre is not None:
            state = strip_prefixes(pre.state_dict)
            filter_fn = _filter_fn(split_name(arch)[0])
            if filter_fn is not None:
                try:
                    state = filter_fn(dict(state), net)
                except Exception as exc:  # noqa: BLE001 - a foreign file trips timm's filter in many ways
                    raise WeightsError(f"{pre.source}: weights do not fit {arch} ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
            load_backbone_state(net, state, _classifier_prefixes(cfg), arch, pre.source)
        model = Classifier(net, dim, num_classes, dropout, blocks=blocks)
        model.weights_source = pre.source if pre is not None else None
        return model

    build.__name__ = f"build_{arch.replace('/', '_')}"
    return build


# -- pretrained weights through timm's hub cache ----------------------------------------------

def _reachable(host: str) -> str | None:
    """None when ``host`` answers on port 443 within a few seconds, else the reason."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def _hf_files(cfg: Any) -> list[str]:
    if cfg.hf_hub_filename:
        return [cfg.hf_hub_filename]
    return ["model.safetensors", "pytorch_model.bin"]


def _hf_cached(cfg: Any) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in _hf_files(cfg):
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hf_cache_dir(cfg: Any) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{cfg.hf_hub_id.replace('/', '--')}"


def _url_cache_file(url: str) -> Path:
    import torch.hub
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def cache_status(arch: str) -> str:
    """'cached', 'download' or 'no' (never touches the network)."""
    cfg = pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return "no"
    if cfg.hf_hub_id:
        return "cached" if _hf_cached(cfg) is not None else "download"
    return "cached" if _url_cache_file(cfg.url).exists() else "download"


def fetch_pretrained(arch: str, weights_name: str | None = None, progress: bool = False):
    """timm's pretrained weights for ``arch`` as a :class:`Pretrained`, from the hub cache or downloaded there."""
    from imgcls.models.weights import Pretrained, read_weights_file

    require_timm(arch)
    base, _ = split_name(arch)
    cfg = pretrained_cfg(arch, weights_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsError(f"timm has no pretrained weights for {arch}; use --no-pretrained or --weights FILE")
    label = f"{base}.{cfg.tag}" if cfg.tag else base
    if cfg.hf_hub_id:
        path = _hf_cached(cfg)
        where = f"{cfg.hf_hub_id} is not in the Hugging Face hub cache ({_hf_cache_dir(cfg)})"
        host = "huggingface.co"
    else:
        path = _url_cache_file(cfg.url)
        path = path if path.exists() else None
        where = f"{_url_cache_file(cfg.url)} is not in the torch hub cache"
        from urllib.parse import urlparse

        host = urlparse(cfg.url).hostname or "the download host"
    if path is None:
        reason = _reachable(host)
        if reason is not None:
            raise WeightsError(f"no pretrained weights for timm/{label}: {where} and {host} cannot be reached "
                               f"({reason}); pass --weights FILE (a .safetensors or .pth state dict), or train "
                               f"from scratch with --no-pretrained")
        path = _download(cfg, progress)
    pre = read_weights_file(path)
    norm = pretrained_norm(arch, weights_name)
    return Pretrained(state_dict=pre.state_dict, mean=norm[0] if norm else None, std=norm[1] if norm else None,
                      source=f"timm {label} ({path})", meta={"weights": label},
                      image_size=int(cfg.input_size[-1]) if cfg.input_size else None)


def _download(cfg: Any, progress: bool) -> Path:
    """Fetch the weights file into timm's cache (hub messages go to stderr: stdout carries data)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            if cfg.hf_hub_id:
                from huggingface_hub import hf_hub_download
                from huggingface_hub.errors import EntryNotFoundError

                last: Exception | None = None
                for filename in _hf_files(cfg):
                    try:
                        return Path(hf_hub_download(cfg.hf_hub_id, filename))
                    except EntryNotFoundError as exc:
                        last = exc
                raise last or WeightsError(f"{cfg.hf_hub_id}: no weights file")
            import torch.hub

            target = _url_cache_file(cfg.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target), progress=progress)
            return target
    except WeightsError:
        raise
    except Exception as exc:  # noqa: BLE001 - network and hub errors of every kind
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"downloading timm weights {cfg.hf_hub_id or cfg.url} failed ({reason}); "
                           f"pass --weights FILE or use --no-pretrained") from None


add_resolver(resolve)
