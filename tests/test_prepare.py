"""imgcls prepare: layouts, checks, duplicates, splits, filters, importers, errors."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_class_folder, make_image, read_jsonl


def manifest(result):
    """(header, records) of a prepare run's stdout."""
    lines = read_jsonl(result.stdout)
    assert lines and lines[0]["format"] == "imgcls-manifest", result.stderr
    return lines[0], lines[1:]


def by_path(records):
    return {r["path"]: r for r in records}


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """Every file below root (symlinks not followed) with its hash and mtime."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink():
                out[str(p)] = ("link:" + os.readlink(p), 0)
            else:
                out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    """3 classes x 8 good images plus every kind of bad, ignored and duplicate file."""
    root = make_class_folder(tmp_path / "messy", per_class=8)
    good = (root / "square" / "square_000.png").read_bytes()
    (root / "circle" / "empty.png").write_bytes(b"")
    (root / "circle" / "text.png").write_text("not an image")
    (root / "square" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "square" / "copy of square_000.png").write_bytes(good)  # duplicate within a class
    (root / "stripe" / "also_circle.png").write_bytes((root / "circle" / "circle_001.png").read_bytes())  # conflict
    (root / "stripe" / "gone.png").symlink_to(tmp_path / "missing.png")  # dangling
    (root / "README.txt").write_text("loose file")
    (root / "circle" / "notes.csv").write_text("a,b")
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(good)
    (root / "circle" / ".DS_Store").write_bytes(b"junk")
    return root


# ------------------------------------------------------------------------ basics
def test_prepare_class_folders_manifest(invoke, image_folder):
    result = invoke(["prepare", image_folder])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == ["circle", "square", "stripe"]
    assert header["root"] == str(image_folder.resolve())
    assert header["seed"] == 0 and header["val"] == 0.15 and header["test"] == 0.15
    assert header["counts"] == {"train": 24, "val": 6, "test": 6}
    assert len(records) == 36
    for r in records:
        assert Path(r["path"]).is_absolute() and Path(r["path"]).is_file()
        assert set(r) >= {"path", "label", "split", "sha256", "width", "height", "mode"}
        assert (r["width"], r["height"], r["mode"]) == (16, 16, "RGB")
        assert Path(r["path"]).parent.name == r["label"]
    # stratified: 12 per class -> 2 val, 2 test each
    per = Counter((r["label"], r["split"]) for r in records)
    for c in header["classes"]:
        assert (per[c, "train"], per[c, "val"], per[c, "test"]) == (8, 2, 2)
    assert "circle" in result.stderr and "imbalance 1.00" in result.stderr
    assert result.stdout.count("\n") == 37  # data only on stdout


def test_prepare_rejects_bad_files_and_counts_ignored(invoke, messy_folder, tmp_path):
    rejects = tmp_path / "rejects.jsonl"
    result = invoke(["prepare", messy_folder, "--rejects", rejects])
    assert result.exit_code == 0, result.stderr
    _, records = manifest(result)
    paths = by_path(records)
    rej = {Path(r["path"]).name: r for r in read_jsonl(rejects.read_text())}
    assert rej["empty.png"]["reason"] == "empty"
    assert rej["text.png"]["reason"] == "not-an-image"
    assert rej["truncated.png"]["reason"] == "truncated"
    assert rej["gone.png"]["reason"] == "dangling-symlink"
    assert rej["also_circle.png"]["reason"] == "conflicting-labels"
    assert rej["circle_001.png"]["reason"] == "conflicting-labels"
    assert all(set(r) >= {"path", "reason", "message"} for r in rej.values())
    assert len(rej) == 6
    for name in rej:
        assert not any(Path(p).name == name for p in paths)
    # 24 generated images - circle_001 (conflict) + the within-class copy
    assert len(records) == 24
    err = result.stderr
    assert "rejected 6 file(s)" in err and "truncated.png" in err
    assert "2 hidden" in err and "1 non-image" in err and "1 outside class folders" in err
    assert "different classes" in err and "labelling problem" in err


def test_prepare_quiet_keeps_only_warnings(invoke, messy_folder):
    result = invoke(["prepare", messy_folder, "-q"])
    assert result.exit_code == 0
    assert "rejected 6 file(s)" in result.stderr  # a warning survives -q
    assert "imbalance" not in result.stderr and "train" not in result.stderr


def test_prepare_duplicates_stay_in_one_split(invoke, tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=10, classes=("circle", "square"))
    for cls in ("circle", "square"):
        for k in range(4):  # four extra copies of three images per class
            src = root / cls / f"{cls}_00{k % 3}.png"
            (root / cls / "nested" / f"dup{k}").mkdir(parents=True)
            (root / cls / "nested" / f"dup{k}" / "copy.png").write_bytes(src.read_bytes())
    for seed in range(5):
        result = invoke(["prepare", root, "--seed", seed, "-q"])
        _, records = manifest(result)
        splits: dict[str, set] = {}
        for r in records:
            splits.setdefault(r["sha256"], set()).add(r["split"])
        assert all(len(s) == 1 for s in splits.values())
        assert len(records) == 28
    result = invoke(["prepare", root])
    assert "6 group(s) of identical images, 8 extra copies" in result.stderr


def test_prepare_big_duplicate_group_does_not_swallow_a_split(invoke, tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=30, classes=("circle", "square"))
    for k in range(20):
        (root / "circle" / f"copy{k}.png").write_bytes((root / "circle" / "circle_000.png").read_bytes())
    for seed in range(6):
        records = manifest(invoke(["prepare", root, "--seed", seed, "-q"]))[1]
        per = Counter((r["label"], r["split"]) for r in records)
        assert per["circle", "test"] <= 9 and per["circle", "val"] <= 9  # target round(0.15 * 50) = 8
        assert len({r["split"] for r in records if r["sha256"] == records[0]["sha256"]}) == 1


def test_prepare_dedup_keeps_one_copy(invoke, tmp_path):
    root = make_class_folder(tmp_path / "d", per_class=6, classes=("circle", "square"))
    (root / "circle" / "zz_copy.png").write_bytes((root / "circle" / "circle_000.png").read_bytes())
    rejects = tmp_path / "r.jsonl"
    result = invoke(["prepare", root, "--dedup", "--rejects", rejects])
    _, records = manifest(result)
    assert len(records) == 12
    (rej,) = read_jsonl(rejects.read_text())
    assert rej["reason"] == "duplicate" and rej["path"].endswith("zz_copy.png")


def test_prepare_presplit_layout_kept_and_leaks_removed(invoke, tmp_path):
    root = tmp_path / "pre"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        make_class_folder(root / split, per_class=n, classes=("circle", "square"))
        # make file names collide across splits but contents differ
        for cls in ("circle", "square"):
            for i in range(n):
                make_image(root / split / cls / f"{cls}_{i:03d}.png", cls, seed=hash((split, i)) % 10_000 + 50_000)
    leak = root / "train" / "circle" / "leak.png"
    leak.write_bytes((root / "test" / "circle" / "circle_000.png").read_bytes())
    rejects = tmp_path / "r.jsonl"
    result = invoke(["prepare", root, "--rejects", rejects])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert "pre-split" in header["layout"]
    for r in records:
        assert r["split"] == Path(r["path"]).parent.parent.name
    assert Counter(r["split"] for r in records) == {"train": 12, "val": 4, "test": 4}
    (rej,) = read_jsonl(rejects.read_text())
    assert rej["reason"] == "duplicate-across-splits" and rej["path"] == str(leak)


def test_prepare_presplit_without_val_draws_val_from_train(invoke, tmp_path):
    root = tmp_path / "pre"
    make_class_folder(root / "train", per_class=10, classes=("circle", "square"))
    for cls in ("circle", "square"):
        for i in range(3):
            make_image(root / "test" / cls / f"t{i}.png", cls, seed=900 + i)
    result = invoke(["prepare", root, "--val", "0.2"])
    header, records = manifest(result)
    counts = Counter((r["label"], r["split"]) for r in records)
    assert counts["circle", "val"] == 2 and counts["circle", "train"] == 8 and counts["circle", "test"] == 3
    assert all(Path(r["path"]).parent.parent.name == "train" for r in records if r["split"] == "val")
    assert "val drawn from train" in header["layout"]
    result = invoke(["prepare", root, "--val", "0"])
    assert Counter(r["split"] for r in manifest(result)[1]) == {"train": 20, "test": 6}
    resplit = invoke(["prepare", root, "--resplit", "--val", "0", "--test", "0.5"])
    assert Counter(r["split"] for r in manifest(resplit)[1]) == {"train": 12, "test": 14}  # 6.5 rounds up


def test_prepare_layout_warnings(invoke, tmp_path):
    root = make_class_folder(tmp_path / "w", per_class=3, classes=("circle", "square"))
    make_class_folder(tmp_path / "w" / "test", per_class=2, classes=("stripe",))
    (root / "empty_class").mkdir()
    (root / "empty_class" / "notes.txt").write_text("no images here")
    result = invoke(["prepare", root])
    assert result.exit_code == 0
    assert manifest(result)[0]["classes"] == ["circle", "square", "test"]
    assert "test treated as class folder" in result.stderr
    assert "empty_class: class folder holds no image files" in result.stderr


def test_prepare_nested_folders_and_strange_names(invoke, tmp_path):
    root = tmp_path / "src dir ü"
    names = ["plain.png", "with space.png", "ünïcödé 猫.png", "new\nline.png", "quote\"back\\slash.png",
             "[brackets].png"]
    for i, name in enumerate(names):
        make_image(root / "cät class" / "deep" / "er" / name, "circle", seed=i)
        make_image(root / "dog" / name, "square", seed=100 + i)
    result = invoke(["prepare", root])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == ["cät class", "dog"]
    assert len(records) == 12
    for r in records:
        assert Path(r["path"]).is_file()
    assert any(r["path"].endswith("new\nline.png") for r in records)
    assert sum(1 for line in result.stdout.splitlines() if line) == 13  # newlines escaped in JSON
    nested = [r for r in records if r["label"] == "cät class"]
    assert all("/deep/er/" in r["path"] for r in nested)


def test_prepare_symlinks_followed(invoke, tmp_path):
    root = make_class_folder(tmp_path / "s", per_class=4, classes=("circle", "square"))
    outside = make_class_folder(tmp_path / "outside", per_class=3, classes=("stripe",))
    (root / "stripe").symlink_to(outside / "stripe", target_is_directory=True)
    (root / "circle" / "linked.png").symlink_to(outside / "stripe" / "stripe_000.png")  # conflicting content!
    (root / "square" / "loop").symlink_to(root / "square", target_is_directory=True)
    extra = make_image(tmp_path / "elsewhere" / "img.png", "square", seed=77)
    (root / "square" / "extra.png").symlink_to(extra)
    result = invoke(["prepare", root, "--val", "0", "--test", "0"])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == ["circle", "square", "stripe"]
    paths = by_path(records)
    assert str(root / "square" / "extra.png") in paths  # the link's own path is recorded
    assert Counter(r["label"] for r in records) == {"circle": 4, "square": 5, "stripe": 2}
    assert "conflicting-labels" in result.stderr


def test_prepare_exif_orientation_and_modes(invoke, tmp_path):
    root = make_class_folder(tmp_path / "e", per_class=2, classes=("circle", "square"))
    img = Image.new("RGB", (20, 10), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(root / "circle" / "rotated.jpg", exif=exif)
    make_image(root / "square" / "grey.png", "square", mode="L")
    result = invoke(["prepare", root])
    records = by_path(manifest(result)[1])
    rotated = records[str(root / "circle" / "rotated.jpg")]
    assert (rotated["width"], rotated["height"]) == (10, 20)
    assert records[str(root / "square" / "grey.png")]["mode"] == "L"


def test_prepare_rejects_decompression_bomb(invoke, tmp_path):
    root = make_class_folder(tmp_path / "b", per_class=2, classes=("circle", "square"))
    Image.new("1", (9500, 9500)).save(root / "circle" / "bomb.png")  # 90 Mpx, a few KB on disk
    rejects = tmp_path / "r.jsonl"
    result = invoke(["prepare", root, "--rejects", rejects])
    assert result.exit_code == 0
    (rej,) = read_jsonl(rejects.read_text())
    assert rej["reason"] == "decompression-bomb"


# ------------------------------------------------------------------------ splits
def test_prepare_deterministic_and_content_based(invoke, tmp_path):
    root = make_class_folder(tmp_path / "a", per_class=20, classes=("circle", "square"))
    first = invoke(["prepare", root]).stdout
    assert invoke(["prepare", root]).stdout == first
    other_seed = invoke(["prepare", root, "--seed", "1"]).stdout
    split_of = lambda text: {r["sha256"]: r["split"] for r in read_jsonl(text)[1:]}  # noqa: E731
    assert split_of(other_seed) != split_of(first)
    # Renaming files and moving the folder does not move images between splits.
    moved = tmp_path / "moved"
    root.rename(moved)
    for p in sorted(moved.rglob("*.png")):
        p.rename(p.with_name("renamed_" + p.stem[::-1] + ".png"))
    assert split_of(invoke(["prepare", moved]).stdout) == split_of(first)


def test_prepare_adding_a_class_keeps_other_splits(invoke, tmp_path):
    root = make_class_folder(tmp_path / "a", per_class=15, classes=("circle", "square"))
    before = {r["sha256"]: r["split"] for r in manifest(invoke(["prepare", root]))[1]}
    make_class_folder(root, per_class=9, classes=("stripe",))
    after = {r["sha256"]: r["split"] for r in manifest(invoke(["prepare", root]))[1]}
    assert all(after[h] == s for h, s in before.items())


def test_prepare_counts_instead_of_fractions(invoke, tmp_path):
    root = make_class_folder(tmp_path / "a", per_class=10, classes=("circle", "square"))
    make_class_folder(root, per_class=20, classes=("stripe",))
    header, records = manifest(invoke(["prepare", root, "--val", "4", "--test", "8"]))
    per = Counter((r["label"], r["split"]) for r in records)
    assert sum(per[c, "test"] for c in header["classes"]) == 8
    assert sum(per[c, "val"] for c in header["classes"]) == 4
    assert per["stripe", "test"] == 4 and per["circle", "test"] == 2  # proportional to class size
    assert header["val"] == 4 and header["test"] == 8


def test_prepare_tiny_classes_never_crash(invoke, tmp_path):
    root = make_class_folder(tmp_path / "t", per_class=10, classes=("circle",))
    make_class_folder(root, per_class=1, classes=("square",))
    make_class_folder(root, per_class=2, classes=("stripe",))
    make_class_folder(root, per_class=3, classes=("tri",))
    result = invoke(["prepare", root, "--folds", "3"])
    assert result.exit_code == 0, result.stderr
    per = Counter((r["label"], r["split"]) for r in manifest(result)[1])
    assert per["square", "train"] == 1 and per["square", "test"] == 0 and per["square", "val"] == 0
    assert (per["stripe", "train"], per["stripe", "test"], per["stripe", "val"]) == (1, 1, 0)
    assert (per["tri", "train"], per["tri", "test"], per["tri", "val"]) == (1, 1, 1)
    assert "too small to appear in val" in result.stderr
    only_val = invoke(["prepare", root, "--test", "0", "-q"])
    per = Counter((r["label"], r["split"]) for r in manifest(only_val)[1])
    assert (per["stripe", "train"], per["stripe", "val"]) == (1, 1)


def test_prepare_folds(invoke, tmp_path):
    root = make_class_folder(tmp_path / "f", per_class=16, classes=("circle", "square"))
    (root / "circle" / "dupe.png").write_bytes((root / "circle" / "circle_003.png").read_bytes())
    header, records = manifest(invoke(["prepare", root, "--folds", "4", "--val", "0"]))
    assert header["folds"] == 4
    pool = [r for r in records if r["split"] == "train"]
    assert all(r["fold"] in range(4) for r in pool)
    assert all("fold" not in r for r in records if r["split"] == "test")
    per = Counter((r["label"], r["fold"]) for r in pool)
    for cls in ("circle", "square"):
        sizes = [per[cls, f] for f in range(4)]
        assert max(sizes) - min(sizes) <= 2 and min(sizes) >= 2  # stratified
    folds_of = {}
    for r in pool:
        folds_of.setdefault(r["sha256"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds_of.values())


def test_prepare_class_filters(invoke, tmp_path):
    root = tmp_path / "c"
    for k, (name, n) in enumerate((("aa", 3), ("bb", 6), ("cc", 12), ("dd", 12))):
        for i in range(n):
            make_image(root / name / f"{i}.png", "stripe", seed=100 * k + i)
    top = manifest(invoke(["prepare", root, "--top", "2"]))[0]
    assert top["classes"] == ["cc", "dd"]
    result = invoke(["prepare", root, "--min-per-class", "5", "-v"])
    assert manifest(result)[0]["classes"] == ["bb", "cc", "dd"]
    assert "dropped class 'aa'" in result.stderr
    assert manifest(invoke(["prepare", root, "--min-per-class", "5", "--top", "1"]))[0]["classes"] == ["cc"]
    chosen = manifest(invoke(["prepare", root, "--classes", "dd,aa"]))
    assert chosen[0]["classes"] == ["dd", "aa"] and {r["label"] for r in chosen[1]} == {"aa", "dd"}


def test_prepare_max_per_class_caps_train_only_and_nests(invoke, tmp_path):
    root = make_class_folder(tmp_path / "m", per_class=20, classes=("circle", "square"))
    full = manifest(invoke(["prepare", root]))[1]
    kept = {}
    for n in (2, 5, 9):
        header, records = manifest(invoke(["prepare", root, "--max-per-class", n]))
        per = Counter((r["label"], r["split"]) for r in records)
        assert per["circle", "train"] == n and per["square", "train"] == n
        assert header["max_per_class"] == n
        held = lambda rs: sorted((r["sha256"], r["split"]) for r in rs if r["split"] != "train")  # noqa: E731
        assert held(records) == held(full)
        kept[n] = {r["sha256"] for r in records if r["split"] == "train"}
    assert kept[2] <= kept[5] <= kept[9]


# ------------------------------------------------------------------------ manifests as input
def test_prepare_manifests_merged_filtered_resplit(invoke, tmp_path):
    a = make_class_folder(tmp_path / "a", per_class=10, classes=("circle", "square"))
    b = make_class_folder(tmp_path / "b", per_class=10, classes=("stripe",))
    ma, mb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert invoke(["prepare", a, "-o", ma, "-q"]).exit_code == 0
    assert invoke(["prepare", b, "-o", mb, "-q", "--relative"]).exit_code == 0
    # an unknown field and a derived-image provenance field pass through
    lines = ma.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["note"] = {"reviewed": True}
    lines[1] = json.dumps(rec)
    ma.write_text("\n".join(lines) + "\n")
    result = invoke(["prepare", ma, mb])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == ["circle", "square", "stripe"]
    assert len(records) == 30
    original = {r["path"]: r["split"] for r in read_jsonl(ma.read_text())[1:]}
    for r in records:
        assert Path(r["path"]).is_file()
        if r["path"] in original:
            assert r["split"] == original[r["path"]]  # splits kept
    noted = [r for r in records if "note" in r]
    assert len(noted) == 1 and noted[0]["note"] == {"reviewed": True}
    assert header["root"] == str(tmp_path)
    resplit = manifest(invoke(["prepare", ma, mb, "--resplit", "--test", "0.5", "--val", "0"]))[1]
    assert Counter(r["split"] for r in resplit) == {"train": 15, "test": 15}
    filtered = manifest(invoke(["prepare", ma, mb, "--classes", "stripe"]))[0]
    assert filtered["classes"] == ["stripe"]


def test_prepare_reads_headerless_stdin(invoke, image_folder):
    text = invoke(["prepare", image_folder, "-q"]).stdout
    test_only = "".join(line + "\n" for line in text.splitlines()[1:] if '"split":"test"' in line)
    result = invoke(["prepare", "-", "--val", "0", "--test", "0"], input=test_only)
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert len(records) == 6 and {r["split"] for r in records} == {"test"}


def test_prepare_relative_paths_resolve_against_root(invoke, image_folder, tmp_path):
    from imgcls.manifest import ManifestReader

    out = tmp_path / "elsewhere" / "m.jsonl"
    assert invoke(["prepare", image_folder, "--relative", "-o", out]).exit_code == 0
    reader = ManifestReader(out)
    records = list(reader)
    assert all(not Path(r["path"]).is_absolute() for r in records)
    assert all(reader.resolve(r).is_file() for r in records)


# ------------------------------------------------------------------------ safety and errors
def test_prepare_never_modifies_user_files(invoke, messy_folder, tmp_path):
    before = tree_digest(messy_folder)
    result = invoke(["prepare", messy_folder, "--folds", "3", "--dedup", "-o", tmp_path / "m.jsonl",
                     "--rejects", tmp_path / "r.jsonl"])
    assert result.exit_code == 0
    assert tree_digest(messy_folder) == before


def test_prepare_output_is_atomic(invoke, image_folder, tmp_path):
    out = tmp_path / "m.jsonl"
    rejects = tmp_path / "r.jsonl"
    result = invoke(["prepare", image_folder, "--classes", "nope", "-o", out, "--rejects", rejects])
    assert result.exit_code == 2
    result = invoke(["prepare", image_folder, "--min-per-class", "100", "-o", out])
    assert result.exit_code == 1
    assert not out.exists() and not rejects.exists()
    assert list(tmp_path.iterdir()) == [image_folder]  # no temporary files left behind
    out.write_text("previous\n")
    assert invoke(["prepare", tmp_path / "missing", "-o", out]).exit_code == 1
    assert out.read_text() == "previous\n"  # an old output survives a failed run
    assert invoke(["prepare", image_folder, "-o", out, "-q"]).exit_code == 0
    assert read_jsonl(out.read_text())[0]["format"] == "imgcls-manifest"


@pytest.mark.parametrize("args, code, message", [
    (["MISSING"], 1, "no such file or folder"),
    (["EMPTY"], 1, "folder is empty"),
    (["FLAT"], 1, "no class folders"),
    (["IMAGE"], 1, "is an image"),
    (["NOTMANIFEST"], 1, "not valid JSON"),
    (["PRESPLITFLAT"], 1, "without class folders"),
    (["ALLBAD"], 1, "no usable images"),
    (["GOOD", "--val", "1.5"], 2, "neither a fraction below 1 nor a whole count"),
    (["GOOD", "--val", "-0.1"], 2, "must be a fraction"),
    (["GOOD", "--test", "lots"], 2, "not a number"),
    (["GOOD", "--val", "0.6", "--test", "0.6"], 2, "nothing is left to train on"),
    (["GOOD", "--val", "200"], 1, "asks for at least as many images"),
    (["GOOD", "--classes", "circle,sqare"], 2, "did you mean 'square'"),
    (["GOOD", "--classes", "circle,,square"], 2, "non-empty"),
    (["GOOD", "--folds", "1"], 2, "--folds"),
    (["GOOD", "--top", "0"], 2, "--top"),
    (["GOOD", "--min-per-class", "50"], 1, "no class has at least"),
    (["GOOD", "--force"], 2, "--force only applies"),
    (["GOOD", "--class-names", "a,b"], 2, "only apply to --import"),
    (["--sample", "digits", "A", "B"], 2, "exactly one argument"),
    (["--import", "idx", "A"], 2, "then DEST"),
    (["--sample", "digits", "--import", "idx", "A", "B"], 2, "cannot be combined"),
])
def test_prepare_errors_are_one_line(invoke, tmp_path, image_folder, args, code, message):
    (tmp_path / "empty").mkdir()
    make_image(tmp_path / "flat" / "a.png")
    make_image(tmp_path / "img.png")
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "allbad" / "cls").mkdir(parents=True)
    (tmp_path / "allbad" / "cls" / "x.png").write_bytes(b"")
    make_image(tmp_path / "presplit" / "train" / "a.png")
    names = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty", "FLAT": tmp_path / "flat",
             "IMAGE": tmp_path / "img.png", "NOTMANIFEST": tmp_path / "bad.jsonl", "ALLBAD": tmp_path / "allbad",
             "PRESPLITFLAT": tmp_path / "presplit", "GOOD": image_folder}
    result = invoke(["prepare", *[names.get(a, a) for a in args]])
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1


def test_prepare_single_class_warns(invoke, tmp_path):
    root = make_class_folder(tmp_path / "one", per_class=5, classes=("circle",))
    result = invoke(["prepare", root])
    assert result.exit_code == 0
    assert "only one class" in result.stderr


def test_prepare_does_not_import_torch(tmp_path, image_folder):
    code = (
        "import sys\n"
        "from imgcls.cli import cli\n"
        f"cli.main(['prepare', {str(image_folder)!r}, '-q', '-o', {str(tmp_path / 'm.jsonl')!r}], "
        "standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'prepare imported torch'\n"
        "assert 'torchvision' not in sys.modules\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


# ------------------------------------------------------------------------ library
def test_prepare_parallel_check_matches_in_process(tmp_path, monkeypatch):
    from imgcls import prepare as prep

    root = make_class_folder(tmp_path / "p", per_class=10, size=8, classes=("circle", "square"))
    (root / "circle" / "bad.png").write_bytes(b"nope")
    paths = sorted(str(p) for p in root.rglob("*.png"))
    serial, used = prep.check_files(paths, jobs=1)
    assert used == 1
    monkeypatch.setattr(prep, "PARALLEL_MIN_FILES", 0)
    parallel, used = prep.check_files(paths, jobs=2)
    assert used == 2 and parallel == serial
    assert sum(r[0] == "rejected" for r in serial) == 1


def test_prepare_library_api(tmp_path):
    from imgcls.prepare import PrepareOptions, parse_size, prepare

    root = make_class_folder(tmp_path / "l", per_class=6, classes=("circle", "square"))
    result = prepare([root], PrepareOptions(val=0, test=parse_size("2"), seed=3))
    assert result.classes == ["circle", "square"]
    assert Counter(r["split"] for r in result.records) == {"train": 10, "test": 2}
    assert parse_size("0.25") == 0.25 and parse_size("3") == 3 and parse_size("0") == 0
    with pytest.raises(ValueError):
        parse_size("2.5")


# ------------------------------------------------------------------------ sample and importers
def test_prepare_sample_digits(invoke, tmp_path):
    dest = tmp_path / "digits"
    result = invoke(["prepare", "--sample", "digits", dest])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == [str(d) for d in range(10)]
    assert header["source"] == "sample:digits"
    assert len(records) == 1797
    assert {(r["width"], r["height"], r["mode"]) for r in records} == {(8, 8, "L")}
    assert Counter(r["split"] for r in records)["test"] == 269
    img = np.asarray(Image.open(records[0]["path"]))
    assert img.dtype == np.uint8 and img.max() > 200  # 0..16 scaled to 0..255
    assert (dest / ".imgcls-import.json").is_file()
    # a second run reuses the import; a foreign non-empty folder is refused
    again = invoke(["prepare", "--sample", "digits", dest, "-q"])
    assert again.exit_code == 0 and again.stdout == result.stdout
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("precious")
    refused = invoke(["prepare", "--sample", "digits", other])
    assert refused.exit_code == 2 and "not empty" in refused.stderr
    assert sorted(p.name for p in other.iterdir()) == ["mine.txt"]
    forced = invoke(["prepare", "--sample", "digits", other, "--force", "-q"])
    assert forced.exit_code == 0 and (other / "mine.txt").read_text() == "precious"


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    data = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_idx_set(folder: Path, compress: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", 12), ("t10k", 6)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 256, (n, 6, 5)).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return folder


@pytest.mark.parametrize("compress", [True, False])
def test_prepare_import_idx(invoke, tmp_path, compress):
    src = make_idx_set(tmp_path / "idx", compress)
    dest = tmp_path / "out"
    files = sorted(src.iterdir())
    result = invoke(["prepare", "--import", "idx", *files, dest, "--val", "0.25"])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == ["0", "1", "2"]
    assert Counter(r["split"] for r in records) == {"train": 9, "val": 3, "test": 6}
    assert {(r["width"], r["height"], r["mode"]) for r in records} == {(5, 6, "L")}
    assert sorted(p.name for p in dest.iterdir()) == [".imgcls-import.json", "test", "train"]
    # pixel values survive the round trip
    first = dest / "train" / "0" / "00000.png"
    raw = gzip.decompress(files[2].read_bytes()) if compress else files[2].read_bytes()
    assert np.array_equal(np.asarray(Image.open(first)), np.frombuffer(raw[16:16 + 30], np.uint8).reshape(6, 5))
    named = invoke(["prepare", "--import", "idx", "--class-names", "emu,cat,dog", src, tmp_path / "named", "-q"])
    header, records = manifest(named)
    assert header["classes"] == ["emu", "cat", "dog"]  # the dataset's label order: class index = IDX label
    assert {r["label"] for r in records if "/00000.png" in r["path"]} == {"emu"}
    preset = invoke(["prepare", "--import", "idx", "--class-names", "fashion-mnist", src, tmp_path / "fm", "-q"])
    assert manifest(preset)[0]["classes"] == ["tshirt_top", "trouser", "pullover"]


def test_prepare_import_idx_errors(invoke, tmp_path):
    src = make_idx_set(tmp_path / "idx", True)
    truncated = tmp_path / "trunc"
    truncated.mkdir()
    data = gzip.decompress((src / "train-images-idx3-ubyte.gz").read_bytes())
    (truncated / "train-images-idx3-ubyte").write_bytes(data[:-7])
    (truncated / "train-labels-idx1-ubyte.gz").write_bytes((src / "train-labels-idx1-ubyte.gz").read_bytes())
    result = invoke(["prepare", "--import", "idx", truncated, tmp_path / "o1"])
    assert result.exit_code == 1 and "truncated" in result.stderr
    result = invoke(["prepare", "--import", "idx", src / "train-images-idx3-ubyte.gz", tmp_path / "o2"])
    assert result.exit_code == 1 and "no matching labels" in result.stderr
    result = invoke(["prepare", "--import", "idx", "--class-names", "a,b", src, tmp_path / "o3"])
    assert result.exit_code == 2 and "only 2 class names" in result.stderr
    (tmp_path / "junk-idx.gz").write_bytes(b"\x1f\x8b garbage")
    result = invoke(["prepare", "--import", "idx", tmp_path / "junk-idx.gz", tmp_path / "o4"])
    assert result.exit_code == 1 and "gzip" in result.stderr
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left


def write_cifar(folder: Path, protocol: int, cifar100: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def batch(n):
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        if cifar100:
            return {b"data": data, b"fine_labels": [i % 4 for i in range(n)],
                    b"coarse_labels": [i % 2 for i in range(n)], b"filenames": [b"x.png"] * n}
        return {b"data": data, b"labels": [i % 3 for i in range(n)], b"batch_label": b"tiny"}

    if cifar100:
        files = {"train": batch(8), "test": batch(4),
                 "meta": {b"fine_label_names": [b"apple", b"bee", b"cup", b"dog"],
                          b"coarse_label_names": [b"fruit", b"other"]}}
    else:
        files = {"data_batch_1": batch(6), "data_batch_2": batch(6), "test_batch": batch(3),
                 "batches.meta": {b"label_names": [b"cat", b"dog", b"emu"], b"num_vis": 3072}}
    for name, obj in files.items():
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_prepare_import_cifar10(invoke, tmp_path, protocol):
    src = write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    dest = tmp_path / "out"
    result = invoke(["prepare", "--import", "cifar", src, dest, "--val", "0"])
    assert result.exit_code == 0, result.stderr
    header, records = manifest(result)
    assert header["classes"] == ["cat", "dog", "emu"]
    assert Counter(r["split"] for r in records) == {"train": 12, "test": 3}
    assert {(r["width"], r["height"], r["mode"]) for r in records} == {(32, 32, "RGB")}
    batch = pickle.loads((src / "data_batch_1").read_bytes())
    first = np.asarray(Image.open(dest / "train" / "cat" / "00000.png"))
    assert np.array_equal(first, batch[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))
    (src / "batches.meta").unlink()  # without a meta file CIFAR-10 batches get CIFAR-10's names
    bare = invoke(["prepare", "--import", "cifar", src / "data_batch_1", tmp_path / "bare", "-q"])
    assert manifest(bare)[0]["classes"] == ["airplane", "automobile", "bird"]


def test_prepare_import_cifar100_archive_and_coarse(invoke, tmp_path):
    src = write_cifar(tmp_path / "cifar-100-python", 2, cifar100=True)
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")
    fine = invoke(["prepare", "--import", "cifar", archive, tmp_path / "fine", "-q"])
    assert fine.exit_code == 0, fine.stderr
    assert manifest(fine)[0]["classes"] == ["apple", "bee", "cup", "dog"]
    coarse = invoke(["prepare", "--import", "cifar", "--coarse", src, tmp_path / "coarse", "-q"])
    assert manifest(coarse)[0]["classes"] == ["fruit", "other"]
    assert len(manifest(coarse)[1]) == 12


class _Evil:
    def __reduce__(self):
        return (os.mkdir, ("PWNED_BY_PICKLE",))


def test_prepare_import_cifar_refuses_code_in_pickles(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "evil"
    src.mkdir()
    (src / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    result = invoke(["prepare", "--import", "cifar", src, tmp_path / "out"])
    assert result.exit_code == 1
    assert "refusing to load" in result.stderr and "mkdir" in result.stderr
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()
    (src / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}))
    result = invoke(["prepare", "--import", "cifar", src, tmp_path / "out"])
    assert result.exit_code == 1 and "N x 3072 uint8" in result.stderr


def test_prepare_restricted_unpickler_allows_only_numpy_arrays():
    from imgcls.errors import DataError
    from imgcls.importers import load_pickle_restricted

    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for protocol in (2, 4, 5):
        out = load_pickle_restricted(pickle.dumps({"a": arr, "b": [1, "x", b"y"]}, protocol=protocol), "t")
        assert np.array_equal(out["a"], arr) and out["b"] == [1, "x", b"y"]
    for obj in (Counter(), io.BytesIO(b""), np.float32(1.0)):
        with pytest.raises(DataError, match="refusing to load"):
            load_pickle_restricted(pickle.dumps(obj), "t")
