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

from imgcls.errors import ImgclsError, ModelError, brief

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
        """Parse and validate the metadata (:mod:`imgcls.metadata`): one line naming the file and field if wrong."""
        from imgcls.metadata import FieldProblem, check_model_metadata, load_json_text, model_metadata_error

        try:
            data = load_json_text(text, "imgcls")
            if not isinstance(data, dict):
                raise FieldProblem("imgcls", "must be a JSON object")
            version = data.pop("format_version", 1)
            if not isinstance(version, int) or isinstance(version, bool):
                raise FieldProblem("format_version", f"must be a whole number, not {version!r}")
            if version > MODEL_FORMAT_VERSION:
                raise ModelError(f"{where}: model format {version} is newer than this imgcls reads; upgrade imgcls")
            check_model_metadata(data)
        except FieldProblem as exc:
            raise model_metadata_error(where, exc) from None
        known = {f for f in cls.__dataclass_fields__}
        extra = {k: v for k, v in data.items() if k not in known}
        info = cls(**{k: v for k, v in data.items() if k in known})
        info.extra.update(extra)
        return info


def save_model(path: str | os.PathLike, model, info: ModelInfo) -> Path:
    """Write weights and metadata atomically: the file is complete or absent."""
    from safetensors.torch import save_file

    from imgcls.fsutil import atomic_path

    info.trainable_blocks = getattr(model, "trainable_blocks", None)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={"format": MODEL_FORMAT, "imgcls": info.to_json()})
        except OSError:
            raise
        except Exception as exc:  # safetensors' own error type, e.g. for a full disk: name the model file
            from imgcls.fsutil import as_write_error

            raise as_write_error(exc, path) from None
    return path


def require_regular_file(path: Path, what: str = "model file") -> None:
    """A model file must be a plain file: a FIFO would block the reader forever, a device is no model."""
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return  # reported by the caller ("no such model file")
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise ModelError(f"{path}: is {kind}, not a {what}")


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
    require_regular_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelError(f"{where}: not a readable safetensors model file ({brief(exc, 120)})") from None
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


def _check_arch_options(path: Path, info: ModelInfo) -> None:
    """``arch`` is registered and each of ``arch_options`` is one it takes, of the type of its default."""
    import inspect

    from imgcls.metadata import is_int, is_number
    from imgcls.models.registry import get_spec

    try:
        spec = get_spec(info.arch)
    except ImgclsError as exc:
        raise ModelError(f"{path}: model metadata \"arch\": {exc}") from None
    parameters = inspect.signature(spec.builder).parameters
    for key, value in info.arch_options.items():
        if key not in spec.options or key not in parameters:
            raise ModelError(f"{path}: model metadata \"arch_options.{key}\": {info.arch} takes no option {key!r}")
        default = parameters[key].default
        ok = (isinstance(value, bool) if isinstance(default, bool) else is_int(value) if isinstance(default, int)
              else is_number(value) if isinstance(default, float) else isinstance(value, type(default))
              if default is not None and default is not inspect.Parameter.empty else True)
        if not ok:
            raise ModelError(f"{path}: model metadata \"arch_options.{key}\": must be {type(default).__name__} "
                             f"like its default {default!r}, not {value!r}")


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild the architecture from metadata and load the weights. Returns (model, info)."""
    from safetensors.torch import load_file

    from imgcls.models.registry import get_model

    path = resolve_model_path(path)
    info = read_model_info(path)
    _check_arch_options(path, info)
    try:
        model = get_model(info.arch, num_classes=len(info.classes), in_channels=info.channels,
                          dropout=info.dropout, pretrained=False, image_size=info.image_size, **info.arch_options)
        if info.head_norm is not None:
            model.set_head_norm(info.head_norm)
    except ModelError:
        raise
    except ImgclsError as exc:  # an unknown architecture or option: the file's metadata is at fault
        raise ModelError(f"{path}: model metadata \"arch\" / \"arch_options\": {exc}") from None
    except Exception as exc:
        raise ModelError(f"{path}: cannot build architecture {info.arch!r}: {brief(exc)}") from None
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelError(f"{path}: weights do not match architecture {info.arch!r}: {brief(exc)}") from None
    bad = next((name for name, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all())), None)
    if bad is not None:  # a model that can only answer NaN is damaged, not a model
        raise ModelError(f"{path}: the weights hold NaN or infinite values (tensor {bad!r}); the file is damaged "
                         f"(or the training diverged): train again, or use an earlier model")
    if info.trainable_blocks is not None and hasattr(model, "set_trainable_blocks"):
        if info.trainable_blocks > len(getattr(model, "blocks", ())):
            raise ModelError(f"{path}: model metadata \"trainable_blocks\": {info.trainable_blocks} is more than the "
                             f"{len(model.blocks)} blocks of {info.arch}")
        model.set_trainable_blocks(info.trainable_blocks)
    model.eval()
    return model.to(device), info
