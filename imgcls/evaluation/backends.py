"""Which runtime runs a model file: torch for model.safetensors, onnxruntime for ``*.onnx``.

The small interface eval and predict call instead of :mod:`imgcls.models.io` directly, so
an ONNX model goes through the same inference loop (:mod:`imgcls.evaluation.inference`),
the same decoding and the same reports, and never imports torch. What only a torch model
can do (test-time augmentation here, Grad-CAM) is refused up front for an ONNX one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgcls.errors import ModelError, UsageProblem
from imgcls.evaluation.onnx_backend import ModelOverrides, is_onnx_path

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")

_loaded: dict[tuple, tuple[Any, Any]] = {}  # one ONNX session, reused between read_info and load


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _refuse_torchscript(path: Path) -> None:
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        raise ModelError(f"{path}: a TorchScript file is for torch.jit.load (from C++ or Python); imgcls predicts "
                         f"with a model.safetensors file or an ONNX file (imgcls export --format onnx)")


def read_info(path: str | os.PathLike, overrides: ModelOverrides | None = None):
    """The model's metadata (classes, size, channels, mean/std) without running it."""
    path = Path(path)
    if is_onnx_path(path):
        return _onnx(path, "cpu", overrides)[1]
    _refuse_torchscript(path)
    _refuse_overrides(overrides, path)
    from imgcls.models.io import read_model_info

    return read_model_info(path)


def load(path: str | os.PathLike, device: str = "cpu", overrides: ModelOverrides | None = None):
    """(model, ModelInfo): a torch Classifier on ``device``, or an :class:`OnnxModel`."""
    path = Path(path)
    if is_onnx_path(path):
        return _onnx(path, device, overrides)
    _refuse_torchscript(path)
    _refuse_overrides(overrides, path)
    from imgcls.models.io import load_model

    return load_model(path, device)


def _onnx(path: Path, device: str, overrides: ModelOverrides | None):
    from imgcls.evaluation.onnx_backend import load_onnx

    key = (_stamp(path), device, repr(overrides))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_onnx(path, device, overrides)
    return _loaded[key]


def _refuse_overrides(overrides: ModelOverrides | None, path: Path) -> None:
    if overrides is not None and overrides.given():
        raise UsageProblem(f"{', '.join(overrides.given())}: only for ONNX files without imgcls metadata; "
                           f"{path} carries its own")


def resolve_device(name: str, paths: Sequence[str | os.PathLike]) -> str:
    """--device for these models: onnxruntime's resolution when all are ONNX (no torch import), else torch's."""
    if paths and all(is_onnx_path(p) for p in paths):
        from imgcls.evaluation.onnx_backend import resolve_device as onnx_device

        return onnx_device(name)
    from imgcls.devices import resolve_device as torch_device

    return str(torch_device(name))


def check_options(paths: Sequence[str | os.PathLike], *, tta: bool = False, explain: bool = False) -> None:
    """Refuse, before any work, what an ONNX model cannot do."""
    onnx = [str(p) for p in paths if is_onnx_path(p)]
    if not onnx:
        return
    if tta:
        raise UsageProblem(f"--tta: not available for ONNX models ({onnx[0]}); use the model.safetensors file "
                           f"for test-time augmentation")
    if explain:
        raise UsageProblem(f"--explain: Grad-CAM needs the torch model's gradients; {onnx[0]} is an ONNX model: "
                           f"use its model.safetensors file")


def float_source(info: Any) -> str | None:
    """The float model an int8 ONNX export was quantised from (recorded by imgcls export --int8), if any."""
    export = (getattr(info, "extra", None) or {}).get("export") or {}
    source = export.get("float_model") if isinstance(export, dict) and export.get("int8") else None
    return source if isinstance(source, str) and source else None


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two model arguments name one model file (a run folder names its model.safetensors)."""
    from imgcls.models.io import resolve_model_path

    try:
        return os.path.samefile(resolve_model_path(a), resolve_model_path(b))
    except OSError:
        return False


def with_float_sources(paths: Sequence[str], overrides: ModelOverrides | None = None) -> list[str]:
    """The models to score: each int8 ONNX model is preceded by the float model it was quantised from.

    So ``eval -m model-int8.onnx`` reports the int8 accuracy next to the float one. A float
    model that is gone, or is a model.safetensors where torch is not installed, is left
    out with a note.
    """
    import importlib.util

    from imgcls.console import info, warn
    from imgcls.errors import ImgclsError

    out = [str(p) for p in paths]
    for path in list(out):
        if not is_onnx_path(path):
            continue
        try:
            source = float_source(read_info(path, overrides))
        except ImgclsError:
            continue  # reported when it is evaluated
        if source is None or any(_same_file(source, other) for other in out):
            continue
        if not Path(source).exists():
            warn(f"{path}: an int8 model whose float model {source} no longer exists: scored alone")
            continue
        if not is_onnx_path(source) and importlib.util.find_spec("torch") is None:
            warn(f"{path}: an int8 model; its float model {source} needs torch, which is not installed: scored alone")
            continue
        info(f"{path}: an int8 model; scoring the float model it was quantised from too ({source})")
        out.insert(out.index(path), source)
    return out
