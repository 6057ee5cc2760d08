"""Running an exported ONNX model with onnxruntime: no torch, no torchvision.

An ONNX file written by ``imgcls export`` carries the model's metadata (the same JSON
object as a model.safetensors file, checked by the same validator, :mod:`imgcls.metadata`)
in its ``metadata_props``; its graph takes a float32 NCHW batch normalised with the
model's mean/std and gives ``logits`` and ``probabilities``. Images reach it through the
same code path as the torch model: the uint8 decode of :mod:`imgcls.images`, then
:func:`normalize_uint8` (numpy, the same arithmetic as
:func:`imgcls.models.preprocess.normalize`).

An ONNX file from elsewhere has no imgcls metadata: ``--classes`` and ``--size`` (or a
static input shape) supply what predict needs (:class:`ModelOverrides`); its first output
is taken as logits unless its rows already are probabilities.

The model object (:class:`OnnxModel`) offers what eval and predict use of a torch model:
``imgcls_probabilities(uint8 batch, tta)`` (called by :mod:`imgcls.evaluation.inference`),
``count_parameters()``, ``eval()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError, ModelError, UsageProblem, brief

ONNX_SUFFIX = ".onnx"
INSTALL_HINT = "pip install 'imgcls[onnx]'"
METADATA_KEY = "imgcls"  # metadata_props key holding the model metadata (JSON), as in model.safetensors
PROBABILITIES = "probabilities"  # the output imgcls reads from its own exports
PARAMETERS_KEY = "parameters"


class MissingOnnx(ImgclsError):
    """onnxruntime (or, to export, onnx / onnxscript) is not installed."""


def is_onnx_path(path: str | os.PathLike) -> bool:
    """An ONNX model is told by its name: ``*.onnx`` (protobuf has no magic number to sniff)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def require_onnxruntime(what: str):
    try:
        import onnxruntime
    except ImportError:
        raise MissingOnnx(f"{what} needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
    return onnxruntime


@dataclass
class ModelOverrides:
    """What an ONNX file without imgcls metadata needs from the command line (--classes, --size, --mean, --std)."""

    classes: list[str] | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def given(self) -> list[str]:
        names = {"classes": "--classes", "image_size": "--size", "mean": "--mean", "std": "--std"}
        return [option for field, option in names.items() if getattr(self, field) is not None]


def _threads() -> int:
    """onnxruntime's intra-op threads: $OMP_NUM_THREADS when set (as torch honours it), else its default (0)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


ONNX_DEVICES_HELP = "auto (CUDA with onnxruntime-gpu, else the CPU), cpu, cuda or cuda:N"


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' with onnxruntime's CUDA provider (onnxruntime-gpu), else 'cpu'; 'cuda[:N]' only with it."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        ort = require_onnxruntime("an ONNX model")
        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        ort = require_onnxruntime("an ONNX model")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UsageProblem(f"--device {name}: this onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                               f"use --device cpu (or auto)")
        return name
    raise UsageProblem(f"--device {name!r}: expected {ONNX_DEVICES_HELP}")


def _providers(ort, device: str) -> list:
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.split(":")[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(path: str | os.PathLike, device: str = "cpu"):
    """An onnxruntime session for ``path``; a missing, empty, foreign or truncated file is one ModelError."""
    from imgcls.models.io import require_regular_file

    path = Path(path)
    ort = require_onnxruntime(f"{path}: an ONNX model")
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an ONNX model file")
    require_regular_file(path)
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file (0 bytes), not an ONNX model")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's own warnings are for its developers, not our users
    options.intra_op_num_threads = _threads()
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=_providers(ort, device))
    except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...)
        text = brief(str(exc).replace("[ONNXRuntimeError] : ", ""), 160)
        raise ModelError(f"{path}: not a readable ONNX model (damaged, truncated or not ONNX: {text})") from None


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _parse_metadata(path: Path, meta: dict[str, str]):
    from imgcls.models.io import ModelInfo

    return ModelInfo.from_json(meta[METADATA_KEY], str(path))


def _info_from_overrides(path: Path, overrides: ModelOverrides, channels: int | None, size: int | None,
                         n_outputs: int | None):
    from imgcls.metadata import FieldProblem, check_classes
    from imgcls.models.io import ModelInfo

    missing = []
    if overrides.classes is None:
        missing.append("--classes NAME,NAME,...")
    image_size = overrides.image_size or size
    if image_size is None:
        missing.append("--size N")
    if channels is None:
        raise ModelError(f"{path}: no imgcls metadata, and the graph's input does not fix its channels (1 or 3)")
    if missing:
        raise ModelError(f"{path}: an ONNX file without imgcls metadata (not written by imgcls export): "
                         f"pass {' and '.join(missing)} to run it")
    assert overrides.classes is not None and image_size is not None  # else missing
    try:
        classes = check_classes(list(overrides.classes), "--classes")
    except FieldProblem as exc:
        raise UsageProblem(f"--classes: {exc.problem}") from None
    if n_outputs is not None and n_outputs != len(classes):
        raise UsageProblem(f"--classes: {len(classes)} names, but {path} gives {n_outputs} scores per image")
    if size is not None and overrides.image_size is not None and overrides.image_size != size:
        raise UsageProblem(f"--size {overrides.image_size}: {path} takes {size} x {size} inputs")
    mean = overrides.mean if overrides.mean is not None else [0.0] * channels
    std = overrides.std if overrides.std is not None else [1.0] * channels
    for option, values in (("--mean", mean), ("--std", std)):
        if len(values) != channels:
            raise UsageProblem(f"{option}: {len(values)} numbers for a {channels}-channel model")
    if any(v <= 0 for v in std):
        raise UsageProblem("--std: standard deviations must be positive")
    return ModelInfo(arch="onnx", classes=classes, image_size=int(image_size), channels=channels,
                     mean=[float(v) for v in mean], std=[float(v) for v in std])


class OnnxModel:
    """An ONNX model ready to score uint8 batches; the stand-in for a torch Classifier in eval and predict."""

    def __init__(self, path: Path, session: Any, info: Any, *, output: str, softmax: bool, parameters: int,
                 device: str = "cpu"):
        self.path, self.session, self.info = path, session, info
        self.input_name = session.get_inputs()[0].name
        self.output = output
        self.softmax = softmax
        self.parameters = parameters
        self.device = device
        self._mean = np.asarray(info.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self._std = np.asarray(info.std, dtype=np.float32).reshape(1, -1, 1, 1)

    def eval(self) -> OnnxModel:
        return self

    def count_parameters(self) -> int:
        return self.parameters

    def imgcls_probabilities(self, array: np.ndarray, tta: bool = False) -> np.ndarray:
        """Softmax probabilities (float64, rows summing to 1) for a uint8 N x H x W x C batch."""
        if tta:  # refused up front (imgcls.evaluation.backends.check_options); a library caller gets this
            raise UsageProblem(f"{self.path}: test-time augmentation is not available for ONNX models")
        x = normalize_uint8(np.asarray(array), self._mean, self._std)
        try:
            out = self.session.run([self.output], {self.input_name: x})[0]
        except Exception as exc:  # a graph that cannot take this input (a foreign file's fixed batch size, ...)
            raise ModelError(f"{self.path}: onnxruntime failed on a batch of {len(x)}: {brief(str(exc), 160)}") from None
        out = np.asarray(out, dtype=np.float64).reshape(len(x), -1)
        if self.softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
        out /= out.sum(axis=1, keepdims=True)  # an exact simplex for log loss
        return out


def normalize_uint8(array: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, x / 255 then (x - mean) / std: torch's ``normalize`` in numpy."""
    x = np.ascontiguousarray(array.transpose(0, 3, 1, 2), dtype=np.float32)
    x /= np.float32(255.0)
    x -= mean
    x /= std
    return x


def load_onnx(path: str | os.PathLike, device: str = "cpu", overrides: ModelOverrides | None = None):
    """(OnnxModel, ModelInfo) for an ONNX file: imgcls metadata, else ``overrides`` (see the module docstring)."""
    path = Path(path)
    overrides = overrides or ModelOverrides()
    session = open_session(path, device)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: the graph takes {len(inputs)} inputs; imgcls runs models with one image input")
    shape = list(inputs[0].shape) + [None] * 4
    if len(inputs[0].shape) != 4:
        raise ModelError(f"{path}: the graph's input has shape {inputs[0].shape}; imgcls needs N x C x H x W")
    channels = _static(shape[1]) if _static(shape[1]) in (1, 3) else None
    height, width = _static(shape[2]), _static(shape[3])
    size = height if height is not None and height == width else None
    meta = session.get_modelmeta().custom_metadata_map or {}
    names = [o.name for o in outputs]
    if METADATA_KEY in meta:
        if overrides.given():
            raise UsageProblem(f"{', '.join(overrides.given())}: {path} carries its own classes, size and "
                               f"normalisation (imgcls metadata); these options are for ONNX files without it")
        info = _parse_metadata(path, meta)
        if channels is not None and channels != info.channels or size is not None and size != info.image_size:
            raise ModelError(f"{path}: the graph takes {shape[1]} x {shape[2]} x {shape[3]} inputs, but its "
                             f"metadata says {info.channels} channels at {info.image_size} px")
        output, softmax = (PROBABILITIES, False) if PROBABILITIES in names else (names[0], True)
    else:
        n_out = _static((list(outputs[0].shape) + [None, None])[1]) if len(outputs[0].shape) == 2 else None
        info = _info_from_overrides(path, overrides, channels, size, n_out)
        output, softmax = names[0], None
    try:
        parameters = int(meta.get(PARAMETERS_KEY, "") or _count_parameters(path))
    except ValueError:
        parameters = _count_parameters(path)
    model = OnnxModel(path, session, info, output=output, softmax=bool(softmax), parameters=parameters,
                      device=device)
    if softmax is None:  # a foreign file: logits or probabilities? Look at one all-grey image's scores.
        model.softmax = not _rows_are_probabilities(model)
    return model, info


def _rows_are_probabilities(model: OnnxModel) -> bool:
    probe = np.full((1, model.info.image_size, model.info.image_size, model.info.channels), 128, dtype=np.uint8)
    x = normalize_uint8(probe, model._mean, model._std)
    try:
        out = np.asarray(model.session.run([model.output], {model.input_name: x})[0], dtype=np.float64)
    except Exception as exc:
        raise ModelError(f"{model.path}: onnxruntime cannot run the graph on a {model.info.channels} x "
                         f"{model.info.image_size} x {model.info.image_size} image: {brief(str(exc), 160)}") from None
    if out.ndim != 2 or out.shape[1] != len(model.info.classes):
        raise UsageProblem(f"--classes: {len(model.info.classes)} names, but {model.path} gives scores of shape "
                           f"{list(out.shape)}")
    return bool((out >= 0).all() and np.allclose(out.sum(axis=1), 1.0, atol=1e-4))


def _count_parameters(path: Path) -> int:
    """Elements of the graph's initializers, with the onnx package where it is installed (else 0: unknown)."""
    try:
        import onnx
    except ImportError:
        return 0
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a count is not worth failing for
        return 0
    return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))


def read_onnx_info(path: str | os.PathLike, overrides: ModelOverrides | None = None):
    """Only the model's metadata (eval checks labels before it runs anything)."""
    return load_onnx(path, "cpu", overrides)[1]
