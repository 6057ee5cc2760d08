"""imgcls predict: inputs, output lines, errors, channels, model resolution, agreement with eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _eval_helpers import CLASSES, save_constant_model, save_trained_model, write_manifest_file
from conftest import make_class_folder, make_image, read_jsonl


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictworld")
    make_class_folder(root / "shapes", per_class=4)
    images = sorted((root / "shapes").rglob("*.png"))
    labels = [p.parent.name for p in images]
    perfect = save_trained_model(root / "perfect.safetensors", images, labels)
    return {"root": root, "images": images, "labels": labels, "perfect": perfect}


def predict_lines(invoke, args, exit_code=0, **kwargs):
    result = invoke(["predict", *args], **kwargs)
    assert result.exit_code == exit_code, result.stderr
    return read_jsonl(result.stdout), result


def test_predict_files_give_one_json_line_each(invoke, world):
    lines, result = predict_lines(invoke, ["-m", world["perfect"], world["images"][0], world["images"][-1]])
    assert [line["path"] for line in lines] == [str(world["images"][0]), str(world["images"][-1])]
    assert [line["label"] for line in lines] == [world["labels"][0], world["labels"][-1]]
    for line in lines:
        assert set(line) == {"path", "label", "prob", "top_k"}
        assert len(line["top_k"]) == 3 and line["top_k"][0] == {"label": line["label"], "prob": line["prob"]}
        probs = [t["prob"] for t in line["top_k"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    assert f"model: {world['perfect']} (from --model" in result.stderr
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], "--top-k", "1", world["images"][0]])
    assert len(lines[0]["top_k"]) == 1


def test_predict_folder_recursive_images_only(invoke, world, tmp_path):
    folder = tmp_path / "album"
    make_image(folder / "a.png", "circle")
    make_image(folder / "deeper" / "b.jpg", "square")
    make_image(folder / ".hidden" / "c.png", "stripe")
    make_image(folder / ".d.png", "stripe")
    (folder / "notes.txt").write_text("not an image")
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], folder, "--batch-size", "1", "--workers", "2"])
    assert [Path(line["path"]).relative_to(folder).as_posix() for line in lines] == ["a.png", "deeper/b.jpg"]
    assert [line["label"] for line in lines] == ["circle", "square"]


def test_predict_many_files_batched_in_input_order(invoke, world):
    folder = world["root"] / "shapes"
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], folder, "--batch-size", "5", "--workers", "2"])
    assert [line["path"] for line in lines] == [str(p) for p in world["images"]]
    assert [line["label"] for line in lines] == world["labels"]


def test_predict_stdin_paths_and_stdin_manifest(invoke, world, tmp_path):
    paths = "\n".join(str(p) for p in world["images"][:3]) + "\n\n"
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], "-"], input=paths)
    assert [line["path"] for line in lines] == [str(p) for p in world["images"][:3]]
    records = [{"path": str(p), "label": label} for p, label in zip(world["images"], world["labels"])]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records)
    lines, _ = predict_lines(invoke, ["-m", world["perfect"]], input=manifest.read_text())  # no INPUTS: stdin
    assert [line["label"] for line in lines] == world["labels"]


def test_predict_manifest_files_by_suffix_and_by_content(invoke, world, tmp_path):
    records = [{"path": p.relative_to(world["root"]).as_posix(), "label": label}
               for p, label in zip(world["images"], world["labels"])]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records, root=str(world["root"]))
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], manifest])
    assert [line["path"] for line in lines] == [str(p) for p in world["images"]]
    no_suffix = tmp_path / "list"
    no_suffix.write_text(manifest.read_text())
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], no_suffix])
    assert [line["label"] for line in lines] == world["labels"]


def test_predict_unreadable_file_gives_error_line_and_exit_1(invoke, world, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    missing = tmp_path / "missing.jpg"
    good = world["images"][0]
    lines, result = predict_lines(invoke, ["-m", world["perfect"], good, bad, missing, good], exit_code=1)
    assert [line["path"] for line in lines] == [str(good), str(bad), str(missing), str(good)]
    assert lines[0]["label"] == lines[3]["label"] == world["labels"][0]
    assert set(lines[1]) == {"path", "error", "reason"} and lines[1]["reason"] in ("corrupt", "truncated", "not-an-image")
    assert lines[2]["reason"] == "missing" and lines[2]["error"] == "no such file"
    assert "2 of 4 images could not be read" in result.stderr and "Traceback" not in result.stderr


def _probs(line):
    return {t["label"]: t["prob"] for t in line["top_k"]}


def test_predict_grayscale_to_rgb_model_and_back(invoke, world, tmp_path):
    source = make_image(tmp_path / "src.png", "circle", size=16)
    gray = tmp_path / "gray.png"
    Image.open(source).convert("L").save(gray)
    gray_as_rgb = tmp_path / "gray_rgb.png"
    Image.open(gray).convert("RGB").save(gray_as_rgb)
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], gray, gray_as_rgb])
    assert "error" not in lines[0]
    assert _probs(lines[0]) == pytest.approx(_probs(lines[1]), abs=1e-6)  # L became R=G=B

    gray_images = [tmp_path / "g" / f"{i}.png" for i in range(len(world["images"]))]
    for src, dst in zip(world["images"], gray_images):
        dst.parent.mkdir(exist_ok=True)
        Image.open(src).convert("L").save(dst)
    gray_model = save_trained_model(tmp_path / "gray.safetensors", gray_images, world["labels"], channels=1)
    lines, _ = predict_lines(invoke, ["-m", gray_model, source, gray])
    assert "error" not in lines[0] and lines[0]["label"] == "circle"
    assert _probs(lines[0]) == pytest.approx(_probs(lines[1]), abs=1e-6)  # RGB became L


def test_predict_model_resolution_order(invoke, world, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    for i, name in enumerate(CLASSES):
        (runs / f"run-{name}").mkdir(parents=True)
        save_constant_model(runs / f"run-{name}" / "model.safetensors", winner=i)
    os.symlink("run-circle", runs / "latest")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGCLS_MODEL", raising=False)
    image = world["images"][0]

    lines, result = predict_lines(invoke, [image])
    assert lines[0]["label"] == "circle" and "from runs/latest" in result.stderr
    monkeypatch.setenv("IMGCLS_MODEL", str(runs / "run-square"))
    lines, result = predict_lines(invoke, [image])
    assert lines[0]["label"] == "square" and "from $IMGCLS_MODEL" in result.stderr
    lines, result = predict_lines(invoke, [image, "--model", runs / "run-stripe" / "model.safetensors"])
    assert lines[0]["label"] == "stripe" and "from --model" in result.stderr

    monkeypatch.delenv("IMGCLS_MODEL")
    (runs / "latest").unlink()
    result = invoke(["predict", image])
    assert result.exit_code == 1
    assert "--model" in result.stderr and "IMGCLS_MODEL" in result.stderr and "runs/latest" in result.stderr
    result = invoke(["predict", image, "--model", tmp_path / "nothing.safetensors"])
    assert result.exit_code == 1 and "nothing.safetensors" in result.stderr


def test_predict_same_probabilities_as_eval(invoke, world, tmp_path):
    records = [{"path": str(p), "label": label, "split": "test"} for p, label in zip(world["images"], world["labels"])]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records)
    preds = tmp_path / "p.jsonl"
    result = invoke(["eval", manifest, "-m", world["perfect"], "--predictions", preds, "--batch-size", "64"])
    assert result.exit_code == 0, result.stderr
    from_eval = {r["path"]: r["probs"] for r in read_jsonl(preds.read_text())[1:]}
    lines, _ = predict_lines(invoke, ["-m", world["perfect"], manifest, "--batch-size", "5"])
    assert len(lines) == len(from_eval) == 12
    for line in lines:
        assert _probs(line) == pytest.approx(from_eval[line["path"]], abs=1e-6)


def test_predict_tta_averages_with_the_mirror_image(invoke, world, tmp_path):
    image = make_image(tmp_path / "img.png", "square", size=16, seed=5)
    mirrored = tmp_path / "mirror.png"
    Image.open(image).transpose(Image.FLIP_LEFT_RIGHT).save(mirrored)
    plain, _ = predict_lines(invoke, ["-m", world["perfect"], image, mirrored])
    tta, _ = predict_lines(invoke, ["-m", world["perfect"], image, "--tta"])
    expected = {c: (_probs(plain[0])[c] + _probs(plain[1])[c]) / 2 for c in CLASSES}
    assert _probs(tta[0]) == pytest.approx(expected, abs=1e-6)


def test_predict_table_for_people(invoke, world, tmp_path):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    result = invoke(["predict", "-m", world["perfect"], world["images"][0], bad, "--table"])
    assert result.exit_code == 1
    assert "label" in result.stdout and world["labels"][0] in result.stdout and "empty file" in result.stdout
    assert not result.stdout.lstrip().startswith("{")
    assert invoke(["predict", "-m", world["perfect"], world["images"][0], "--table", "--json"]).exit_code == 2


def test_predict_usage_errors(invoke, world, tmp_path):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    result = invoke(["predict", "-m", world["perfect"], empty])
    assert result.exit_code == 1 and "no image files" in result.stderr
    result = invoke(["predict", "-m", world["perfect"], world["images"][0], "--device", "tpu"])
    assert result.exit_code == 2 and "--device" in result.stderr


def test_predict_one_image_imports_no_heavy_extras(world):
    """The one-image path of a cnn model loads neither scikit-learn, matplotlib nor torchvision,
    and starts no decoding thread."""
    code = (
        "import sys, atexit, threading\n"
        "atexit.register(lambda: print(json.dumps({'sklearn': 'sklearn' in sys.modules, "
        "'matplotlib': 'matplotlib' in sys.modules, 'torchvision': 'torchvision' in sys.modules, "
        "'threads': [t.name for t in threading.enumerate() if t.name.startswith('imgcls')]}), file=sys.stderr))\n"
        "import json\n"
        "from imgcls.cli import main\n"
        f"main(['predict', '-m', {str(world['perfect'])!r}, {str(world['images'][0])!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["label"] == world["labels"][0]
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"sklearn": False, "matplotlib": False, "torchvision": False, "threads": []}


def test_predict_library_rows_keep_input_order():
    from imgcls.evaluation.inference import Batch, ImageError
    from imgcls.evaluation.predicting import rows_in_order

    batch = Batch([0, 2], np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), [ImageError(1, "b", "missing", "no such file")])
    rows = list(rows_in_order([batch], ["a", "b", "c"], CLASSES, 2))
    assert [r["path"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["top_k"] == [{"label": "circle", "prob": 0.7}, {"label": "square", "prob": 0.2}]
    assert rows[1] == {"path": "b", "error": "no such file", "reason": "missing"}
