"""Exporting a model file to ONNX or TorchScript, checked against the torch model.

What is exported is the whole :class:`~imgcls.models.classifier.Classifier` (any
registered architecture: backbone, pooling, whatever the head does) wrapped so that it
returns ``(logits, probabilities)``; its input is the float32 N x C x S x S batch that
:func:`imgcls.models.preprocess.normalize` makes, with a dynamic batch size. The
preprocessing before it (decode, EXIF orientation, channels, bilinear resize, x/255,
mean/std) is the contract written in imgcls-export(1); predict runs the same code for
ONNX and torch models.

ONNX: the graph comes from torch's TorchScript-based exporter (opset 17) where the
installed torch still has it — under a second, against 3 to 13 s for the torch.export
(dynamo) exporter, measured in docs/benchmarks.md — else, or when it fails, from the
dynamo exporter (``exporter="auto"``). The numerical check catches a wrong graph from
either. Metadata goes into ``metadata_props``: ``imgcls`` (the model file's own metadata
JSON, read back by the same validator) plus flat keys for other languages.

TorchScript: ``torch.jit.trace`` of the same wrapper; the metadata is the extra file
``imgcls.json``.

INT8 (ONNX only): onnxruntime's static quantisation (QDQ, per-channel int8 weights,
uint8 activations, min/max calibration on real images) after its pre-processing pass.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.errors import ImgclsError, ModelError, brief

if TYPE_CHECKING:
    import numpy as np

FORMATS = ("onnx", "torchscript")
EXPORTERS = ("auto", "legacy", "dynamo")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17  # what the TorchScript-based exporter writes: read by onnxruntime 1.12 (2022) and later
TRACE_BATCH = 2  # the example batch the graph is traced with ...
CHECK_BATCHES = (3, 1)  # ... and the batches it is checked on: another size, and one image (dynamic batch)
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "probabilities")
EXTRA_FILE = "imgcls.json"
PREPROCESSING = ("decode (EXIF orientation applied; 16-bit and float images scaled to 8 bits), convert to {mode} "
                 "(transparency flattened on white), resize to {size}x{size} with Pillow's bilinear filter, "
                 "scale to 0..1 (x / 255), subtract mean {mean} and divide by std {std} per channel, "
                 "float32 N x {channels} x {size} x {size} (NCHW)")


@dataclass
class ExportConfig:
    """``imgcls export`` settings; the click options take their defaults from here."""

    format: str = "onnx"
    check: bool = True
    tolerance: float = 1e-4  # max |probability difference| against the torch model
    exporter: str = "auto"
    int8: bool = False
    calibration_images: int = 64


class ExportError(ModelError):
    """The architecture cannot be exported to this format, or the export does not match the torch model."""


@dataclass
class CheckResult:
    max_abs_diff: float
    n_inputs: int
    batches: tuple[int, ...]
    agreement: float | None = None  # int8: share of check images whose top-1 class matches the torch model


@dataclass
class ExportResult:
    data: bytes
    format: str
    exporter: str | None
    seconds: float
    check: CheckResult | None = None
    int8_check: CheckResult | None = None
    notes: list[str] = field(default_factory=list)


def default_output(model_path: Path, fmt: str, int8: bool = False) -> Path:
    """Beside the model: runs/x/model.safetensors -> runs/x/model.onnx (model-int8.onnx, model.pt)."""
    return model_path.with_name(model_path.stem + ("-int8" if int8 else "") + SUFFIXES[fmt])


def require_onnx_export() -> None:
    from imgcls.evaluation.onnx_backend import INSTALL_HINT, MissingOnnx

    missing = [name for name in ("onnx", "onnxruntime") if _find(name) is None]
    if missing:
        raise MissingOnnx(f"exporting to ONNX needs {' and '.join(missing)}, not installed: {INSTALL_HINT}")


def _find(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


def _wrap(model):
    """The Classifier returning (logits, probabilities): what both formats export."""
    import torch

    class WithProbabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor):
            logits = self.net(x)
            return logits, torch.softmax(logits.float(), dim=1)

    return WithProbabilities(model).eval()


def _example(info, batch: int):
    import numpy as np
    import torch

    from imgcls.models.preprocess import normalize

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, info.image_size, info.image_size, info.channels), dtype=np.uint8)
    return normalize(torch.from_numpy(images), info.mean, info.std)


@contextlib.contextmanager
def _quiet() -> Any:
    """torch's exporters print progress, warnings and (C++, on failure) whole IR graphs: stdout carries data
    only and stderr is ours, so both are muted here, down to the file descriptors (not with --debug)."""
    from imgcls.console import settings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.ExitStack() as stack:
        warnings.simplefilter("ignore")
        if not settings.debug:
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            stack.enter_context(_muted_fd(2))
        yield


@contextlib.contextmanager
def _muted_fd(fd: int) -> Any:
    import tempfile

    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (an embedding host): nothing to mute
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)


def _export_legacy(wrapped, example) -> bytes:
    import inspect

    import torch

    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    # torch's annotation says a path, its documentation (and the code) a path or a binary file object
    torch.onnx.export(wrapped, (example,), buffer, input_names=[INPUT_NAME],  # type: ignore[arg-type]
                      output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=ONNX_OPSET,
                      do_constant_folding=True, **kwargs)
    return buffer.getvalue()


def _export_dynamo(wrapped, example) -> bytes:
    import torch

    if _find("onnxscript") is None:
        from imgcls.evaluation.onnx_backend import INSTALL_HINT, MissingOnnx

        raise MissingOnnx(f"the dynamo ONNX exporter needs onnxscript, not installed: {INSTALL_HINT}")
    program = torch.onnx.export(wrapped, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                output_names=list(OUTPUT_NAMES), verbose=False,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    assert program is not None  # dynamo=True returns the program
    return program.model_proto.SerializeToString()


def _onnx_graph(wrapped, example, arch: str, exporter: str) -> tuple[bytes, str, list[str]]:
    """(serialised ModelProto, exporter used, notes)."""
    import torch

    from imgcls.evaluation.onnx_backend import MissingOnnx

    order = {"auto": ["legacy", "dynamo"], "legacy": ["legacy"], "dynamo": ["dynamo"]}[exporter]
    failures: list[str] = []
    notes: list[str] = []
    for name in order:
        try:
            with _quiet(), torch.no_grad():
                data = (_export_legacy if name == "legacy" else _export_dynamo)(wrapped, example)
            if failures:
                notes.append(f"the {order[0]} exporter failed ({failures[0]}); the {name} exporter worked")
            return data, name, notes
        except MissingOnnx:
            raise
        except Exception as exc:  # noqa: BLE001 - the exporters raise anything; the next one may work
            failures.append(f"{name}: {brief(exc, 160)}")
    raise ExportError(f"cannot export architecture {arch!r} to ONNX ({'; '.join(failures)})")


def onnx_metadata(info, parameters: int, export: dict[str, Any]) -> dict[str, str]:
    """``metadata_props``: ``imgcls`` (the model's metadata, as in model.safetensors) and flat keys for others."""
    from imgcls import __version__
    from imgcls.evaluation.onnx_backend import METADATA_KEY, PARAMETERS_KEY
    from imgcls.models.io import ModelInfo

    full = ModelInfo(**{**vars(info), "extra": {**info.extra, "export": export}})
    return {
        METADATA_KEY: full.to_json(),
        "format": "imgcls-model",
        "arch": info.arch,
        "classes": json.dumps(list(info.classes), ensure_ascii=False),
        "image_size": str(info.image_size),
        "channels": str(info.channels),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "imgcls_version": __version__,
        PARAMETERS_KEY: str(parameters),
        "input": f"{INPUT_NAME}: float32 [batch, {info.channels}, {info.image_size}, {info.image_size}]",
        "outputs": "logits: float32 [batch, classes]; probabilities: softmax of logits",
        "preprocessing": preprocessing_text(info),
    }


def preprocessing_text(info) -> str:
    return PREPROCESSING.format(mode="RGB" if info.channels == 3 else "grayscale (L)", size=info.image_size,
                                mean=list(info.mean), std=list(info.std), channels=info.channels)


def _with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    import onnx

    from imgcls import __version__

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "imgcls", __version__
    proto.doc_string = "imgcls image classifier; preprocessing and classes in metadata_props (see imgcls-export(1))"
    return proto.SerializeToString()


def _session(data: bytes):
    from imgcls.evaluation.onnx_backend import require_onnxruntime

    ort = require_onnxruntime("checking an ONNX export")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _onnx_runner(data: bytes, info, parameters: int):
    from imgcls.evaluation.onnx_backend import PROBABILITIES, OnnxModel

    return OnnxModel(Path("<exported>"), _session(data), info, output=PROBABILITIES, softmax=False,
                     parameters=parameters)


def _torchscript_runner(data: bytes, info):
    """An object scoring uint8 batches with the saved TorchScript module, as predict would."""
    import numpy as np
    import torch

    from imgcls.models.preprocess import normalize

    with _quiet():
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    class Runner:
        def imgcls_probabilities(self, array: np.ndarray, tta: bool = False) -> np.ndarray:
            with torch.no_grad():
                _, p = module(normalize(torch.from_numpy(np.array(array)), info.mean, info.std))
            probs = p.double().numpy()
            return probs / probs.sum(axis=1, keepdims=True)

    return Runner()


def check_inputs(info, images: np.ndarray | None = None) -> np.ndarray:
    """uint8 images to compare on: random pixels, a flat grey image, and real ones where given."""
    import numpy as np

    rng = np.random.default_rng(1)
    shape = (info.image_size, info.image_size, info.channels)
    parts = [rng.integers(0, 256, (2, *shape), dtype=np.uint8), np.full((1, *shape), 128, dtype=np.uint8)]
    if images is not None and len(images):
        parts.append(images[: max(0, 8)])
    return np.concatenate(parts)


def compare(runner, model, info, images: np.ndarray, batches: Sequence[int] = CHECK_BATCHES) -> CheckResult:
    """Max |probability difference| of ``runner`` against the torch model on ``images``, in batches of each size."""
    import numpy as np

    from imgcls.evaluation.inference import _probabilities

    import torch

    with torch.inference_mode():
        reference = _probabilities(model, info, images, "cpu", False)
    worst = 0.0
    for batch in batches:
        got = np.concatenate([runner.imgcls_probabilities(images[i:i + batch])
                              for i in range(0, len(images), batch)])
        if got.shape != reference.shape or not np.isfinite(got).all():
            raise ExportError(f"the exported model gives {'non-finite' if got.shape == reference.shape else 'wrongly shaped'} "
                              f"probabilities on a batch of {batch}")
        worst = max(worst, float(np.abs(got - reference).max()))
    agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    return CheckResult(worst, len(images), tuple(batches), agreement)


def export_model(model, info, model_path: Path, config: ExportConfig,
                 calibration: np.ndarray | None = None,
                 on_stage: Callable[[str], None] | None = None) -> ExportResult:
    """Export ``model`` (a Classifier in eval mode, on the CPU) as ``config`` says; the bytes of the file.

    ``calibration``: uint8 N x S x S x C images for ``config.int8`` (also used by the check).
    Raises :class:`ExportError` when the export fails or (``config.check``) differs from the
    torch model by more than ``config.tolerance``.
    """
    import torch

    from imgcls import __version__

    stage = on_stage or (lambda text: None)
    start = time.perf_counter()
    arch = info.arch
    parameters = int(model.count_parameters()) if hasattr(model, "count_parameters") else 0
    wrapped = _wrap(model)
    example = _example(info, TRACE_BATCH)
    export: dict[str, Any] = {"format": config.format, "imgcls_version": __version__,
                              "source": str(Path(model_path).resolve()), "input": INPUT_NAME,
                              "outputs": list(OUTPUT_NAMES), "int8": bool(config.int8)}
    notes: list[str] = []
    exporter = None
    if config.format == "onnx":
        stage("exporting the graph")
        graph, exporter, notes = _onnx_graph(wrapped, example, arch, config.exporter)
        export.update(exporter=exporter, opset=_opset(graph))
        data = _with_metadata(graph, onnx_metadata(info, parameters, export))
        runner = _onnx_runner(data, info, parameters) if config.check or config.int8 else None
    elif config.format == "torchscript":
        stage("tracing")
        try:
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(wrapped, example, check_trace=False)
                buffer = io.BytesIO()
                metadata = {EXTRA_FILE: _info_json(info, export), "preprocessing.txt": preprocessing_text(info)}
                torch.jit.save(traced, buffer, _extra_files=metadata)
        except Exception as exc:  # noqa: BLE001 - tracing raises anything
            raise ExportError(f"cannot export architecture {arch!r} to TorchScript ({brief(exc, 200)})") from None
        data = buffer.getvalue()
        runner = _torchscript_runner(data, info) if config.check else None
    else:
        raise ImgclsError(f"unknown format {config.format!r}")
    result = ExportResult(data, config.format, exporter, 0.0, notes=notes)
    images = check_inputs(info, calibration)
    if config.check:
        stage("checking against the torch model")
        result.check = compare(runner, model, info, images)
        if result.check.max_abs_diff > config.tolerance:
            raise ExportError(f"the {config.format} export of {model_path} differs from the torch model: max "
                              f"|probability difference| {result.check.max_abs_diff:.3g} over "
                              f"{result.check.n_inputs} images is above the tolerance {config.tolerance:g} "
                              f"(nothing written)")
    if config.int8:
        if calibration is None:
            raise ValueError("an int8 export needs calibration images")
        stage("quantising to int8")
        export.update(float_model=str(Path(model_path).resolve()), quantization="static QDQ, per-channel int8 "
                      "weights, uint8 activations, min/max calibration", calibration_images=int(len(calibration)))
        data = quantize_int8(graph, calibration, info)
        data = _with_metadata(data, onnx_metadata(info, parameters, export))
        result.data = data
        result.int8_check = compare(_onnx_runner(data, info, parameters), model, info, images)
    result.seconds = time.perf_counter() - start
    return result


def _info_json(info, export: dict[str, Any]) -> str:
    from imgcls.models.io import ModelInfo

    return ModelInfo(**{**vars(info), "extra": {**info.extra, "export": export}}).to_json()


def _opset(data: bytes) -> int | None:
    import onnx

    proto = onnx.load_from_string(data)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def quantize_int8(graph: bytes, calibration: np.ndarray, info) -> bytes:
    """onnxruntime's static int8 quantisation of a float graph, calibrated on ``calibration`` (uint8 images)."""
    import numpy as np

    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imgcls.evaluation.onnx_backend import normalize_uint8

    mean = np.asarray(info.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(info.std, dtype=np.float32).reshape(1, -1, 1, 1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), 8))

        def get_next(self):
            start = next(self.batches, None)
            if start is None:
                return None
            return {INPUT_NAME: normalize_uint8(calibration[start:start + 8], mean, std)}

    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as tmp, _quiet():
        source, prepared, quantized = (os.path.join(tmp, name) for name in ("f.onnx", "p.onnx", "q.onnx"))
        Path(source).write_bytes(graph)
        try:
            quant_pre_process(source, prepared)
            quantize_static(prepared, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's quantiser raises anything
            raise ExportError(f"cannot quantise architecture {info.arch!r} to int8 ({brief(exc, 200)})") from None
        return Path(quantized).read_bytes()


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The imgcls metadata of an exported TorchScript file (for tests and other Python programs)."""
    import torch

    files = {EXTRA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return json.loads(files[EXTRA_FILE])
