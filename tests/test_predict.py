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


def _views_by_hand(model_path: Path, image: Path, mirror: bool) -> dict[str, float]:
    """The mean softmax over the image, 4 one-pixel shifts (edge pixels filling in) and, if asked, its mirror."""
    import torch

    from imgcls.models.io import load_model
    from imgcls.models.preprocess import load_uint8, normalize

    model, info = load_model(model_path)
    img = load_uint8(image, info.image_size, info.channels)
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    views = [img] + [padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w] for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    if mirror:
        views.append(img[:, ::-1])
    x = normalize(torch.from_numpy(np.stack(views).copy()), info.mean, info.std)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1).mean(0)
    return {c: float(v) for c, v in zip(info.classes, p)}


def test_predict_tta_views_follow_the_training_augmentation(invoke, world, tmp_path):
    """No mirror unless the model trained with flips (issue 15: a mirrored "3" reads as "8")."""
    from imgcls.models.io import load_model, save_model

    image = make_image(tmp_path / "img.png", "square", size=16, seed=5)
    # the helper's model file records no training augmentation: the safe default, shifts without the mirror
    tta, result = predict_lines(invoke, ["-m", world["perfect"], image, "--tta"])
    assert "5 views" in result.stderr and "no mirror" in result.stderr and "safe default" in result.stderr
    assert _probs(tta[0]) == pytest.approx(_views_by_hand(world["perfect"], image, mirror=False), abs=1e-5)
    plain, _ = predict_lines(invoke, ["-m", world["perfect"], image])
    assert _probs(tta[0]) != pytest.approx(_probs(plain[0]), abs=1e-6)  # the views did change something
    # the same weights recorded as trained with flips: the mirror joins the views
    model, info = load_model(world["perfect"])
    info.extra["augmentation"] = {"preset": "light", "flip": True, "shift": 0.0, "rotation": 0.0, "zoom": 0.0}
    flipped = save_model(tmp_path / "flipped.safetensors", model, info)
    tta, result = predict_lines(invoke, ["-m", flipped, image, "--tta"])
    assert "6 views" in result.stderr and "mirror" in result.stderr and "trained with flips" in result.stderr
    assert _probs(tta[0]) == pytest.approx(_views_by_hand(flipped, image, mirror=True), abs=1e-5)
    # and one trained without flips says so, from its training record
    info.extra["augmentation"] = {"preset": "none", "flip": False, "shift": 0.0, "rotation": 0.0, "zoom": 0.0}
    plain_model = save_model(tmp_path / "noflip.safetensors", model, info)
    _, result = predict_lines(invoke, ["-m", plain_model, image, "--tta"])
    assert "no mirror: trained without flips" in result.stderr


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


def test_predict_device_names_mean_what_they_mean_in_train(world):
    """One resolver for torch models in train, eval and predict (ONNX models have onnxruntime's)."""
    import torch

    from imgcls import devices
    from imgcls.errors import UsageProblem
    from imgcls.evaluation import backends

    model = [world["perfect"]]
    assert backends.resolve_device("auto", model) == str(devices.resolve_device("auto"))
    assert backends.resolve_device(" CPU ", model) == "cpu" == str(devices.resolve_device("cpu"))
    if not torch.cuda.is_available() and not devices._mps_available():
        assert devices.resolve_device("auto").type == "cpu"
    for bad in ("tpu", "cuda:x", "cuda:99", *([] if torch.cuda.is_available() else ["cuda"]),
                *([] if devices._mps_available() else ["mps"])):
        with pytest.raises(UsageProblem, match="--device"):
            devices.resolve_device(bad)
        with pytest.raises(UsageProblem, match="--device"):
            backends.resolve_device(bad, model)


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


# --- the decoded-image cache -------------------------------------------------------------------------------

from imgcls.evaluation.predicting import CACHE_MIN_IMAGES  # noqa: E402


@pytest.fixture
def many(world, tmp_path):
    """A folder of exactly CACHE_MIN_IMAGES images (the world's, repeated) and a cache folder."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(CACHE_MIN_IMAGES):
        src = world["images"][i % len(world["images"])]
        (folder / f"{i:03d}_{src.parent.name}.png").write_bytes(src.read_bytes())
    return {"folder": folder, "cache": tmp_path / "cache", "model": world["perfect"]}


def cache_entries(cache_dir):
    return sorted(p.name for p in (cache_dir / "decoded").glob("*.npy")) if (cache_dir / "decoded").exists() else []


def test_predict_cache_second_run_is_a_hit(invoke, many):
    args = ["-m", many["model"], many["folder"], "--cache-dir", many["cache"], "-v"]
    first, result = predict_lines(invoke, args)
    assert "decoded images cached" in result.stderr and "cache hit" not in result.stderr
    entries = cache_entries(many["cache"])
    assert len(entries) == 1
    assert [p.name for p in (many["cache"] / "decoded").iterdir() if p.name.startswith(".")] == []  # no temp left
    stamp = (many["cache"] / "decoded" / entries[0]).stat().st_mtime_ns
    second, result = predict_lines(invoke, args)
    assert "decoded cache hit" in result.stderr and "decoded images cached" not in result.stderr
    assert second == first  # same paths, labels and probabilities, nothing decoded
    assert cache_entries(many["cache"]) == entries
    assert (many["cache"] / "decoded" / entries[0]).stat().st_mtime_ns == stamp  # not rewritten
    assert [line["label"] for line in first] == [p.name.split("_", 1)[1][:-4] for p in sorted(many["folder"].iterdir())]


def test_predict_cache_changed_file_is_decoded_again(invoke, many, world):
    args = ["-m", many["model"], many["folder"], "--cache-dir", many["cache"], "-v"]
    before, _ = predict_lines(invoke, args)
    target = sorted(many["folder"].iterdir())[0]
    assert before[0]["label"] == "circle"
    square = next(p for p in world["images"] if p.parent.name == "square")
    stat = target.stat()
    target.write_bytes(square.read_bytes())  # new content under the old name, old timestamps put back
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after, result = predict_lines(invoke, args)
    assert "decoded cache hit" not in result.stderr and "decoded images cached" in result.stderr
    assert after[0]["label"] == "square" and after[0]["prob"] != before[0]["prob"]  # not the stale pixels
    assert after[1:] == before[1:]
    assert len(cache_entries(many["cache"])) == 2


def test_predict_cache_damaged_entry_is_rebuilt(invoke, many):
    args = ["-m", many["model"], many["folder"], "--cache-dir", many["cache"], "-v"]
    first, _ = predict_lines(invoke, args)
    entry = many["cache"] / "decoded" / cache_entries(many["cache"])[0]
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)  # zero some pixels in place
    entry.write_bytes(bytes(raw))
    rebuilt, result = predict_lines(invoke, args)
    assert "is damaged" in result.stderr and "decoded images cached" in result.stderr
    assert rebuilt == first  # the damaged pixels were not used
    again, result = predict_lines(invoke, args)
    assert "decoded cache hit" in result.stderr and again == first


def test_predict_no_cache_and_small_sets_write_nothing(invoke, many, world):
    lines, result = predict_lines(invoke, ["-m", many["model"], many["folder"], "--no-cache", "-v"])
    assert len(lines) == CACHE_MIN_IMAGES and "no decoded-image cache" in result.stderr
    default_cache = Path(os.environ["IMGCLS_CACHE"])
    assert cache_entries(default_cache) == []
    few = sorted(many["folder"].iterdir())[: CACHE_MIN_IMAGES - 1]
    lines, result = predict_lines(invoke, ["-m", many["model"], *few, "--cache-dir", many["cache"], "-v"])
    assert len(lines) == CACHE_MIN_IMAGES - 1 and f"fewer than {CACHE_MIN_IMAGES} images" in result.stderr
    assert not many["cache"].exists()
    result = invoke(["predict", "-m", many["model"], many["folder"], "--no-cache", "--cache-dir", many["cache"]])
    assert result.exit_code == 2 and "exclude each other" in result.stderr
    # without --cache-dir the default cache ($IMGCLS_CACHE here) is used from the threshold on
    predict_lines(invoke, ["-m", many["model"], many["folder"]])
    assert len(cache_entries(default_cache)) == 1


def test_predict_cache_bad_file_among_good_still_gives_error_line(invoke, many):
    bad = many["folder"] / "000_circle.png"
    good_rows, _ = predict_lines(invoke, ["-m", many["model"], many["folder"], "--no-cache"])
    bad.write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    args = ["-m", many["model"], many["folder"], "--cache-dir", many["cache"], "-v", "--batch-size", "16"]
    for _ in range(2):  # nothing cached, so the second run reports the file again
        lines, result = predict_lines(invoke, args, exit_code=1)
        assert lines[0]["path"] == str(bad) and lines[0]["reason"] in ("corrupt", "truncated", "not-an-image")
        assert lines[1:] == good_rows[1:]
        assert f"1 of {CACHE_MIN_IMAGES} images could not be read" in result.stderr
        assert "not cached: some files could not be read" in result.stderr and "cache hit" not in result.stderr
        assert cache_entries(many["cache"]) == []
        assert [p.name for p in (many["cache"] / "decoded").iterdir()] == []  # no temporary file left


def test_predict_and_eval_share_cache_entries(invoke, many, tmp_path, monkeypatch):
    from imgcls.images import sha256_file

    images = sorted(many["folder"].iterdir())
    # records carry sha256 as prepare writes it: the key is the files', so predict of plain paths matches too
    records = [{"path": str(p), "label": p.name.split("_", 1)[1][:-4], "sha256": sha256_file(p)} for p in images]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records)
    lines, result = predict_lines(invoke, ["-m", many["model"], manifest, "--cache-dir", many["cache"], "-v"])
    assert "decoded images cached" in result.stderr
    entries = cache_entries(many["cache"])
    evaluated = invoke(["eval", manifest, "-m", many["model"], "--split", "all", "--cache-dir", many["cache"], "-v",
                        "--predictions", tmp_path / "p.jsonl"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "decoded cache hit" in evaluated.stderr and cache_entries(many["cache"]) == entries
    from_eval = {r["path"]: r["probs"] for r in read_jsonl((tmp_path / "p.jsonl").read_text())[1:]}
    for line in lines:
        assert _probs(line) == pytest.approx(from_eval[line["path"]], abs=1e-6)
    # and the other way round: an entry eval wrote serves predict
    other = tmp_path / "other"
    (other / "decoded").mkdir(parents=True)
    evaluated = invoke(["eval", manifest, "-m", many["model"], "--split", "all", "--cache-dir", other, "-q"])
    assert evaluated.exit_code == 0, evaluated.stderr
    monkeypatch.chdir(tmp_path)  # a relative folder name finds the entry of eval's absolute paths
    lines, result = predict_lines(invoke, ["-m", many["model"], "many", "--cache-dir", other, "-v"])
    assert "decoded cache hit" in result.stderr and len(cache_entries(other)) == 1
    assert [line["path"] for line in lines] == [f"many/{p.name}" for p in images]


# --- Grad-CAM explanations (--explain DIR) ----------------------------------------------------------------

def _square_image(rng, quadrant: int | None, size: int = 16):
    """Dark noisy background; with a quadrant, a bright 4x4 square inside it. Returns (uint8 HxWx3, (y, x))."""
    pixels = rng.normal(60, 10, (size, size, 3))
    corner = None
    if quadrant is not None:
        half = size // 2
        corner = ((quadrant // 2) * half + int(rng.integers(1, 4)), (quadrant % 2) * half + int(rng.integers(1, 4)))
        pixels[corner[0]:corner[0] + 4, corner[1]:corner[1] + 4] = 230
    return np.clip(pixels, 0, 255).astype(np.uint8), corner


@pytest.fixture(scope="module")
def square_model(tmp_path_factory):
    """A tiny CNN trained for a few dozen steps to tell 'square' (a bright square anywhere) from 'plain'."""
    import torch

    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo, save_model
    from imgcls.models.preprocess import normalize

    rng = np.random.default_rng(0)
    pictures = [_square_image(rng, i % 4 if i % 2 == 0 else None)[0] for i in range(64)]
    labels = torch.tensor([1 if i % 2 == 0 else 0 for i in range(64)])
    torch.manual_seed(0)
    model = get_model("cnn", num_classes=2, in_channels=3, dropout=0.0, width=8, depth=2, block_dropout=0.0)
    info = ModelInfo(arch="cnn", classes=["plain", "square"], image_size=16, channels=3, mean=[0.5] * 3,
                     std=[0.25] * 3, arch_options={"width": 8, "depth": 2, "block_dropout": 0.0}, dropout=0.0)
    x = normalize(torch.from_numpy(np.stack(pictures)), info.mean, info.std)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        model.train()
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == labels).all()
    path = save_model(tmp_path_factory.mktemp("squares") / "square.safetensors", model, info)
    return model, info, path


def test_predict_explain_gradcam_lands_on_the_object(square_model):
    pytest.importorskip("pytorch_grad_cam")
    from imgcls.evaluation.explain import gradcam

    model, info, _ = square_model
    rng = np.random.default_rng(1)
    hits, ratios = 0, []
    for quadrant in range(4):
        for _ in range(5):
            image, (y, x) = _square_image(rng, quadrant)
            heat = gradcam(model, info, image[None], [1])[0]
            assert heat.shape == (16, 16) and 0 <= heat.min() and heat.max() <= 1
            quarters = [heat[(q // 2) * 8:(q // 2) * 8 + 8, (q % 2) * 8:(q % 2) * 8 + 8].mean() for q in range(4)]
            hits += int(np.argmax(quarters)) == quadrant
            inside = heat[y:y + 4, x:x + 4].mean()
            ratios.append(inside / ((heat.sum() - heat[y:y + 4, x:x + 4].sum()) / (16 * 16 - 16)))
    assert hits >= 18, f"the map's brightest quadrant held the square in only {hits} of 20 images"
    assert np.median(ratios) > 2.0


def test_predict_explain_writes_overlays_named_safely(invoke, square_model, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    _, _, model_path = square_model
    rng = np.random.default_rng(2)
    names = ["top left.png", "../evil\nname<script>.png", "plain.png"]
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for k, name in enumerate(names):
        image, _ = _square_image(rng, 0 if k < 2 else None)
        target = folder / name.replace("../", "")
        Image.fromarray(image).resize((40, 24)).save(target)  # not square: the overlay keeps the aspect
        paths.append(target)
    out = tmp_path / "explained"
    lines, result = predict_lines(invoke, ["-m", model_path, *paths, "--explain", out, "--json"])
    assert [line["label"] for line in lines] == ["square", "square", "plain"]
    assert f"3 Grad-CAM overlays written to {out}" in result.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["000000-top_left-gradcam.png", "000001-evil_name_script-gradcam.png",
                       "000002-plain-gradcam.png"]
    for line in lines:
        overlay = Path(line["overlay"])
        assert overlay.parent == out
        with Image.open(overlay) as img:
            assert img.format == "PNG" and img.size == (224, 134)  # small photos enlarged, aspect kept


def test_predict_explain_without_gradcam_is_a_one_line_error(invoke, world, monkeypatch, tmp_path):
    import imgcls.evaluation.explain as explain

    monkeypatch.setattr(explain, "have_gradcam", lambda: False)
    result = invoke(["predict", "-m", world["perfect"], world["images"][0], "--explain", tmp_path / "x"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith("install it with pip install 'imgcls[explain]' (grad-cam)")
    assert not (tmp_path / "x").exists() and result.stdout == ""


ARCHS_FAST = [("cnn", 28, 1), ("cnn-gru", 28, 1), ("cnn-classic", 28, 1), ("resnet18", 32, 3),
              ("mobilenet_v3_small", 64, 3)]
ARCHS_SLOW = [("densenet121", 64, 3), ("vgg16", 32, 3), ("efficientnet_b0", 64, 3), ("mobilenet_v2", 32, 3),
              ("mobilenet_v3_large", 64, 3), ("resnet50", 64, 3)]


@pytest.mark.parametrize("arch,size,channels", ARCHS_FAST + [pytest.param(*a, marks=pytest.mark.slow)
                                                             for a in ARCHS_SLOW])
def test_predict_explain_every_architecture_family(arch, size, channels):
    pytest.importorskip("pytorch_grad_cam")
    from imgcls.evaluation.explain import find_target_layer, gradcam
    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo

    model = get_model(arch, num_classes=3, in_channels=channels).eval()
    model.set_trainable_blocks(0)  # a frozen backbone still gets its map: the gradient flows from the input
    info = ModelInfo(arch=arch, classes=["a", "b", "c"], image_size=size, channels=channels,
                     mean=[0.5] * channels, std=[0.25] * channels)
    layer = find_target_layer(model, size, channels)
    assert min(layer.shape) >= 4 and layer.index < len(model.blocks)
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, channels), dtype=np.uint8)
    heat = gradcam(model, info, images, [0, 2])
    assert heat.shape == (2, size, size) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


def test_predict_sort_margin_and_entropy_most_uncertain_first(invoke, world, tmp_path):
    blend = tmp_path / "blend.png"
    with Image.open(world["images"][0]) as a, Image.open(world["images"][-1]) as b:
        Image.blend(a.convert("RGB"), b.convert("RGB"), 0.5).save(blend)
    inputs = [world["images"][0], blend, world["images"][-1], tmp_path / "missing.png"]
    plain, _ = predict_lines(invoke, ["-m", world["perfect"], *inputs], exit_code=1)
    assert "margin" not in plain[0]
    for key in ("margin", "entropy"):
        lines, _ = predict_lines(invoke, ["-m", world["perfect"], "--sort", key, *inputs], exit_code=1)
        good = [line for line in lines if "error" not in line]
        assert "error" in lines[-1] and len(good) == 3  # unreadable last
        values = [line[key] for line in good]
        assert values == sorted(values, reverse=key == "entropy")
        for line in good:
            probs = [t["prob"] for t in line["top_k"]]
            assert line["margin"] == pytest.approx(probs[0] - probs[1])
            assert line["entropy"] >= 0
        assert good[0]["path"] == str(blend)  # between two classes: the most worth labelling


@pytest.mark.slow  # six imgcls processes and two trainings: about 30-80 s on the 2-core CPU
def test_predict_pseudo_labelling_loop_from_the_readme_runs(tmp_path):
    import re
    import shutil

    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- pseudo-labelling loop:[^>]*-->\n```sh\n(.*?)```", readme, re.S).group(1)
    assert block.count("--epochs 5") == 2
    # the README's commands as written, with a tiny CNN that learns 16 px shapes in seconds
    block = block.replace("--epochs 5", "--epochs 12 --width 8 --depth 2 --batch-size 16 --lr 0.01")
    make_class_folder(tmp_path / "labelled", per_class=20)
    for kind in ("circle", "square", "stripe"):
        for i in range(3):
            make_image(tmp_path / "pool" / f"{kind}-{i}.png", kind, seed=500 + i)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "IMGCLS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len([p for p in proc.stdout.splitlines() if p.startswith("pool/")]) == 9  # the --sort margin listing
    pseudo = read_jsonl((tmp_path / "pseudo.jsonl").read_text())
    assert pseudo and all(r["split"] == "train" and r["pseudo"] is True for r in pseudo)
    assert "accuracy" in proc.stderr  # eval's report of the retrained model


def test_predict_option_defaults_are_the_librarys():
    """--batch-size, --workers, --device and --no-cache take imgcls.evaluation.config.PREDICT's values."""
    from imgcls.commands.predict import command
    from imgcls.evaluation.config import PREDICT

    options = {p.name: p for p in command.params}
    assert options["batch_size"].default == PREDICT.batch_size
    assert options["workers"].default == PREDICT.workers
    assert options["device"].default == PREDICT.device
    assert options["no_cache"].default is (not PREDICT.cache)
    assert "eval's default" in options["batch_size"].help


def test_predict_inference_options_are_evals(monkeypatch):
    """The options predict shares with eval are one declaration: same flags, types and --workers meaning."""
    from imgcls.commands.eval import command as eval_command
    from imgcls.commands.predict import command as predict_command
    from imgcls.evaluation import config

    shared = ("workers", "device", "cache_dir", "no_cache", "batch_size")
    ev = {p.name: p for p in eval_command.params}
    pr = {p.name: p for p in predict_command.params}
    for name in shared:
        assert ev[name].opts == pr[name].opts, name
        assert type(ev[name].type) is type(pr[name].type), name
    assert ev["workers"].help == pr["workers"].help
    assert "threads" in pr["workers"].help and "train --workers" in pr["workers"].help
    assert f"min({config.MAX_DECODE_THREADS}, CPU count)" in pr["workers"].help
    monkeypatch.setattr(config.os, "cpu_count", lambda: 64)
    assert config.default_workers() == config.MAX_DECODE_THREADS
    monkeypatch.setattr(config.os, "cpu_count", lambda: None)
    assert config.default_workers() == 1
