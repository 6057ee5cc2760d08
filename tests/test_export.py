"""imgcls export (ONNX, TorchScript), and predict/eval running the ONNX file without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from _eval_helpers import CLASSES, save_trained_model, write_manifest_file
from conftest import make_class_folder, read_jsonl

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _invoke(args, input=None, env=None):
    from imgcls.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def _one_line_error(result, code: int) -> str:
    assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("exportworld")
    make_class_folder(root / "shapes", per_class=4)
    images = sorted((root / "shapes").rglob("*.png"))
    labels = [p.parent.name for p in images]
    model = save_trained_model(root / "run" / "model.safetensors", images, labels)
    result = _invoke(["export", model.parent])  # a run folder: model.onnx beside model.safetensors
    assert result.exit_code == 0, result.stderr
    records = [{"path": str(p), "label": label, "split": "test"} for p, label in zip(images, labels)]
    manifest = write_manifest_file(root / "m.jsonl", records)
    return {"root": root, "images": images, "labels": labels, "model": model, "onnx": root / "run" / "model.onnx",
            "manifest": manifest, "stderr": result.stderr}


def _probs(line):
    return {t["label"]: t["prob"] for t in line["top_k"]}


# ---------------------------------------------------------------- the exported file


def test_export_onnx_carries_metadata_and_the_check_is_printed(world):
    assert "check: max |p(onnx) - p(torch)| = " in world["stderr"] and "model written to" in world["stderr"]
    proto = onnx.load(str(world["onnx"]))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == CLASSES
    assert meta["image_size"] == "16" and meta["channels"] == "3" and meta["arch"] == "cnn"
    assert json.loads(meta["mean"]) == [0.5] * 3 and json.loads(meta["std"]) == [0.25] * 3
    assert meta["imgcls_version"] and "bilinear" in meta["preprocessing"]
    full = json.loads(meta["imgcls"])
    assert full["classes"] == CLASSES and full["extra"]["export"]["format"] == "onnx"
    assert full["extra"]["export"]["source"] == str(world["model"].resolve())
    # dynamic batch: the graph's first input dimension is symbolic; two outputs, probabilities sum to one
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 16, 16]
    session = ort.InferenceSession(str(world["onnx"]), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {"input": np.zeros((5, 3, 16, 16), np.float32)})
    assert logits.shape == probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-6)


def test_export_predict_and_eval_give_the_torch_probabilities(world, tmp_path):
    onnx_lines = read_jsonl(_invoke(["predict", "-m", world["onnx"], world["manifest"]]).stdout)
    torch_lines = read_jsonl(_invoke(["predict", "-m", world["model"], world["manifest"]]).stdout)
    assert [line["label"] for line in onnx_lines] == world["labels"]
    for a, b in zip(onnx_lines, torch_lines):
        assert _probs(a) == pytest.approx(_probs(b), abs=1e-5)
    result = _invoke(["eval", world["manifest"], "-m", world["model"], "-m", world["onnx"], "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    torch_report, onnx_report = document["models"]
    assert onnx_report["metrics"]["accuracy"] == torch_report["metrics"]["accuracy"] == 1.0
    assert onnx_report["metrics"]["log_loss"] == pytest.approx(torch_report["metrics"]["log_loss"], abs=1e-5)
    assert onnx_report["model"]["parameters"] == torch_report["model"]["parameters"] > 0
    assert document["comparison"][1]["model"] == "run.onnx"


def test_export_predict_and_eval_of_onnx_import_no_torch(world):
    code = (
        "import sys, json\n"
        "from imgcls.cli import main\n"
        "for args in (['predict', '-m', M, I], ['eval', D, '-m', M, '-q']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'matplotlib') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy}), file=sys.stderr)\n"
    )
    env = dict(os.environ, M=str(world["onnx"]), I=str(world["images"][0]), D=str(world["manifest"]))
    prelude = "import os; M, I, D = os.environ['M'], os.environ['I'], os.environ['D']\n"
    proc = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["label"] == world["labels"][0]
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == {"heavy": []}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_torchscript_carries_metadata_and_matches(world, tmp_path):
    import torch

    from imgcls.export import read_torchscript_metadata

    out = tmp_path / "m.pt"
    result = _invoke(["export", world["model"], "--format", "torchscript", "-o", out])
    assert result.exit_code == 0, result.stderr
    assert "check: max |p(torchscript) - p(torch)|" in result.stderr
    meta = read_torchscript_metadata(out)
    assert meta["classes"] == CLASSES and meta["image_size"] == 16 and meta["mean"] == [0.5] * 3
    module = torch.jit.load(str(out))
    logits, probs = module(torch.zeros(4, 3, 16, 16))
    assert logits.shape == (4, 3) and torch.allclose(probs.sum(1), torch.ones(4))


# ---------------------------------------------------------------- every registered family


def _families():
    from imgcls.models import get_spec, list_models

    fast = {"cnn", "cnn-gru", "cnn-classic", "resnet18", "mobilenet_v3_small"}
    params = []
    for name in list_models():
        if name.startswith("test-"):
            continue
        spec = get_spec(name)
        # 28 px: cnn-classic pools to 3 x 3, which the legacy exporter takes from 28 px, not from 16
        size, channels = (28, 1) if spec.default_size is None else (32, 3)
        marks = () if name in fast else (pytest.mark.slow,)
        params.append(pytest.param(name, size, channels, marks=marks, id=name))
    return params


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("arch,size,channels", _families())
def test_export_every_family_matches_torch(arch, size, channels, fmt, tmp_path):
    """The whole Classifier is exported generically: any registered architecture, both formats."""
    import torch

    from imgcls.export import ExportConfig, export_model
    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo

    torch.manual_seed(0)
    model = get_model(arch, num_classes=4, in_channels=channels).eval()
    info = ModelInfo(arch=arch, classes=["a", "b", "c", "d"], image_size=size, channels=channels,
                     mean=[0.5] * channels, std=[0.25] * channels)
    result = export_model(model, info, tmp_path / "model.safetensors", ExportConfig(format=fmt))
    assert result.check is not None and result.check.max_abs_diff <= 1e-4 and result.check.batches == (3, 1)


@pytest.mark.slow
def test_export_auto_falls_back_to_dynamo(tmp_path):
    """cnn-classic at 16 px pools 2 x 2 maps to 3 x 3: the legacy exporter refuses, the dynamo one works."""
    import torch

    from imgcls.export import ExportConfig, export_model
    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo

    torch.manual_seed(0)
    model = get_model("cnn-classic", num_classes=3, in_channels=1).eval()
    info = ModelInfo(arch="cnn-classic", classes=["a", "b", "c"], image_size=16, channels=1, mean=[0.5], std=[0.25])
    result = export_model(model, info, tmp_path / "m.safetensors", ExportConfig())
    assert result.exporter == "dynamo" and "the legacy exporter failed" in result.notes[0]
    assert result.check.max_abs_diff <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["cnn", "cnn-gru", "resnet18"])
def test_export_dynamo_exporter_matches_torch(arch, tmp_path):
    import torch

    from imgcls.export import ExportConfig, export_model
    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo

    torch.manual_seed(0)
    channels = 3
    model = get_model(arch, num_classes=3, in_channels=channels).eval()
    info = ModelInfo(arch=arch, classes=["a", "b", "c"], image_size=32, channels=channels, mean=[0.5] * 3,
                     std=[0.25] * 3)
    result = export_model(model, info, tmp_path / "m.safetensors", ExportConfig(exporter="dynamo"))
    assert result.exporter == "dynamo" and result.check.max_abs_diff <= 1e-4


# ---------------------------------------------------------------- architectures that cannot be exported


def _register_test_archs():
    import torch
    from torch import nn

    from imgcls.models.classifier import Classifier
    from imgcls.models.registry import _REGISTRY, register_model

    class CumMax(nn.Module):  # aten::cummax has no ONNX operator (opset 17)
        def forward(self, x):
            return torch.cummax(x, dim=3)[0]

    class BatchScaled(nn.Module):  # the tracer turns the batch size into a constant: a wrong graph
        def forward(self, x):
            return x * float(x.shape[0])

    def builder(middle):
        def build(num_classes, in_channels, dropout, pretrained=False, weights=None):
            backbone = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), middle(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten())
            return Classifier(backbone, 4, num_classes, dropout)

        return build

    for name, middle in (("test-export-cummax", CumMax), ("test-export-batchscaled", BatchScaled)):
        if name not in _REGISTRY:
            register_model(name)(builder(middle))


@pytest.fixture
def odd_models(tmp_path):
    import torch

    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo, save_model

    _register_test_archs()
    paths = {}
    for name in ("test-export-cummax", "test-export-batchscaled"):
        torch.manual_seed(0)
        model = get_model(name, num_classes=3, in_channels=3, dropout=0.0)
        with torch.no_grad():
            model.head[1].weight.mul_(50)  # probabilities far from uniform, so a wrong graph shows
        info = ModelInfo(arch=name, classes=CLASSES, image_size=8, channels=3, mean=[0.5] * 3, std=[0.25] * 3,
                         dropout=0.0)
        (tmp_path / name).mkdir()
        paths[name] = save_model(tmp_path / name / "model.safetensors", model, info)
    return paths


def test_export_unsupported_architecture_is_one_line_and_writes_nothing(odd_models):
    path = odd_models["test-export-cummax"]
    result = _invoke(["export", path, "--exporter", "legacy"])
    line = _one_line_error(result, 1)
    assert "cannot export architecture 'test-export-cummax' to ONNX" in line and "cummax" in line
    assert _left_in(path.parent) == ["model.safetensors"] and result.stdout == ""


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_check_refuses_a_graph_that_differs(odd_models, fmt):
    path = odd_models["test-export-batchscaled"]
    result = _invoke(["export", path, "--format", fmt])
    line = _one_line_error(result, 1)
    assert f"the {fmt} export of {path} differs from the torch model" in line and "nothing written" in line
    assert _left_in(path.parent) == ["model.safetensors"]
    # --no-check writes what the exporter made (the user's call); a looser tolerance accepts it too
    result = _invoke(["export", path, "--format", fmt, "--no-check", "-o", path.parent / f"x.{fmt}"])
    assert result.exit_code == 0 and (path.parent / f"x.{fmt}").exists() and "check:" not in result.stderr


# ---------------------------------------------------------------- bad input


def test_export_bad_onnx_files_are_one_line_errors(world, tmp_path):
    image = world["images"][0]
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(b"this is not a protobuf at all \x00\xff" * 10)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(world["onnx"].read_bytes()[: world["onnx"].stat().st_size // 2])
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad, words in ((foreign, "not a readable ONNX model"), (truncated, "not a readable ONNX model"),
                       (empty, "empty file")):
        for command in (["predict", "-m", bad, image], ["eval", world["manifest"], "-m", bad]):
            result = _invoke(command)
            line = _one_line_error(result, 1)
            assert str(bad) in line and words in line, line
            assert result.stdout == ""


def test_export_onnx_without_metadata_needs_classes(world, tmp_path):
    proto = onnx.load(str(world["onnx"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    image = world["images"][0]
    line = _one_line_error(_invoke(["predict", "-m", bare, image]), 1)
    assert "without imgcls metadata" in line and "--classes" in line and "--size" not in line  # 16 px is fixed
    # supplied: the same answers as the model with metadata (mean/std given too)
    args = ["predict", "-m", bare, *world["images"], "--classes", ",".join(CLASSES), "--mean", "0.5,0.5,0.5",
            "--std", "0.25,0.25,0.25"]
    supplied = read_jsonl(_invoke(args).stdout)
    own = read_jsonl(_invoke(["predict", "-m", world["onnx"], *world["images"]]).stdout)
    for a, b in zip(supplied, own):
        assert _probs(a) == pytest.approx(_probs(b), abs=1e-5)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    result = _invoke(["eval", world["manifest"], "-m", bare, "--classes", f"@{names}", "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["n_images"] == 12
    assert _one_line_error(_invoke(["predict", "-m", bare, image, "--classes", "a,b"]), 2).endswith(
        f"--classes: 2 names, but {bare} gives 3 scores per image")
    assert "--size 20" in _one_line_error(_invoke(["predict", "-m", bare, image, "--classes", "a,b,c", "--size",
                                                   "20"]), 2)
    assert "carries its own" in _one_line_error(_invoke(["predict", "-m", world["onnx"], image, "--classes",
                                                         "a,b,c"]), 2)
    assert "only for ONNX files" in _one_line_error(_invoke(["predict", "-m", world["model"], image, "--size",
                                                             "16"]), 2)


def test_export_onnx_refuses_tta_and_explain(world, tmp_path):
    image = world["images"][0]
    assert "--tta: not available for ONNX models" in _one_line_error(
        _invoke(["predict", "-m", world["onnx"], image, "--tta"]), 2)
    assert "--tta" in _one_line_error(_invoke(["eval", world["manifest"], "-m", world["onnx"], "--tta"]), 2)
    assert "--explain" in _one_line_error(
        _invoke(["predict", "-m", world["onnx"], image, "--explain", tmp_path / "x"]), 2)
    assert not (tmp_path / "x").exists()


def test_export_without_onnxruntime_says_what_to_install(world, monkeypatch, tmp_path):
    monkeypatch.setattr("imgcls.evaluation.backends._loaded", {})  # no session kept from an earlier test
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    line = _one_line_error(_invoke(["predict", "-m", world["onnx"], world["images"][0]]), 1)
    assert line.endswith("needs onnxruntime, which is not installed: pip install 'imgcls[onnx]'")
    monkeypatch.setattr("imgcls.export._find", lambda name: None)
    line = _one_line_error(_invoke(["export", world["model"], "-o", tmp_path / "x.onnx"]), 1)
    assert "pip install 'imgcls[onnx]'" in line and _left_in(tmp_path) == []


def test_export_usage_errors_and_outputs(world, tmp_path):
    model = world["model"]
    assert "already an ONNX model" in _one_line_error(_invoke(["export", world["onnx"]]), 2)
    assert "--int8: only for --format onnx" in _one_line_error(
        _invoke(["export", model, "--format", "torchscript", "--int8"]), 2)
    assert "--int8 needs images to calibrate on" in _one_line_error(_invoke(["export", model, "--int8"]), 2)
    assert "is an input of this command" in _one_line_error(_invoke(["export", model, "-o", model]), 1)
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "is a folder" in _one_line_error(_invoke(["export", model, "-o", folder]), 1)
    assert "no such model file" in _one_line_error(_invoke(["export", tmp_path / "nothing.safetensors"]), 1)
    assert _left_in(folder) == [] and not (tmp_path / "nothing.onnx").exists()


# ---------------------------------------------------------------- pipelines and int8


def test_export_stream_from_train_goes_on_to_eval(world, tmp_path):
    header = {"format": "imgcls-manifest", "version": "1.0", "classes": CLASSES, "model": str(world["model"])}
    records = [{"path": str(p), "label": label, "split": "test"} for p, label in zip(world["images"], world["labels"])]
    stream = "\n".join(json.dumps(x) for x in [header, *records]) + "\n"
    out = tmp_path / "streamed.onnx"
    result = _invoke(["export", "-o", out], input=stream)
    assert result.exit_code == 0, result.stderr
    passed = read_jsonl(result.stdout)
    assert passed[0]["model"] == str(out.resolve()) and passed[0]["model_source"] == str(world["model"].resolve())
    assert passed[1:] == records
    result = _invoke(["eval", "--json", "-q"], input=result.stdout)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["model"]["path"] == str(out.resolve())


def test_export_int8_is_scored_next_to_the_float_model(world, tmp_path):
    out = tmp_path / "model-int8.onnx"
    result = _invoke(["export", world["model"], "--int8", "--calibration", world["root"] / "shapes", "-o", out])
    assert result.exit_code == 0, result.stderr
    assert "calibrating on 12 images" in result.stderr and "int8: max |p(int8) - p(torch)|" in result.stderr
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    result = _invoke(["eval", world["manifest"], "-m", out, "--json"])
    assert result.exit_code == 0, result.stderr
    assert "scoring the float model it was quantised from too" in result.stderr
    float_report, int8_report = json.loads(result.stdout)["models"]
    assert float_report["model"]["path"] == str(world["model"].resolve())
    assert int8_report["model"]["path"] == str(out.resolve())
    assert abs(int8_report["metrics"]["accuracy"] - float_report["metrics"]["accuracy"]) <= 1 / 12
    assert int8_report["metrics"]["log_loss"] != float_report["metrics"]["log_loss"]  # really the int8 graph
    # the float model already given (as its run folder) is not scored twice
    result = _invoke(["eval", world["manifest"], "-m", world["model"].parent, "-m", out, "--json", "-q"])
    assert [m["model"]["path"] for m in json.loads(result.stdout)["models"]] == [
        str(world["model"].resolve()), str(out.resolve())]
