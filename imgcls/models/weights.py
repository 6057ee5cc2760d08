"""Pretrained backbone weights: torchvision's weights API, or a state-dict file.

Two sources, one result (:class:`Pretrained`: tensors plus the normalization they expect):

* ``--pretrained``: ``torchvision.models.get_model_weights(arch).DEFAULT`` (or the weights
  ``--weights-name`` names; timm models: :mod:`imgcls.models.timm_models`) loaded through
  the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file>``), exactly as on a connected
  machine. We look in the cache *before* downloading so that an offline machine gets one
  clear error naming the file it needs, instead of a socket traceback.
* ``--weights FILE``: a ``.safetensors`` file (its metadata may carry ``mean``/``std``) or a
  ``.pth``/``.pt`` state dict, read with ``torch.load(weights_only=True)`` only: a weights
  file can never run code.

Normalization precedence: ``--mean/--std`` > the file's own metadata > torchvision's
meta for the architecture (ImageNet mean/std) > 0.5 per channel (scratch training).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import UsageProblem, WeightsError, brief

# Scratch models: pixels scaled to [-1, 1]. Stored in the model file like any other.
SCRATCH_MEAN = 0.5
SCRATCH_STD = 0.5


@dataclass
class Pretrained:
    """Backbone weights ready to load, and the preprocessing they were trained with."""

    state_dict: dict[str, Any]
    mean: list[float] | None = None
    std: list[float] | None = None
    source: str = ""  # human-readable: "torchvision MobileNet_V2_Weights.IMAGENET1K_V2" or a file path
    meta: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None  # the input size they were trained at, when known


def torchvision_weights(arch: str, name: str | None = None):
    """torchvision's weights enum member for ``arch``: ``name`` (IMAGENET1K_SWAG_E2E_V1, with or
    without the enum's class name), else DEFAULT; None when the model has no weights.

    An unknown ``name`` is a usage error listing the valid ones.
    """
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError, AttributeError):
        enum = None
    if name is None:
        return enum.DEFAULT if enum is not None and len(enum) else None
    valid = [w.name for w in enum] if enum is not None else []
    short = name.split(".")[-1].strip().upper()
    if enum is not None and short.upper() == "DEFAULT":
        return enum.DEFAULT
    if enum is not None and short in valid and ("." not in name or name.split(".")[0] == enum.__name__):
        return enum[short]
    if not valid:
        raise UsageProblem(f"--weights-name {name}: {arch} has no pretrained weights in torchvision")
    raise UsageProblem(f"--weights-name {name}: not a weights name of {arch}; valid: {', '.join(valid)} "
                       f"(or DEFAULT = {enum.DEFAULT.name})")


def weights_size(arch: str, name: str | None = None) -> int | None:
    """The input size the named (or default) pretrained weights were trained at (their crop size)."""
    if arch.startswith("timm/"):
        from imgcls.models.timm_models import pretrained_cfg

        cfg = pretrained_cfg(arch, name)
        return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
    weights = torchvision_weights(arch, name)
    if weights is None:
        return None
    try:
        return int(weights.transforms().crop_size[0])
    except Exception:  # noqa: BLE001 - weights without an ImageClassification preset
        return None


def cache_file_for(weights) -> Path:
    """Where torch hub keeps (or would keep) the file for a torchvision weights entry."""
    import torch.hub
    from urllib.parse import urlparse

    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def transforms_norm(weights) -> tuple[list[float], list[float]] | None:
    """mean/std from torchvision's inference transforms for these weights."""
    try:
        t = weights.transforms()
        return [float(v) for v in t.mean], [float(v) for v in t.std]
    except Exception:  # noqa: BLE001 - weights without an ImageClassification preset
        return None


def fetch_torchvision(arch: str, progress: bool = False, name: str | None = None) -> Pretrained:
    """Load torchvision's ImageNet weights for ``arch`` (``name``, else the default) through the hub cache."""
    weights = torchvision_weights(arch, name)
    if weights is None:
        raise WeightsError(f"torchvision has no pretrained weights for {arch!r}; use --no-pretrained or --weights FILE")
    cached = cache_file_for(weights)
    offline_hint = (
        f"no pretrained weights for {arch}: {cached} is not in the torch hub cache and downloading it failed"
    )
    if not cached.exists():
        try:
            # torch.hub announces downloads on stdout; stdout is our data stream.
            with contextlib.redirect_stdout(sys.stderr):
                state = weights.get_state_dict(progress=progress, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - URLError, socket errors, HTTP errors, a bad download
            reason = getattr(exc, "reason", None) or brief(exc, 160) or type(exc).__name__
            raise WeightsError(
                f"{offline_hint} ({reason}); copy {weights.url} to that path, or pass --weights FILE "
                f"(a .safetensors or .pth state dict), or train from scratch with --no-pretrained"
            ) from None
    else:
        try:
            state = weights.get_state_dict(progress=progress, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache file: name it
            raise WeightsError(
                f"{cached}: damaged cached weights ({brief(exc, 160)}); delete it and download again, "
                f"or pass --weights FILE"
            ) from None
    norm = transforms_norm(weights)
    return Pretrained(
        state_dict=state,
        mean=norm[0] if norm else None,
        std=norm[1] if norm else None,
        source=f"torchvision {weights} ({cached})",
        meta={"weights": str(weights), "url": weights.url},
        image_size=weights_size(arch, weights.name),
    )


def parse_floats(value: Any, where: str) -> list[float]:
    """A JSON list or comma-separated numbers -> floats (for metadata and --mean/--std)."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        text = str(value).strip()
        try:
            parsed = json.loads(text)
            items = parsed if isinstance(parsed, list) else [parsed]
        except ValueError:
            items = [p for p in text.strip("[]()").split(",") if p.strip()]
    try:
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        raise UsageProblem(f"{where}: expected numbers like 0.5,0.5,0.5, got {value!r}") from None
    if not numbers:
        raise UsageProblem(f"{where}: empty list of numbers")
    if not all(math.isfinite(n) for n in numbers):
        raise UsageProblem(f"{where}: expected finite numbers, got {value!r}")
    return numbers


def read_weights_file(path: str | os.PathLike) -> Pretrained:
    """A state dict from .safetensors or .pth (weights_only=True): no code runs on load."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not a weights file")
    from imgcls.models.io import require_regular_file

    require_regular_file(path, "weights file")
    suffix = path.suffix.lower()
    mean = std = None
    meta: dict[str, Any] = {}
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types
            raise WeightsError(f"{path}: not a readable safetensors file ({brief(exc, 160)})") from None
        try:
            if "mean" in meta:
                mean = parse_floats(meta["mean"], f"{path}: metadata 'mean'")
            if "std" in meta:
                std = parse_floats(meta["std"], f"{path}: metadata 'std'")
        except UsageProblem as exc:
            raise WeightsError(str(exc)) from None
        if "imgcls" in meta:  # an imgcls model file: reuse its backbone and its normalization
            try:
                info = json.loads(meta["imgcls"])
                mean, std = mean or info.get("mean"), std or info.get("std")
            except ValueError:
                pass
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        import pickle

        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's message is paragraphs of advice; the line that says what was refused is the one to show
            why = next((line.split("WeightsUnpickler error:", 1)[-1].strip() for line in str(exc).splitlines()
                        if "WeightsUnpickler error:" in line or "unsupported GLOBAL" in line
                        or "Unsupported global" in line), None)
            raise WeightsError(
                f"{path}: refused: not a plain state dict (torch.load weights_only=True: "
                f"{brief(why or exc, 160)}); save it with torch.save(model.state_dict(), FILE) "
                f"or convert it to .safetensors"
            ) from None
        except Exception as exc:  # noqa: BLE001 - truncated zip, foreign file, ...
            raise WeightsError(f"{path}: not a readable PyTorch state dict ({brief(exc, 160)})") from None
        state = _unwrap_state_dict(state, path)
    else:
        raise WeightsError(f"{path}: unknown weights format {suffix or '(no extension)'!r}; use .safetensors or .pth")
    return Pretrained(state_dict=state, mean=mean, std=std, source=str(path), meta=meta)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Any]:
    """Accept {"state_dict": {...}} / {"model": {...}} wrappers that training scripts write."""
    import torch

    for _ in range(2):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if isinstance(obj, dict):
            for key in ("state_dict", "model_state_dict", "model", "weights"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise WeightsError(f"{path}: does not hold a state dict (a mapping of names to tensors)")


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop wrapper prefixes: DDP's ``module.``, and an imgcls model's ``backbone.`` (its ``head.`` goes).

    Only a file whose keys are all ``backbone.*`` or ``head.*`` is taken for an imgcls model:
    ``head.*`` keys of other files are the model's own (a timm ConvNeXt's ``head.norm``).
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state) and all(k.startswith(("backbone.", "head.")) for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_backbone_state(module, state: dict[str, Any], head_prefixes: tuple[str, ...], arch: str, source: str) -> None:
    """Load ``state`` into a torchvision model whose classifier was removed.

    Keys of the removed ImageNet head are ignored; every other key must match exactly
    (names and shapes), so a file for another architecture is refused, not half-loaded.
    """
    state = strip_prefixes(state)
    state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
    damaged = next((k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())), None)
    if damaged is not None:
        raise WeightsError(f"{source}: weights hold NaN or infinite values (e.g. {damaged}); they cannot be used for {arch}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:2])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise WeightsError(f"{source}: weights do not fit {arch}: keys " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def resolve_pretrained(arch: str, *, pretrained: bool, weights_file: str | os.PathLike | None = None,
                       progress: bool = False, weights_name: str | None = None) -> Pretrained | None:
    """The weights a training run starts from: a file, torchvision's or timm's, or None (scratch).

    ``weights_name`` picks one of the model's pretrained weights (``--weights-name``); with a
    file it only names the preprocessing to assume when the file does not say.
    """
    timm = arch.startswith("timm/")
    if weights_file is not None:
        pre = read_weights_file(weights_file)
        if pre.mean is None or pre.std is None:
            # A bare state dict: assume the preprocessing of the architecture's own pretrained weights.
            norm, source = None, "torchvision"
            if timm:
                from imgcls.models.timm_models import pretrained_norm

                norm, source = pretrained_norm(arch, weights_name), "timm"
            else:
                tv = torchvision_weights(arch, weights_name)
                norm = transforms_norm(tv) if tv is not None else None
            if norm is not None:
                pre.mean = pre.mean or norm[0]
                pre.std = pre.std or norm[1]
                pre.meta["normalization_assumed"] = source
        return pre
    if pretrained:
        if timm:
            from imgcls.models.timm_models import fetch_pretrained

            return fetch_pretrained(arch, weights_name, progress=progress)
        return fetch_torchvision(arch, progress=progress, name=weights_name)
    return None


def cache_status(arch: str) -> str:
    """'cached', 'download' or 'no' (for listings; never touches the network)."""
    if arch.startswith("timm/"):
        from imgcls.models.timm_models import cache_status as timm_status

        return timm_status(arch)
    weights = torchvision_weights(arch)
    if weights is None:
        return "no"
    return "cached" if cache_file_for(weights).exists() else "download"


def builder_weights(arch: str, weights: Any, pretrained: bool) -> Pretrained | None:
    """What a builder's ``weights`` argument stands for: resolved weights, a state dict, a file, or
    (None) the architecture's own pretrained weights when ``pretrained``."""
    if isinstance(weights, Pretrained):
        return weights
    if isinstance(weights, dict):
        return Pretrained(state_dict=weights, source="state dict")
    if weights is not None:
        return read_weights_file(weights)
    return resolve_pretrained(arch, pretrained=pretrained)
