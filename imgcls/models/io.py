"""The model file: one safetensors file holding weights plus everything predict needs.

Tensors are the Classifier's state dict. The safetensors metadata (string to string)
holds ``format = "imgcls-model"`` and ``imgcls`` = a JSON object:

    arch, arch_options, classes (ordered), image_size, channels, mean, std, dropout,
    imgcls_version, created, config (training options), manifest_hash, trainable_blocks,
    parent (the model a fine-tune started from), head (how the head was made: linear, logreg
    or ncm), head_norm (None, or "l2": the head L2-normalises its input before the Linear
    layer), plus any extra keys a command adds.

No pickle anywhere: a model file cannot run code when loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgcls.errors import ModelError

MODEL_FORMAT = "imgcls-model"
MODEL_FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    arch: str
    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    arch_options: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.2
    trainable_blocks: int | None = None
    imgcls_version: str = ""
    created: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    manifest_hash: str = ""
    parent: str | None = None
    head: str = "linear"  # files written before the closed-form heads: an SGD-trained Dropout + Linear
    head_norm: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["format_version"] = MODEL_FORMAT_VERSION
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> ModelInfo:
        try:
            data = json.loads(text)
            version = data.pop("format_version", 1)
            if version > MODEL_FORMAT_VERSION:
                raise ModelError(f"{where}: model format {version} is newer than this imgcls reads; upgrade imgcls")
            known = {f for f in cls.__dataclass_fields__}
            extra = {k: v for k, v in data.items() if k not in known}
            info = cls(**{k: v for k, v in data.items() if k in known})
            info.extra.update(extra)
        except ModelError:
            raise
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{where}: damaged imgcls metadata ({exc})") from None
        if not info.classes or len(info.mean) != info.channels or len(info.std) != info.channels:
            raise ModelError(f"{where}: inconsistent imgcls metadata (classes, channels, mean/std)")
        return info


def save_model(path: str | os.PathLike, model, info: ModelInfo) -> Path:
    """Write weights and metadata atomically: the file is complete or absent."""
    from safetensors.torch import save_file

    from imgcls.fsutil import atomic_path

    info.trainable_blocks = getattr(model, "trainable_blocks", None)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT, "imgcls": info.to_json()})
    return path


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Only the metadata: cheap, for listings and checks."""
    from safetensors import safe_open

    path = Path(path)
    where = str(path)
    if not path.exists():
        raise ModelError(f"{where}: no such model file")
    if path.is_dir():
        candidate = path / "model.safetensors"
        if candidate.exists():
            return read_model_info(candidate)
        raise ModelError(f"{where}: is a folder without model.safetensors")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelError(f"{where}: not a readable safetensors model file ({str(exc).splitlines()[0][:120]})") from None
    if metadata.get("format") != MODEL_FORMAT or "imgcls" not in metadata:
        raise ModelError(f"{where}: a safetensors file, but not an imgcls model (no imgcls metadata)")
    return ModelInfo.from_json(metadata["imgcls"], where)


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A model file, or a run folder holding model.safetensors (``runs/latest`` works, link or text file)."""
    path = Path(path)
    if path.is_dir():
        return path / "model.safetensors"
    if path.name == "latest" and path.is_file() and path.stat().st_size < 4096:
        # Where symlinks are not available, train writes runs/latest as a one-line text file.
        try:
            target = Path(path.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            return path
        if target.is_dir():
            return target / "model.safetensors"
    return path


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the architecture from metadata and load the weights. Returns (model, info)."""
    from safetensors.torch import load_file

    from imgcls.models.registry import get_model

    path = resolve_model_path(path)
    info = read_model_info(path)
    try:
        model = get_model(info.arch, num_classes=len(info.classes), in_channels=info.channels,
                          dropout=info.dropout, pretrained=False, image_size=info.image_size, **info.arch_options)
        if info.head_norm is not None:
            model.set_head_norm(info.head_norm)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot build architecture {info.arch!r}: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"{path}: weights do not match architecture {info.arch!r}: {str(exc).splitlines()[0][:200]}") from None
    if info.trainable_blocks is not None and hasattr(model, "set_trainable_blocks"):
        model.set_trainable_blocks(info.trainable_blocks)
    model.eval()
    return model.to(device), info
