"""imgcls perturb: families x severities, determinism, monotonicity, the command, safety, no torch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import make_image, read_jsonl
from imgcls import perturb as P
from imgcls.errors import UsageProblem


def digit(size: int = 28, mode: str = "L", light_background: bool = False) -> Image.Image:
    """An MNIST-like image: a bright ring and bar on a black background (or inverted)."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size * 0.45, xx - size * 0.5)
    a = np.where((r > size * 0.2) & (r < size * 0.3), 230.0, 0.0)
    a[int(size * 0.6):int(size * 0.85), int(size * 0.45):int(size * 0.55)] = 200.0
    img = Image.fromarray(a.astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(0.6))
    if light_background:
        img = Image.fromarray(255 - np.asarray(img), "L")
    return img.convert(mode) if mode != "L" else img


def px(img) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def run(img, family, severity, seed=0):
    return P.perturb_image(img, family, severity, np.random.default_rng(seed))[0]


def mad(a, b) -> float:
    return float(np.abs(px(a) - px(b)).mean())


def laplacian_var(img) -> float:
    a = px(img)
    if a.ndim == 3:
        a = a.mean(axis=2)
    return float((4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).var())


def write_manifest(tmp: Path, n_per_split=(2, 1, 3), classes=("a", "b"), labels=None) -> Path:
    records = []
    for ci, cls in enumerate(classes):
        i = 0
        for split, n in zip(("train", "val", "test"), n_per_split):
            for _ in range(n):
                path = make_image(tmp / "src" / f"c{ci}" / f"{i:03d}.png", ["circle", "square"][ci % 2], size=12,
                                  seed=ci * 100 + i)
                records.append({"path": str(path), "label": (labels or {}).get(cls, cls), "split": split,
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "note": i})
                i += 1
    header = {"format": "imgcls-manifest", "version": "1.0", "classes": [(labels or {}).get(c, c) for c in classes]}
    manifest = tmp / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in [header, *records]) + "\n")
    return manifest


# -- the library --------------------------------------------------------------------------------
def test_perturb_option_defaults_are_the_librarys():
    """The command's defaults are PerturbConfig's (the library run without the CLI behaves the same)."""
    import dataclasses
    import inspect

    from imgcls.commands.perturb import command

    options = {p.name: p for p in command.params}
    library = {f.name: f.default for f in dataclasses.fields(P.PerturbConfig)}
    for name in ("split", "clean", "seed", "fill", "jobs", "force"):
        assert options[name].default == library[name], name
    assert inspect.signature(P.perturb_image).parameters["fill"].default == library["fill"]
    # every PerturbConfig setting is a command option, but the worker count's threshold (a test hook)
    assert set(library) - {"families", "severities", "in_process_below"} <= set(options)
    assert options["severity_text"].default == f"{min(P.SEVERITIES)}-{max(P.SEVERITIES)}"


def test_perturb_table_has_five_levels_per_family():
    assert set(P.SEVERITY_TABLE) == set(P.FAMILIES) == set(P.FAMILY_FUNCS)
    assert len(P.FAMILIES) == 15
    for family, (meaning, values) in P.SEVERITY_TABLE.items():
        assert len(values) == 5 and meaning, family
    assert P.SEVERITY_TABLE["rotation"][1] == (5, 10, 15, 20, 30)
    assert [r[0] for r in P.severity_rows()] == list(P.FAMILIES)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("family", P.FAMILIES)
def test_perturb_family_shape_mode_determinism(family, mode):
    img = digit(mode=mode) if mode == "L" else Image.fromarray(
        np.stack([px(digit()), px(digit()) * 0.5, 255 - px(digit())], axis=2).astype(np.uint8), "RGB")
    for severity in (1, 5):
        out, params = P.perturb_image(img, family, severity, np.random.default_rng(1))
        again, params2 = P.perturb_image(img, family, severity, np.random.default_rng(1))
        assert out.size == img.size and out.mode == mode
        assert np.array_equal(px(out), px(again)) and params == params2
        assert json.loads(json.dumps(params)) == params
    assert not np.array_equal(px(run(img, family, 3)), px(img)), f"{family} at severity 3 left the image unchanged"


@pytest.mark.parametrize("family", ["gaussian_noise", "pixelate", "occlusion", "contrast", "brightness", "zoom_in",
                                    "elastic", "rotation", "shift", "jpeg"])
def test_perturb_difference_grows_with_severity(family):
    img = digit()
    diffs = [np.mean([mad(run(img, family, s, seed), img) for seed in range(3)]) for s in P.SEVERITIES]
    if family in ("jpeg",):
        # quality steps are small; require the ends to be ordered and no big inversions
        assert diffs[4] > diffs[0]
        assert all(b > a * 0.85 for a, b in zip(diffs, diffs[1:])), diffs
    else:
        assert diffs == sorted(diffs), (family, diffs)
    assert diffs[0] > 0


@pytest.mark.parametrize("family", ["zoom_out", "shrink"])
def test_perturb_smaller_object_with_severity(family):
    img = digit()
    ink = [px(run(img, family, s, seed=3)).sum() for s in P.SEVERITIES]
    scales = P.SEVERITY_TABLE[family][1]
    assert ink == sorted(ink, reverse=True)
    for total, scale in zip(ink, scales):  # ink area goes with the scale squared
        assert total / px(img).sum() == pytest.approx(scale**2, rel=0.15)


def test_perturb_blur_lowers_laplacian_variance():
    img = digit()
    lap = [laplacian_var(run(img, "blur", s)) for s in P.SEVERITIES]
    assert lap == sorted(lap, reverse=True) and lap[0] < laplacian_var(img)


def test_perturb_contrast_and_brightness_values():
    img = digit()
    stds = [px(run(img, "contrast", s)).std() for s in P.SEVERITIES]
    assert stds == sorted(stds, reverse=True)
    assert abs(stds[0] - 0.4 * px(img).std()) < 2
    means = [px(run(img, "brightness", s)).mean() for s in P.SEVERITIES]
    assert means == sorted(means)
    assert px(run(img, "brightness", 1))[0, 0] == pytest.approx(0.1 * 255, abs=1)  # black background + 0.1


def test_perturb_noise_std_matches_table():
    flat = Image.new("L", (64, 64), 128)
    for s in (1, 3):
        out = px(run(flat, "gaussian_noise", s))
        assert abs(out.std() - P.SEVERITY_TABLE["gaussian_noise"][1][s - 1] * 255) < 2.5


def test_perturb_geometry_values():
    img = digit()
    rotated = run(img, "rotation", 2, seed=4)
    params = P.perturb_image(img, "rotation", 2, np.random.default_rng(4))[1]
    assert abs(params["degrees"]) == 10
    assert np.array_equal(px(rotated), px(img.rotate(params["degrees"], Image.BILINEAR)))
    shifted, sp = P.perturb_image(img, "shift", 5, np.random.default_rng(0))
    assert round(np.hypot(sp["dx"], sp["dy"])) == round(0.25 * 28)
    # pixels move as a block, none are invented
    a, b = px(img), px(shifted)
    dx, dy = sp["dx"], sp["dy"]
    ys, xs = slice(max(0, dy), 28 + min(0, dy)), slice(max(0, dx), 28 + min(0, dx))
    ys0, xs0 = slice(max(0, -dy), 28 + min(0, -dy)), slice(max(0, -dx), 28 + min(0, -dx))
    assert np.array_equal(b[ys, xs], a[ys0, xs0])
    # shrink: the object gets smaller, the surround is the border colour (black here)
    small, params = P.perturb_image(img, "shrink", 5, np.random.default_rng(2))
    assert (px(small) > 100).sum() < (px(img) > 100).sum() * 0.4
    mask = np.ones((28, 28), bool)
    mask[params["top"]:params["top"] + 11, params["left"]:params["left"] + 11] = False
    assert (px(small)[mask] == 0).all()
    # pixelate: blocks of equal values
    pix = px(run(img, "pixelate", 5))
    assert len(np.unique(pix)) < len(np.unique(px(img)))


def test_perturb_occlusion_box_grows():
    img = digit()
    grey = [int((px(run(img, "occlusion", s)) == P.OCCLUDER_GREY).sum()) for s in P.SEVERITIES]
    side = [round(v * 28) for v in P.SEVERITY_TABLE["occlusion"][1]]
    assert grey == [s * s for s in side]


@pytest.mark.parametrize("light", [False, True])
def test_perturb_stroke_thin_and_thick_follow_the_foreground(light):
    img = digit(light_background=light)

    def ink(im):  # how much foreground: distance from the background colour
        return float(np.abs(px(im) - (255.0 if light else 0.0)).sum())

    thin = [ink(run(img, "thin", s)) for s in P.SEVERITIES]
    thick = [ink(run(img, "thick", s)) for s in P.SEVERITIES]
    assert thin == sorted(thin, reverse=True) and thin[0] < ink(img)
    assert thick == sorted(thick) and thick[0] > ink(img)


def test_perturb_morph_equals_pillow_min_max_filter():
    a = np.asarray(digit(20, "RGB"))
    for radius in (1, 2):
        for grow, filt in ((True, ImageFilter.MaxFilter), (False, ImageFilter.MinFilter)):
            ref = np.asarray(Image.fromarray(a).filter(filt(2 * radius + 1)))
            assert np.array_equal(P.morph(a, radius, grow), ref)


def test_perturb_elastic_helpers():
    smooth = P.gaussian_smooth(np.ones((7, 9)), 3.0)
    assert np.allclose(smooth, 1.0)  # reflected borders keep a constant constant
    noise = np.random.default_rng(0).uniform(-1, 1, (30, 30))
    assert P.gaussian_smooth(noise, 3.0).std() < noise.std() * 0.3
    a = np.arange(12, dtype=float).reshape(3, 4, 1)
    ys, xs = np.array([[0.5]]), np.array([[1.5]])
    assert P.bilinear_sample(a, ys, xs)[0, 0, 0] == pytest.approx((1 + 2 + 5 + 6) / 4)
    assert P.bilinear_sample(a, np.array([[-3.0]]), np.array([[10.0]]))[0, 0, 0] == 3  # clamped


def test_perturb_parse_kinds_and_severity():
    assert P.parse_kinds("all") == list(P.FAMILIES)
    assert P.parse_kinds("blur,rotation,noise,blur") == ["rotation", "gaussian_noise", "blur"]
    assert P.parse_kinds("zoom-in, thick") == ["zoom_in", "thick"]
    assert P.parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert P.parse_severities("3") == [3]
    assert P.parse_severities("5,1,3") == [1, 3, 5]
    assert P.parse_severities("1,3-4") == [1, 3, 4]


@pytest.mark.parametrize("args,message", [
    (["--kinds", "rotaton"], "unknown perturbation 'rotaton' (did you mean rotation?)"),
    (["--kinds", "blur,,jpeg"], "item 2 is empty"),
    (["--severity", "0-3"], "level 0 is outside 1-5"),
    (["--severity", "6"], "level 6 is outside 1-5"),
    (["--severity", "5-1"], "range '5-1' runs backwards"),
    (["--severity", "x"], "'x' is not a level or a range"),
    (["--severity", "1,,2"], "empty item"),
])
def test_perturb_bad_kinds_or_severity_exit_2(tmp_path, invoke, args, message):
    manifest = write_manifest(tmp_path)
    result = invoke(["perturb", manifest, "--out", tmp_path / "o", *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not (tmp_path / "o").exists()
    with pytest.raises(UsageProblem):
        P.parse_kinds(args[1]) if args[0] == "--kinds" else P.parse_severities(args[1])


# -- the command --------------------------------------------------------------------------------
def test_perturb_cli_records_and_files(tmp_path, invoke):
    manifest = write_manifest(tmp_path)
    out = tmp_path / "out"
    result = invoke(["perturb", manifest, "--out", out, "--kinds", "rotation,gaussian_noise,thick",
                     "--severity", "1,3"])
    assert result.exit_code == 0, result.stderr
    lines = read_jsonl(result.stdout)
    header, records = lines[0], lines[1:]
    source = read_jsonl(manifest.read_text())[1:]
    test = [r for r in source if r["split"] == "test"]
    assert header["classes"] == ["a", "b"]
    assert header["perturb"]["kinds"] == ["rotation", "gaussian_noise", "thick"]
    assert header["perturb"]["severities"] == [1, 3] and header["perturb"]["clean"] is True
    clean = [r for r in records if "perturbation" not in r]
    perturbed = [r for r in records if "perturbation" in r]
    assert clean == test  # clean test records pass through unchanged; train/val are left out
    assert len(perturbed) == len(test) * 3 * 2
    by_path = {r["path"]: r for r in test}
    seen = set()
    for r in perturbed:
        src = by_path[r["origin"]]
        assert r["label"] == src["label"] and r["split"] == "test" and r["note"] == src["note"]
        assert r["origin_sha256"] == src["sha256"] and r["severity"] in (1, 3)
        assert r["transform"][0]["op"] == r["perturbation"]
        path = Path(r["path"])
        assert out.resolve() in path.parents and path.parent.name == str(r["severity"])
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r["sha256"]
        with Image.open(path) as im:
            assert (im.width, im.height, im.mode) == (r["width"], r["height"], r["mode"]) == (12, 12, "RGB")
        seen.add((r["origin"], r["perturbation"], r["severity"]))
    assert len(seen) == len(perturbed)
    assert len([p for p in out.rglob("*") if p.is_file()]) == len(perturbed)


def test_perturb_cli_deterministic_no_clean_and_split_all(tmp_path, invoke):
    manifest = write_manifest(tmp_path)
    args = ["perturb", manifest, "--kinds", "shift,occlusion,elastic", "--severity", "2", "--no-clean"]
    first = read_jsonl(invoke([*args, "--out", tmp_path / "o1"]).stdout)[1:]
    second = read_jsonl(invoke([*args, "--out", tmp_path / "o2"]).stdout)[1:]
    other = read_jsonl(invoke([*args, "--out", tmp_path / "o3", "--seed", 9]).stdout)[1:]
    assert all("perturbation" in r for r in first) and len(first) == 6 * 3
    assert [r["sha256"] for r in first] == [r["sha256"] for r in second]
    assert [r["sha256"] for r in first] != [r["sha256"] for r in other]
    everything = read_jsonl(invoke([*args, "--out", tmp_path / "o4", "--split", "all"]).stdout)[1:]
    assert {r["split"] for r in everything} == {"train", "val", "test"} and len(everything) == 12 * 3


def test_perturb_cli_no_test_records_is_a_clear_error(tmp_path, invoke):
    manifest = write_manifest(tmp_path, n_per_split=(2, 1, 0))
    result = invoke(["perturb", manifest, "--out", tmp_path / "o"])
    assert result.exit_code == 1
    assert "no records to perturb in split 'test'" in result.stderr and "--split" in result.stderr
    assert not (tmp_path / "o").exists()


def test_perturb_cli_hostile_labels_stay_inside_out(tmp_path, invoke):
    manifest = write_manifest(tmp_path, labels={"a": "../../x", "b": "/etc/passwd"})
    out = tmp_path / "out"
    result = invoke(["perturb", manifest, "--out", out, "--kinds", "blur", "--severity", "1"])
    assert result.exit_code == 0, result.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "src" not in p.parts and p.name != "m.jsonl"]
    assert len(files) == 6 and all(out.resolve() in p.resolve().parents for p in files)


def test_perturb_cli_refuses_non_empty_out_without_force(tmp_path, invoke):
    manifest = write_manifest(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = invoke(["perturb", manifest, "--out", out, "--kinds", "jpeg", "--severity", "3"])
    assert result.exit_code == 2 and "--force" in result.stderr and result.stdout == ""
    result = invoke(["perturb", manifest, "--out", out, "--kinds", "jpeg", "--severity", "3", "--force"])
    assert result.exit_code == 0 and (out / "keep.txt").read_text() == "x"


def test_perturb_cli_unreadable_image_fails_cleanly(tmp_path, invoke):
    manifest = write_manifest(tmp_path, n_per_split=(1, 0, 4))
    records = read_jsonl(manifest.read_text())[1:]
    bad = Path([r for r in records if r["split"] == "test"][-1]["path"])
    bad.write_bytes(b"")
    out = tmp_path / "out"
    result = invoke(["perturb", manifest, "--out", out, "--kinds", "rotation,blur"])
    assert result.exit_code == 1
    assert str(bad) in result.stderr and "empty file" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == "" and not out.exists()


def test_perturb_cli_list_and_help(invoke):
    result = invoke(["perturb", "--list"])
    assert result.exit_code == 0
    assert "rotation" in result.stdout and "5 / 10 / 15 / 20 / 30" in result.stdout and "thick" in result.stdout
    result = invoke(["perturb", "--help"])
    assert result.exit_code == 0 and "Severity table" in result.stdout and "80 / 65 / 58 / 50 / 40" in result.stdout


def test_perturb_parallel_matches_serial_and_cleans_up(tmp_path):
    from imgcls.errors import DataError
    from imgcls.manifest import read_all

    manifest = write_manifest(tmp_path, n_per_split=(0, 0, 4))
    header, records, reader = read_all(str(manifest))
    kinds, levels = ["rotation", "elastic"], [2, 5]
    serial_config = P.PerturbConfig(kinds, levels, jobs=1)
    parallel_config = P.PerturbConfig(kinds, levels, jobs=2, in_process_below=0)
    _, serial, _ = P.perturb_manifest(header, records, reader.resolve, str(tmp_path / "s"), serial_config)
    _, parallel, _ = P.perturb_manifest(header, records, reader.resolve, str(tmp_path / "p"), parallel_config)
    assert [r["sha256"] for r in serial] == [r["sha256"] for r in parallel]
    Path(records[3]["path"]).write_bytes(b"GIF89a broken")
    with pytest.raises(DataError, match="003.png"):
        P.perturb_manifest(header, records, reader.resolve, str(tmp_path / "q"), parallel_config)
    assert not (tmp_path / "q").exists()


def test_perturb_never_imports_torch(tmp_path):
    manifest = write_manifest(tmp_path)
    modules_file = tmp_path / "modules.json"
    script = f"""
import json, sys
from imgcls.cli import cli
try:
    cli.main(args=["perturb", {str(manifest)!r}, "--out", {str(tmp_path / 'o')!r}, "--severity", "3"],
             prog_name="imgcls", standalone_mode=False)
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "sklearn", "scipy"))
    open({str(modules_file)!r}, "w").write(json.dumps(heavy))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(P.__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(proc.stdout)) == 1 + 6 + 6 * 15
    assert json.loads(modules_file.read_text()) == []
