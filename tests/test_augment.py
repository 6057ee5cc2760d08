"""imgcls augment: the ops library, presets, --ops syntax, copies, balancing, safety, no torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import make_image, read_jsonl
from imgcls import augment as A
from imgcls.errors import DataError, UsageProblem

ALL_OPS = list(A.OP_DEFS)


def tiny(mode: str = "RGB", size: int = 16, seed: int = 0) -> Image.Image:
    """A small image with structure (a shape on a background, plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 4) ** 2
    a = np.where(mask[..., None], (200, 60, 40), (30, 90, 160)) + rng.normal(0, 10, (size, size, 3))
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    return img.convert(mode) if mode != "RGB" else img


def px(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def write_manifest(tmp: Path, per_class: dict[str, int], splits=("train",), header=True, mode="RGB",
                   labels: dict[str, str] | None = None) -> Path:
    """Images for each class (cycling through ``splits``) and a manifest naming them."""
    records = []
    kinds = ["circle", "square", "stripe"]
    for ci, (cls, n) in enumerate(per_class.items()):
        for i in range(n):
            path = make_image(tmp / "src" / f"c{ci}" / f"{i:03d}.png", kinds[ci % 3], size=12, seed=ci * 100 + i, mode=mode)
            data = path.read_bytes()
            records.append({"path": str(path), "label": (labels or {}).get(cls, cls), "split": splits[i % len(splits)],
                            "sha256": hashlib.sha256(data).hexdigest(), "width": 12, "height": 12, "mode": mode,
                            "fold": i % 2, "note": f"keep-{cls}-{i}"})
    classes = [(labels or {}).get(c, c) for c in per_class]
    lines = []
    if header:
        lines.append(json.dumps({"format": "imgcls-manifest", "version": "1.0", "classes": classes, "seed": 7}))
    lines += [json.dumps(r) for r in records]
    manifest = tmp / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# -- the library: each op ---------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("op", ALL_OPS)
def test_augment_op_keeps_size_and_mode_and_is_deterministic(op, mode):
    img = tiny(mode)
    spec = A.OpSpec(op, prob=1.0)
    out1, t1 = A.run_op(img, spec, np.random.default_rng(3))
    out2, t2 = A.run_op(img, spec, np.random.default_rng(3))
    assert out1.size == img.size and out1.mode == mode
    assert np.array_equal(px(out1), px(out2)) and t1 == t2
    # the recorded transform replays exactly
    assert np.array_equal(px(A.replay(img, t1)), px(out1))
    assert json.loads(json.dumps(t1)) == t1


@pytest.mark.parametrize("op", ["flip", "rotate", "shift", "zoom", "shear", "brightness", "contrast", "colour",
                                "sharpness", "autocontrast", "equalize", "whiten", "grayscale", "blur", "noise",
                                "crop", "posterize", "solarize"])
def test_augment_op_changes_pixels_on_some_draw(op):
    img = tiny("RGB")
    spec = A.OpSpec(op, prob=1.0)
    changed = [not np.array_equal(px(A.run_op(img, spec, np.random.default_rng(s))[0]), px(img)) for s in range(6)]
    assert any(changed), f"{op} never changed the image"


def test_augment_flip_shift_are_exact():
    img = tiny("RGB")
    assert np.array_equal(px(A.replay(img, [{"op": "flip", "params": {"axes": "h"}}])), px(ImageOps.mirror(img)))
    assert np.array_equal(px(A.replay(img, [{"op": "flip", "params": {"axes": "v"}}])), px(ImageOps.flip(img)))
    shift = [{"op": "shift", "params": {"dx": 3, "dy": -2}}]
    expected = np.zeros_like(px(img))
    expected[:-2, 3:] = px(img)[2:, :-3]
    assert np.array_equal(px(A.replay(img, shift, fill="black")), expected)
    # edge (the default, as train): the nearest edge pixel is repeated into the uncovered area
    padded = np.pad(px(img), ((2, 2), (3, 3), (0, 0)), mode="edge")
    assert np.array_equal(px(A.replay(img, shift)), padded[4:4 + 16, 0:16])
    white = px(A.replay(img, [{"op": "shift", "params": {"dx": 3, "dy": 0}}], fill="white"))
    assert (white[:, :3] == 255).all()


def test_augment_rotation_matches_pillow():
    img = tiny("RGB")
    mine = px(A.replay(img, [{"op": "rotate", "params": {"degrees": 12.5}}], fill="black"))
    assert np.array_equal(mine, px(img.rotate(12.5, Image.BILINEAR)))
    # with edge fill the inside is the same and the corners are filled, not black
    edge = px(A.replay(img, [{"op": "rotate", "params": {"degrees": 12.5}}]))
    assert np.array_equal(edge[5:11, 5:11], mine[5:11, 5:11]) and (edge[0, 0] != 0).any()


def test_augment_geometric_ops_fuse_into_one_resampling():
    img = tiny("L", size=24)
    t = [{"op": "rotate", "params": {"degrees": 20}}, {"op": "rotate", "params": {"degrees": -20}}]
    # two opposite rotations cancel exactly when fused (two resamplings would blur)
    assert np.array_equal(px(A.replay(img, t)), px(img))


def test_augment_photometric_values():
    img = tiny("RGB")
    bright = A.replay(img, [{"op": "brightness", "params": {"factor": 1.5}}])
    assert px(bright).mean() > px(img).mean() + 10
    flat = A.replay(img, [{"op": "contrast", "params": {"factor": 0.2}}])
    assert px(flat).std() < px(img).std() * 0.5
    grey = px(A.replay(img, [{"op": "grayscale", "params": {}}]))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    white = px(A.replay(img, [{"op": "whiten", "params": {"k": 2.0}}])).astype(float)
    assert abs(white.mean() - 127.5) < 6 and abs(white.std() - 127.5 / 2) < 8
    flat_img = Image.new("L", (8, 8), 77)
    assert (px(A.replay(flat_img, [{"op": "whiten", "params": {"k": 2.0}}])) == 128).all()
    # Pillow's (and torchvision's) equalize needs > 255 pixels to do anything: use 32x32
    before = px(tiny("L", size=32))
    eq = px(A.replay(tiny("L", size=32), [{"op": "equalize", "params": {}}]))
    assert eq.max() - eq.min() > 2 * (before.max() - before.min())
    low = Image.fromarray((px(tiny("L")) // 4 + 60).astype(np.uint8), "L")
    auto = px(A.replay(low, [{"op": "autocontrast", "params": {"cutoff": 0}}]))
    assert auto.min() == 0 and auto.max() == 255
    post = px(A.replay(img, [{"op": "posterize", "params": {"bits": 2}}]))
    assert len(np.unique(post)) <= 4 * 3


def test_augment_noise_and_blur_grow_with_magnitude():
    img = tiny("L", size=24)
    diffs = [np.abs(px(A.replay(img, [{"op": "noise", "params": {"std": s, "seed": 1}}])) - px(img)).mean()
             for s in (0.02, 0.05, 0.1, 0.2)]
    assert diffs == sorted(diffs) and diffs[0] > 0
    lap = []
    for sigma in (0.5, 1.0, 2.0):
        a = px(A.replay(img, [{"op": "blur", "params": {"sigma": sigma}}])).astype(float)
        lap.append((4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).var())
    assert lap == sorted(lap, reverse=True)


def test_augment_sampling_respects_ranges_and_probability():
    rng = np.random.default_rng(0)
    draws = [A.sample_op(A.OpSpec("rotate", 10.0), rng, 16, 16)[0]["params"]["degrees"] for _ in range(200)]
    assert max(abs(d) for d in draws) <= 10 and min(draws) < -5 and max(draws) > 5
    shifts = [A.sample_op(A.OpSpec("shift", 0.25), rng, 16, 16)[0]["params"] for _ in range(200)]
    assert all(abs(s["dx"]) <= 4 and abs(s["dy"]) <= 4 and isinstance(s["dx"], int) for s in shifts)
    zooms = [A.sample_op(A.OpSpec("zoom", 0.1), rng, 16, 16)[0]["params"]["scale"] for _ in range(200)]
    assert 0.9 <= min(zooms) and max(zooms) <= 1.1
    flips = [A.sample_op(A.OpSpec("flip", "h"), rng, 16, 16) for _ in range(400)]
    assert 150 < sum(1 for f in flips if f) < 250  # p = 0.5 by default
    assert not any(A.sample_op(A.OpSpec("blur", 1.0, prob=0.0), rng, 16, 16) for _ in range(50))
    trivial = [(A.sample_op(A.OpSpec("trivial"), rng, 16, 16) or [{"op": "identity", "params": {}}])[0]
               for _ in range(600)]
    names = {t["op"] + ("_" + t["params"]["axis"] if "axis" in t["params"] else "") for t in trivial}
    assert names == {"identity", "shear_x", "shear_y", "shift", "rotate", "brightness", "colour", "contrast",
                     "sharpness", "posterize", "solarize", "autocontrast", "equalize"}
    assert max(abs(t["params"]["degrees"]) for t in trivial if t["op"] == "rotate") <= 135


def test_augment_presets_have_the_documented_ops():
    assert A.describe_pipeline(A.PRESETS["light"]) == "flip:h,shift:0.08"
    assert A.describe_pipeline(A.PRESETS["standard"]) == "flip:h,rotate:15,shift:0.1,zoom:0.1"
    assert A.describe_pipeline(A.PRESETS["strong"]) == "flip:h,rotate:15,shift:0.1,zoom:0.1,trivial"
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| presets |"))
    for name, ops in A.PRESETS.items():  # each preset, spelled out or as an earlier one plus ops
        spelled = f"{name} = `{A.describe_pipeline(ops)}`" in row
        extended = any(f"{name} = {base} + `{A.describe_pipeline(ops[len(A.PRESETS[base]):])}`" in row
                       for base in A.PRESETS if base != name and ops[:len(A.PRESETS[base])] == A.PRESETS[base])
        assert spelled or extended, name


def test_augment_option_defaults_are_the_librarys():
    """The command's defaults and --fill choices are AugmentConfig's and imgcls.augment.FILLS."""
    import dataclasses

    from imgcls.commands.augment import command

    options = {p.name: p for p in command.params}
    library = {f.name: f.default for f in dataclasses.fields(A.AugmentConfig)}
    for name in ("seed", "fill", "fmt", "jobs", "force", "balance", "per_class"):
        assert options[name].default == library[name], name
    assert options["copies"].default is None and library["copies"] == 2  # None: 2, or 0 when balancing
    # every AugmentConfig setting is a command option, but the worker count's threshold (a test hook)
    assert set(library) - {"ops", "in_process_below"} <= set(options)
    assert tuple(options["fill"].type.choices) == A.FILLS
    from imgcls.derived import FORMATS

    assert set(options["fmt"].type.choices) == set(FORMATS)


def test_augment_presets_are_the_twins_of_train_augment(invoke):
    """The offline presets apply train --augment's magnitudes; --preset's help states them."""
    from imgcls.training.augment import preset
    from imgcls.training.config import AUGMENTS, describe_augment_preset

    assert set(A.PRESETS) == set(AUGMENTS) - {"none"}
    by_op = {"rotate": "rotation", "shift": "shift", "zoom": "zoom"}
    for name, ops in A.PRESETS.items():
        spec = preset(name)
        offline = {by_op[op.name]: op.magnitude for op in ops if op.name in by_op}
        assert offline == {k: getattr(spec, k) for k in by_op.values() if getattr(spec, k)}, name
        assert any(op.name == "flip" for op in ops) == spec.flip, name
        assert any(op.name == "trivial" for op in ops) == (spec.policy == "trivialaugment"), name
        assert not preset(name, flip=False).flip
    text = " ".join(invoke(["augment", "--help"]).stdout.split())
    for name in A.PRESETS:
        assert f"{name} = {describe_augment_preset(name)}" in text, name


def test_augment_parse_ops_syntax():
    ops = A.parse_ops("rotate:20, shift:0.1 ,flip:hv@0.3,noise@0.5,standard,Color:0.4")
    assert [o.name for o in ops] == ["rotate", "shift", "flip", "noise", "flip", "rotate", "shift", "zoom", "colour"]
    assert ops[0].magnitude == 20 and ops[2].magnitude == "hv" and ops[2].probability == 0.3
    assert ops[3].magnitude == A.OP_DEFS["noise"].default and ops[3].probability == 0.5
    assert A.parse_ops(A.describe_pipeline(ops)) == ops  # the printed form parses back


@pytest.mark.parametrize("text,message", [
    ("rotat:15", "unknown operation 'rotat'"),
    ("rotate:abc", "rotate takes DEG, a number in [0, 180]; got 'abc'"),
    ("rotate:200", "must be in [0, 180]; got 200"),
    ("shift:1.5", "shift FRAC must be in [0, 1); got 1.5"),
    ("flip:x", "flip takes AXES, one of h, v, hv, vh; got 'x'"),
    ("equalize:3", "equalize takes no value"),
    ("noise@2", "probability after '@' must be in [0, 1]"),
    ("noise@x", "probability after '@' must be a number"),
    ("rotate,,flip", "item 2 is empty"),
    ("rotate:", "missing value after ':'"),
    ("standard:2", "a preset name takes no value"),
    ("posterize:2.5", "posterize takes a whole number"),
])
def test_augment_bad_ops_exit_2_with_precise_message(tmp_path, invoke, text, message):
    with pytest.raises(UsageProblem, match=None) as info:
        A.parse_ops(text)
    assert message in str(info.value)
    manifest = write_manifest(tmp_path, {"a": 2})
    result = invoke(["augment", manifest, "--out", tmp_path / "out", "--ops", text])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and result.stdout == ""


# -- the command ------------------------------------------------------------------------------
def test_augment_cli_copies_split_isolation_and_records(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 6, "b": 6}, splits=("train", "val", "test"))
    out = tmp_path / "out"
    result = invoke(["augment", manifest, "--out", out, "--copies", 3, "--seed", 5])
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(result.stdout)
    header, records = lines[0], lines[1:]
    source = read_jsonl(manifest.read_text())
    assert header["classes"] == ["a", "b"] and header["seed"] == 7
    assert header["augment"]["copies"] == 3 and header["augment"]["ops"] == "flip:h,rotate:15,shift:0.1,zoom:0.1"
    originals = [r for r in records if "origin" not in r]
    copies = [r for r in records if "origin" in r]
    assert originals == source[1:]  # every input record passes through unchanged, in order
    train = [r for r in source[1:] if r["split"] == "train"]
    assert len(copies) == 3 * len(train)
    by_path = {r["path"]: r for r in train}
    for c in copies:
        src = by_path[c["origin"]]  # only training images are augmented
        assert c["split"] == "train" and c["label"] == src["label"] and c["fold"] == src["fold"]
        assert c["note"] == src["note"] and c["origin_sha256"] == src["sha256"]
        path = Path(c["path"])
        assert path.is_absolute() and out.resolve() in path.parents
        assert hashlib.sha256(path.read_bytes()).hexdigest() == c["sha256"]
        with Image.open(path) as im:
            assert (im.width, im.height, im.mode) == (c["width"], c["height"], c["mode"]) == (12, 12, "RGB")
            assert np.array_equal(px(im), px(A.replay(Image.open(src["path"]).convert("RGB"), c["transform"])))
    # each source is immediately followed by its copies
    last_original = None
    for r in records:
        if "origin" in r:
            assert r["origin"] == last_original
        else:
            last_original = r["path"]
    assert len(files_under(out)) == len(copies)
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_augment_cli_is_deterministic_and_seed_sensitive(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 4, "b": 3})

    def shas(out, seed):
        result = invoke(["augment", manifest, "--out", tmp_path / out, "--seed", seed, "--preset", "strong"])
        assert result.exit_code == 0, result.stderr
        return [r["sha256"] for r in read_jsonl(result.stdout)[1:] if "origin" in r]

    first, again, other = shas("o1", 1), shas("o2", 1), shas("o3", 2)
    assert first == again
    assert first != other


def test_augment_cli_reads_stdin_and_jpg_and_grey(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 3, "b": 3}, mode="L")
    result = invoke(["augment", "-", "--out", tmp_path / "o", "--format", "jpg", "--ops", "rotate:10,noise:0.02"],
                    input=manifest.read_text())
    assert result.exit_code == 0, result.stderr
    copies = [r for r in read_jsonl(result.stdout)[1:] if "origin" in r]
    assert len(copies) == 12 and all(c["path"].endswith(".jpg") and c["mode"] == "L" for c in copies)
    with Image.open(copies[0]["path"]) as im:
        assert im.format == "JPEG"


def test_augment_cli_balance_counts(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 9, "b": 4, "c": 2}, splits=("train", "train", "test"))
    # train per class: a 6, b 3 (of 4: 0,1,3), c 2
    result = invoke(["augment", manifest, "--out", tmp_path / "o", "--balance"])
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(result.stdout)[1:]

    def count(rs, split="train"):
        out = {}
        for r in rs:
            if r["split"] == split:
                out[r["label"]] = out.get(r["label"], 0) + 1
        return out

    assert count(records) == {"a": 6, "b": 6, "c": 6}
    assert count(records, "test") == {"a": 3, "b": 1}  # untouched
    assert "a 6, b 3, c 2 -> a 6, b 6, c 6" in result.stderr
    # copies are spread round-robin over a class's images: c's 2 images get 2 copies each
    c_origins = [r["origin"] for r in records if r.get("origin") and r["label"] == "c"]
    assert len(set(c_origins)) == 2 and len(c_origins) == 4

    result = invoke(["augment", manifest, "--out", tmp_path / "o2", "--per-class", 5])
    assert count(read_jsonl(result.stdout)[1:]) == {"a": 6, "b": 5, "c": 5}  # never drops originals
    result = invoke(["augment", manifest, "--out", tmp_path / "o3", "--balance", "--copies", 1])
    assert count(read_jsonl(result.stdout)[1:]) == {"a": 12, "b": 12, "c": 12}


def test_augment_cli_hostile_labels_stay_inside_out(tmp_path, invoke):
    labels = {"a": "../x", "b": "/etc", "c": "..\\..\\evil name\n"}
    manifest = write_manifest(tmp_path, {"a": 2, "b": 2, "c": 2}, labels=labels)
    out = tmp_path / "deep" / "out"
    result = invoke(["augment", manifest, "--out", out])
    assert result.exit_code == 0, result.stderr
    copies = [r for r in read_jsonl(result.stdout)[1:] if "origin" in r]
    assert {c["label"] for c in copies} == set(labels.values())
    written = files_under(tmp_path)
    new = [p for p in written if "src" not in p.parts and p.name != "m.jsonl"]
    assert len(new) == 12 and all(out.resolve() in p.resolve().parents for p in new)
    assert sorted(p.name for p in out.iterdir()) == ["000", "001", "002"]
    assert not (tmp_path / "deep" / "x").exists() and not (tmp_path / "x").exists()


def test_augment_cli_refuses_non_empty_out_without_force(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 2})
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    result = invoke(["augment", manifest, "--out", out])
    assert result.exit_code == 2
    assert "not empty" in result.stderr and "--force" in result.stderr and result.stdout == ""
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    result = invoke(["augment", manifest, "--out", out, "--force"])
    assert result.exit_code == 0, result.stderr
    assert (out / "mine.txt").read_text() == "user data" and len(files_under(out)) == 1 + 4
    (tmp_path / "file").write_text("x")
    result = invoke(["augment", manifest, "--out", tmp_path / "file"])
    assert result.exit_code == 2 and "is a file" in result.stderr


def test_augment_cli_force_merges_and_a_failed_run_keeps_existing_files(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 3, "b": 3})
    out = tmp_path / "out"
    first = invoke(["augment", manifest, "--out", out, "--seed", 1])
    assert first.exit_code == 0, first.stderr
    before = {p: p.read_bytes() for p in files_under(out)}
    second = invoke(["augment", manifest, "--out", out, "--seed", 2, "--force"])
    assert second.exit_code == 0, second.stderr
    copies = [r for r in read_jsonl(second.stdout)[1:] if "origin" in r]
    after = files_under(out)
    assert sorted(after) == sorted(before)  # same names, merged into the existing class folders
    for c in copies:  # ... and replaced by this run's images
        assert hashlib.sha256(Path(c["path"]).read_bytes()).hexdigest() == c["sha256"]
    assert any(before[p] != p.read_bytes() for p in after)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    # a failing run into the same folder changes nothing that was there
    snapshot = {p: p.read_bytes() for p in after}
    (tmp_path / "src" / "c0" / "001.png").write_bytes(b"")
    third = invoke(["augment", manifest, "--out", out, "--seed", 3, "--force"])
    assert third.exit_code == 1 and "001.png" in third.stderr
    assert {p: p.read_bytes() for p in files_under(out)} == snapshot
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_augment_cli_unreadable_image_fails_cleanly(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 5, "b": 5})
    bad = tmp_path / "src" / "c1" / "003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = invoke(["augment", manifest, "--out", out])
    assert result.exit_code == 1
    assert str(bad) in result.stderr and "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert result.stdout == ""
    assert not out.exists()  # everything this run wrote (and the folder it made) is gone


def test_augment_cli_usage_errors(tmp_path, invoke):
    manifest = write_manifest(tmp_path, {"a": 2})
    result = invoke(["augment", manifest])
    assert result.exit_code == 2 and "--out" in result.stderr
    result = invoke(["augment", manifest, "--out", tmp_path / "o", "--ops", "flip", "--preset", "light"])
    assert result.exit_code == 2 and "--ops and --preset" in result.stderr
    result = invoke(["augment", manifest, "--out", tmp_path / "o", "--copies", 0])
    assert result.exit_code == 2 and "--copies 0" in result.stderr
    result = invoke(["augment", manifest, "--out", tmp_path / "nf", "--preset", "light", "--no-flip"])
    assert result.exit_code == 0 and read_jsonl(result.stdout)[0]["augment"]["ops"] == "shift:0.08"
    result = invoke(["augment", manifest, "--out", tmp_path / "nf2", "--ops", "flip", "--no-flip"])
    assert result.exit_code == 2 and "no operations left" in result.stderr
    result = invoke(["augment", "--list-ops"])
    assert result.exit_code == 0 and "rotate[:DEG]" in result.stdout and "preset strong" in result.stdout
    result = invoke(["augment", "--help"])
    assert result.exit_code == 0 and "OP[:VALUE][@PROB]" in result.stdout and "whiten[:K]" in result.stdout


def test_augment_parallel_matches_serial(tmp_path):
    from imgcls.manifest import read_all

    manifest = write_manifest(tmp_path, {"a": 4, "b": 4})
    header, records, reader = read_all(str(manifest))
    ops = A.PRESETS["strong"]
    parallel_config = A.AugmentConfig(ops, jobs=2, in_process_below=0)
    serial_config = A.AugmentConfig(ops, jobs=1)
    _, serial, _ = A.augment_manifest(header, records, reader.resolve, str(tmp_path / "s"), serial_config)
    _, parallel, _ = A.augment_manifest(header, records, reader.resolve, str(tmp_path / "p"), parallel_config)
    assert [r.get("sha256") for r in serial] == [r.get("sha256") for r in parallel]
    assert [r.get("transform") for r in serial] == [r.get("transform") for r in parallel]
    # a bad image in a worker: error naming it, nothing left behind
    Path(records[-1]["path"]).write_bytes(b"not an image")
    with pytest.raises(DataError, match=Path(records[-1]["path"]).name):
        A.augment_manifest(header, records, reader.resolve, str(tmp_path / "q"), parallel_config)
    assert not (tmp_path / "q").exists()


def test_augment_never_imports_torch(tmp_path):
    manifest = write_manifest(tmp_path, {"a": 2, "b": 2})
    modules_file = tmp_path / "modules.json"
    script = f"""
import json, sys
from imgcls.cli import cli
try:
    cli.main(args=["augment", {str(manifest)!r}, "--out", {str(tmp_path / 'o')!r}, "--preset", "strong"],
             prog_name="imgcls", standalone_mode=False)
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "sklearn"))
    open({str(modules_file)!r}, "w").write(json.dumps(heavy))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(A.__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(proc.stdout)) == 1 + 4 + 8
    assert json.loads(modules_file.read_text()) == []
