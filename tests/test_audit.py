"""imgcls audit through the CLI on tiny data: planted label errors and copies are found, the output
composes with jq and train, files are never touched, bad input gives one-line errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_jsonl

pytest.importorskip("cleanlab")

CLASSES = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}


def _image(path: Path, colour, seed: int, size: int = 16) -> Path:
    """A random texture tinted by the class colour: every image differs, the class is its colour."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (4, 4, 1))
    texture = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
    img = texture * np.array(colour) + (1 - texture) * 255 * rng.uniform(0.2, 0.8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8), "RGB").save(path)
    return path


@pytest.fixture
def audit_data(tmp_path: Path):
    """30 images per class with splits; two flipped labels; a re-encoded, resized copy of a test image in train."""
    records = []
    for ci, (name, colour) in enumerate(CLASSES.items()):
        for i in range(30):
            p = _image(tmp_path / "img" / name / f"{i:03d}.png", colour, ci * 100 + i)
            split = "test" if i < 5 else "val" if i < 9 else "train"
            records.append({"path": str(p), "label": name, "split": split})
    flipped = {records[12]["path"]: "red", records[45]["path"]: "green"}
    records[12]["label"], records[45]["label"] = "green", "blue"
    original = records[33]["path"]  # a green test image
    copy = tmp_path / "img" / "green" / "copy.jpg"
    with Image.open(original) as img:
        img.resize((19, 19)).save(copy, quality=70)
    records.append({"path": str(copy), "label": "green", "split": "train"})
    header = {"format": "imgcls-manifest", "version": "1.0", "classes": list(CLASSES)}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))
    return {"manifest": manifest, "flipped": flipped, "copy": str(copy), "original": original, "records": records}


FAST = ["--arch", "cnn", "--max-label-score", "0.5"]  # a random tiny backbone: fast, confident enough for colours


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() + str(p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_audit_finds_flipped_labels_and_leaking_copy(invoke, audit_data, tmp_path):
    before = _digest(tmp_path / "img")
    result = invoke(["audit", audit_data["manifest"], *FAST, "--json", tmp_path / "doc.json",
                     "--html", tmp_path / "page.html", "--sheet", tmp_path / "sheet.png"])
    assert result.exit_code == 0, result.output
    lines = read_jsonl(result.stdout)
    header, records = lines[0], lines[1:]
    assert header["audited"]["checks"] == ["labels", "duplicates", "outliers", "ambiguous"]
    assert [r["path"] for r in records] == [r["path"] for r in audit_data["records"]]
    by_path = {r["path"]: r for r in records}
    for path, truth in audit_data["flipped"].items():
        finding = by_path[path]["audit"]
        assert "label" in finding["issues"]
        assert finding["label"]["suggested"] == truth and finding["label"]["given"] != truth
        assert 0 <= finding["label"]["score"] < 0.5
    dup = by_path[audit_data["copy"]]["audit"]["duplicate"]
    assert dup["of"] == audit_data["original"] and dup["leak"] is True and dup["split"] == "test"
    assert "audit" not in by_path[audit_data["original"]]  # the held-out copy is the one kept
    flagged = [r for r in records if "audit" in r]
    assert len(flagged) <= 6, [r["audit"] for r in flagged]  # few false alarms on clean images
    doc = json.loads((tmp_path / "doc.json").read_text())
    assert doc["counts"]["label"] == len(doc["labels"]["issues"]) >= 2
    assert doc["leakage"][0]["kept"] == audit_data["original"]
    page = (tmp_path / "page.html").read_text()
    start = page.index('id="imgcls-audit-data">') + len('id="imgcls-audit-data">')
    assert json.loads(page[start:page.index("</script>", start)]) == doc
    assert "Content-Security-Policy" in page and "data:image/png;base64," in page
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 0
    assert "leakage:" in result.stderr and "suspected label errors" in result.stderr
    assert _digest(tmp_path / "img") == before  # the user's files are never modified


def test_audit_clean_part_trains_through_jq(audit_data, tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    bin_dir = Path(sys.executable).parent
    cmd = (f"{bin_dir}/imgcls audit {audit_data['manifest']} {' '.join(FAST)} --cache-dir {tmp_path / 'c'} "
           f"| jq -c 'select(.audit == null)' "
           f"| {bin_dir}/imgcls train --arch cnn --epochs 1 --width 4 --depth 1 --out {tmp_path / 'run'} "
           f"--cache-dir {tmp_path / 'c'} > {tmp_path / 'trained.jsonl'}")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = read_jsonl((tmp_path / "trained.jsonl").read_text())
    assert lines[0]["format"] == "imgcls-manifest" and "model" in lines[0]  # the header passed the filter
    paths = {r["path"] for r in lines[1:]}
    assert audit_data["copy"] not in paths and not paths & set(audit_data["flipped"])
    assert (tmp_path / "run" / "model.safetensors").exists()


def test_audit_then_prepare_exclude_drops_suspects(invoke, audit_data, tmp_path):
    result = invoke(["audit", audit_data["manifest"], *FAST, "-o", tmp_path / "audited.jsonl"])
    assert result.exit_code == 0, result.output
    lines = read_jsonl((tmp_path / "audited.jsonl").read_text())
    suspects = tmp_path / "suspects.jsonl"
    suspects.write_text("".join(json.dumps(r) + "\n" for r in lines[1:] if "audit" in r))
    result = invoke(["prepare", audit_data["manifest"], "--exclude", suspects])
    assert result.exit_code == 0, result.output
    kept = {r["path"] for r in read_jsonl(result.stdout)[1:]}
    assert audit_data["copy"] not in kept and not kept & set(audit_data["flipped"])
    assert len(kept) == len(audit_data["records"]) - len(read_jsonl(suspects.read_text()))
    assert "--exclude: left out" in result.stderr
    # a plain list of paths works too, and unmatched entries are counted
    listed = tmp_path / "bad.txt"
    listed.write_text(audit_data["copy"] + "\n" + str(tmp_path / "nowhere.png") + "\n")
    result = invoke(["prepare", audit_data["manifest"], "--exclude", listed])
    assert result.exit_code == 0
    assert "left out 1 image(s); 1 listed path(s) matched no input image" in result.stderr
    result = invoke(["prepare", audit_data["manifest"], "--exclude", tmp_path / "missing.jsonl"])
    assert result.exit_code == 1 and "--exclude" in result.stderr and "no such file" in result.stderr


def test_audit_checks_and_reaudit_replace_findings(invoke, audit_data, tmp_path):
    result = invoke(["audit", audit_data["manifest"], "--arch", "cnn", "--checks", "duplicates",
                     "-o", tmp_path / "d.jsonl"])
    assert result.exit_code == 0, result.output
    lines = read_jsonl((tmp_path / "d.jsonl").read_text())
    issues = {i for r in lines[1:] for i in r.get("audit", {}).get("issues", [])}
    assert issues == {"duplicate"}
    again = invoke(["audit", tmp_path / "d.jsonl", "--arch", "cnn", "--checks", "outliers"])
    assert again.exit_code == 0, again.output
    assert not any("duplicate" in r.get("audit", {}) for r in read_jsonl(again.stdout)[1:])


def test_audit_bad_input_one_line_errors(invoke, audit_data, tmp_path):
    out = tmp_path / "out.jsonl"
    cases = [
        (["audit", tmp_path / "none.jsonl"], 1, "no such manifest file"),
        (["audit", audit_data["manifest"], "--model-probs"], 2, "--model-probs needs --model"),
        (["audit", audit_data["manifest"], "--checks", "labels,colour"], 2, "colour"),
        (["audit", audit_data["manifest"], "--model", tmp_path / "nothing.safetensors", "--arch", "cnn"], 1,
         "no such model file"),
        (["audit", audit_data["manifest"], "--arch", "mobilenet_v2", "--weights", tmp_path / "w.safetensors"], 1,
         "no such weights file"),
    ]
    for args, code, message in cases:
        result = invoke([*args, "-o", out])
        assert result.exit_code == code, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert not out.exists()
    Path(audit_data["records"][3]["path"]).write_bytes(b"not a png")
    result = invoke(["audit", audit_data["manifest"], "--arch", "cnn", "-o", out, "--no-cache"])
    assert result.exit_code == 1 and "cannot read image" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3 and not out.exists()


def test_audit_without_cleanlab_names_the_extra(invoke, audit_data, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cleanlab(name, *args, **kwargs):
        if name.startswith("cleanlab"):
            raise ImportError("No module named 'cleanlab'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cleanlab)
    result = invoke(["audit", audit_data["manifest"], "--arch", "cnn"])
    assert result.exit_code == 1 and "imgcls[audit]" in result.stderr
    ok = invoke(["audit", audit_data["manifest"], "--arch", "cnn", "--checks", "duplicates,outliers"])
    assert ok.exit_code == 0, ok.output


def test_audit_duplicates_register_crops_and_resizes_but_not_lookalikes(tmp_path):
    """The verification step on its own: a cropped, resized JPEG copy is found; the same picture made brighter,
    or changed only in hue (the same grey image), is not a copy."""
    from scipy.ndimage import gaussian_filter

    from imgcls.audit.duplicates import colour_loader, find_duplicates, grey_thumbnails

    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):  # smooth colour textures, mid-grey so that nothing clips below
        a = gaussian_filter(rng.normal(0, 1, (48, 48, 3)), (3, 3, 0))
        a = 125 + 50 * a / a.std()
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB").save(paths[-1])
    with Image.open(paths[0]) as img:  # crop 5 % (3 % left, 2 % right), 4 % from the top; resize by 0.8; JPEG 70
        img.crop((1, 2, 47, 48)).resize((37, 37), Image.BICUBIC).save(tmp_path / "copy.jpg", quality=70)
    base = np.asarray(Image.open(paths[1]), dtype=np.float64)
    Image.fromarray(np.clip(base + 30, 0, 255).astype(np.uint8), "RGB").save(tmp_path / "brighter.png")
    hue = np.asarray(Image.open(paths[2]), dtype=np.float64)
    shift = np.where(np.arange(48)[None, :, None] < 24, 1.0, -1.0) * np.array([40.0, -40 * 0.299 / 0.587, 0.0])
    Image.fromarray(np.clip(hue + shift, 0, 255).astype(np.uint8), "RGB").save(tmp_path / "hue.png")  # same grey
    paths += [tmp_path / "copy.jpg", tmp_path / "brighter.png", tmp_path / "hue.png"]
    names = [str(p) for p in paths]
    gray = grey_thumbnails(paths, None)
    unit = rng.normal(size=(len(paths), 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    found = find_duplicates(gray, unit, None, [None] * len(paths), ["train"] * len(paths), names,
                            max_residual=0.02, colour=colour_loader(names))
    assert [(a, b) for a, b, _, _ in found.pairs] == [(0, 12)], found.pairs
    assert found.keeper[12] == 0 and found.pairs[0][2] < 0.02
    without_colour = find_duplicates(gray, unit, None, [None] * len(paths), ["train"] * len(paths), names,
                                     max_residual=0.02)
    assert (2, 14) in [(a, b) for a, b, _, _ in without_colour.pairs]  # the grey images alone cannot tell


def _garment(path: Path, shape: str, seed: int, side: int = 40) -> Path:
    """Grey 'garments' on black: every image of a class has the same silhouette and brightness, and only a
    faint smooth texture of its own (the near-identical look-alikes of Fashion-MNIST a hash pairs)."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
    mask = (xx ** 2 / 0.12 + yy ** 2 / 0.18 < 1) if shape == "ellipse" else (abs(xx) < 0.3) & (abs(yy) < 0.4)
    texture = gaussian_filter(np.random.default_rng(seed).normal(0, 1, (side, side)), 2.5)
    img = np.where(mask, 150 + 25 * texture / texture.std(), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(path)
    return path


def test_audit_duplicates_find_a_cropped_resized_jpeg_copy_not_a_same_class_lookalike(invoke, tmp_path):
    records = []
    for shape in ("ellipse", "box"):
        for i in range(12):
            p = _garment(tmp_path / shape / f"{i:02d}.png", shape, seed=(0 if shape == "ellipse" else 100) + i)
            records.append({"path": str(p), "label": shape, "split": "test" if i < 3 else "train"})
    original = records[0]["path"]
    copy = tmp_path / "ellipse" / "copy.jpg"
    with Image.open(original) as img:  # crop 5 % of the width (2 px left), 2.5 % of the height; resize by 1.2; JPEG 70
        img.crop((2, 1, 40, 40)).resize((46, 47), Image.BICUBIC).save(copy, quality=70)
    records.append({"path": str(copy), "label": "ellipse", "split": "train"})
    manifest = tmp_path / "m.jsonl"
    header = {"format": "imgcls-manifest", "version": "1.0", "classes": ["ellipse", "box"]}
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))
    result = invoke(["audit", manifest, "--arch", "cnn", "--checks", "duplicates", "--json", tmp_path / "d.json"])
    assert result.exit_code == 0, result.output
    flagged = {r["path"]: r["audit"] for r in read_jsonl(result.stdout)[1:] if "audit" in r}
    assert list(flagged) == [str(copy)], flagged  # no other image of the class is anyone's copy
    dup = flagged[str(copy)]["duplicate"]
    assert dup["of"] == original and dup["leak"] is True and dup["residual"] < 0.02
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["duplicates"]["candidates"] >= 12  # the look-alikes were compared, and rejected
