"""Robustness test sets: corruption families at five severities (Pillow and NumPy, never torch).

Follows the ImageNet-C / CIFAR-10-C convention: each family has five levels, 1 mild to
5 severe, whose parameters are fixed in :data:`SEVERITY_TABLE` (printed by
``imgcls perturb --list`` and the man page), so results are comparable between runs and
papers. Where a family needs randomness (a rotation's sign, a shift's direction, noise,
an occluder's place, an elastic field) it comes from a generator seeded by ``--seed`` and
the image's identity: the same command always writes the same images.

Sizes that depend on the image (blur sigma, stroke radius, elastic field) are expressed
relative to its shorter side, so the levels mean the same on 28 px digits and 224 px photos.
Every perturbation keeps the image's size and mode.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from imgcls.derived import fill_colour, parse_int_list, suggest
from imgcls.errors import UsageProblem

SEVERITIES = (1, 2, 3, 4, 5)

# family -> (what the numbers are, values at severity 1..5)
SEVERITY_TABLE: dict[str, tuple[str, tuple[float, ...]]] = {
    "rotation": ("degrees, random sign", (5, 10, 15, 20, 30)),
    "shift": ("distance as a fraction of the image size, random direction", (0.05, 0.1, 0.15, 0.2, 0.25)),
    "zoom_in": ("magnification about the centre", (1.1, 1.2, 1.3, 1.4, 1.5)),
    "zoom_out": ("scale about the centre, surround filled (--fill)", (0.9, 0.8, 0.7, 0.6, 0.5)),
    "gaussian_noise": ("noise std as a fraction of 255 (ImageNet-C)", (0.08, 0.12, 0.18, 0.26, 0.38)),
    "blur": ("Gaussian sigma in pixels per 32 px of the shorter side (CIFAR-10-C)", (0.4, 0.6, 0.7, 0.8, 1.0)),
    "brightness": ("added to the HSV value, fraction of 255 (ImageNet-C)", (0.1, 0.2, 0.3, 0.4, 0.5)),
    "contrast": ("contrast factor about the channel means (ImageNet-C)", (0.4, 0.3, 0.2, 0.1, 0.05)),
    "jpeg": ("JPEG quality (CIFAR-10-C)", (80, 65, 58, 50, 40)),
    "pixelate": ("downscale factor before nearest-neighbour upscaling", (0.8, 0.65, 0.5, 0.4, 0.3)),
    "occlusion": ("side of a mid-grey square, fraction of the shorter side, random place", (0.2, 0.3, 0.4, 0.5, 0.6)),
    "elastic": ("RMS displacement, fraction of the shorter side (field smoothed with sigma 0.12)", (0.01, 0.02, 0.03, 0.045, 0.06)),
    "shrink": ("object scale, drawn at a random place, surround filled (--fill)", (0.8, 0.7, 0.6, 0.5, 0.4)),
    "thin": ("stroke erosion radius in pixels per 28 px of the shorter side", (0.25, 0.5, 0.75, 1.0, 1.25)),
    "thick": ("stroke dilation radius in pixels per 28 px of the shorter side", (0.25, 0.5, 0.75, 1.0, 1.25)),
}
FAMILIES = tuple(SEVERITY_TABLE)

ALIASES = {
    "rotate": "rotation", "translate": "shift", "translation": "shift", "zoom-in": "zoom_in", "zoomin": "zoom_in",
    "zoom-out": "zoom_out", "zoomout": "zoom_out", "noise": "gaussian_noise", "gaussian-noise": "gaussian_noise",
    "gaussian_blur": "blur", "jpeg_compression": "jpeg", "jpg": "jpeg", "pixelation": "pixelate",
    "erase": "occlusion", "erasing": "occlusion", "elastic_transform": "elastic", "thinning": "thin",
    "thickening": "thick", "erosion": "thin", "dilation": "thick",
}

OCCLUDER_GREY = 128


def parse_kinds(text: str | None) -> list[str]:
    """``--kinds a,b,c`` (or ``all``) -> canonical family names in table order."""
    if text is None or text.strip().lower() == "all":
        return list(FAMILIES)
    chosen: list[str] = []
    for position, raw in enumerate(text.split(","), 1):
        item = raw.strip().lower().replace("-", "_")
        if not raw.strip():
            raise UsageProblem(f"--kinds {text!r}: item {position} is empty (two commas?)")
        name = ALIASES.get(item, ALIASES.get(item.replace("_", "-"), item))
        if name not in SEVERITY_TABLE:
            raise UsageProblem(
                f"--kinds {text!r}: unknown perturbation {raw.strip()!r}{suggest(item, FAMILIES)}; "
                f"known: {', '.join(FAMILIES)} (or all)"
            )
        if name not in chosen:
            chosen.append(name)
    return [f for f in FAMILIES if f in chosen]


def parse_severities(text: str) -> list[int]:
    """``--severity 3``, ``1-5``, ``1,3,5`` -> sorted levels in 1..5."""
    return parse_int_list(text, "--severity", 1, 5)


def severity_rows() -> list[tuple[str, str, str]]:
    """(family, values at 1..5, meaning) rows for --list, --help and the man page."""
    return [(f, " / ".join(_fmt(v) for v in values), meaning) for f, (meaning, values) in SEVERITY_TABLE.items()]


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


# -- numpy helpers --------------------------------------------------------------------------
def _array(img) -> np.ndarray:
    a = np.asarray(img, dtype=np.float32)
    return a if a.ndim == 3 else a[:, :, None]


def _image(a: np.ndarray, mode: str):
    from PIL import Image

    a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(a[:, :, 0] if mode == "L" else a, mode)


@functools.lru_cache(maxsize=32)
def _smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """The n x n matrix of 1-D Gaussian smoothing with reflected borders (cached per size)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    m = np.zeros((n, n))
    for i in range(n):
        for k, weight in zip(range(i - radius, i + radius + 1), kernel):
            j = k
            # reflect (symmetric) until inside: handles radii larger than the image
            while j < 0 or j >= n:
                j = -j - 1 if j < 0 else 2 * n - j - 1
            m[i, j] += weight
    return m


def gaussian_smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian smoothing of a 2-D array with reflected borders (no SciPy needed).

    Done as two small matrix products: for the image sizes of small data (up to a few
    hundred pixels) that is much faster than a shifted-sum convolution.
    """
    h, w = field.shape
    return _smoothing_matrix(h, float(sigma)) @ field @ _smoothing_matrix(w, float(sigma)).T


def morph(a: np.ndarray, radius: int, grow: bool) -> np.ndarray:
    """Grey dilation (grow) or erosion with a (2r+1) square, edges replicated.

    Identical to Pillow's ``ImageFilter.MaxFilter``/``MinFilter(2r+1)`` (a test checks it),
    but separable, so it costs O(r) array passes instead of O(r^2) per pixel.
    """
    pick = np.maximum if grow else np.minimum
    h, w = a.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, pad, mode="edge")
    rows = p[:, 0:w]
    for k in range(1, 2 * radius + 1):
        rows = pick(rows, p[:, k:k + w])
    out = rows[0:h]
    for k in range(1, 2 * radius + 1):
        out = pick(out, rows[k:k + h])
    return out


def bilinear_sample(a: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample HxWxC ``a`` at float coordinates (clamped to the edges), like map_coordinates(order=1)."""
    h, w = a.shape[:2]
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[..., None]
    wx = (xs - x0)[..., None]
    top = a[y0, x0] * (1 - wx) + a[y0, x1] * wx
    bottom = a[y1, x0] * (1 - wx) + a[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _background_is_dark(img) -> bool:
    from imgcls.derived import border_colour

    colour = border_colour(img)
    level = colour if isinstance(colour, int) else sum(colour) / len(colour)
    return level < 128


# -- families -------------------------------------------------------------------------------
def _rotation(img, v, rng, fill):
    from PIL import Image

    degrees = float(v) * (1 if rng.random() < 0.5 else -1)
    return img.rotate(degrees, Image.BILINEAR, fillcolor=fill_colour(img, fill)), {"degrees": degrees}


def _shift(img, v, rng, fill):
    from PIL import Image

    angle = rng.uniform(0, 2 * math.pi)
    dx = int(round(math.cos(angle) * v * img.width))
    dy = int(round(math.sin(angle) * v * img.height))
    moved = img.transform(img.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), resample=Image.NEAREST,
                          fillcolor=fill_colour(img, fill))
    return moved, {"dx": dx, "dy": dy}


def _zoom_in(img, v, rng, fill):
    from PIL import Image

    w, h = img.size
    cw, ch = w / v, h / v
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return img.resize(img.size, Image.BILINEAR, box=box), {"scale": v}


def _paste_scaled(img, scale, fill, rng: np.random.Generator | None):
    from PIL import Image

    w, h = img.size
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    small = img.resize((sw, sh), Image.Resampling.BILINEAR)
    canvas = Image.new(img.mode, img.size, fill_colour(img, fill))
    if rng is None:
        left, top = (w - sw) // 2, (h - sh) // 2
    else:
        left, top = int(rng.integers(0, w - sw + 1)), int(rng.integers(0, h - sh + 1))
    canvas.paste(small, (left, top))
    return canvas, {"scale": scale, "left": left, "top": top}


def _zoom_out(img, v, rng, fill):
    return _paste_scaled(img, v, fill, None)


def _shrink(img, v, rng, fill):
    return _paste_scaled(img, v, fill, rng)


def _gaussian_noise(img, v, rng, fill):
    a = _array(img)
    noisy = a + rng.standard_normal(a.shape, dtype=np.float32) * np.float32(v * 255.0)
    return _image(noisy, img.mode), {"std": v}


def _blur(img, v, rng, fill):
    from PIL import ImageFilter

    sigma = v * min(img.size) / 32.0
    return img.filter(ImageFilter.GaussianBlur(sigma)), {"sigma": round(sigma, 4)}


def _brightness(img, v, rng, fill):
    from PIL import Image

    if img.mode == "L":
        return _image(_array(img) + v * 255.0, "L"), {"add": v}
    hsv = np.asarray(img.convert("HSV"), dtype=np.float32).copy()
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + v * 255.0, 0, 255)
    out = Image.fromarray(np.rint(hsv).astype(np.uint8), "HSV").convert("RGB")
    return out, {"add": v}


def _contrast(img, v, rng, fill):
    a = _array(img)
    means = a.mean(axis=(0, 1), keepdims=True)
    return _image((a - means) * v + means, img.mode), {"factor": v}


def _jpeg(img, v, rng, fill):
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(v))
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = decoded.convert(img.mode)
    return out, {"quality": int(v)}


def _pixelate(img, v, rng, fill):
    from PIL import Image

    w, h = img.size
    small = img.resize((max(1, round(w * v)), max(1, round(h * v))), Image.BOX)
    return small.resize(img.size, Image.NEAREST), {"factor": v}


def _occlusion(img, v, rng, fill):
    from PIL import ImageDraw

    w, h = img.size
    side = max(1, round(v * min(w, h)))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    out = img.copy()
    grey = OCCLUDER_GREY if img.mode == "L" else (OCCLUDER_GREY,) * 3
    ImageDraw.Draw(out).rectangle((left, top, left + side - 1, top + side - 1), fill=grey)
    return out, {"left": left, "top": top, "side": side}


def _elastic(img, v, rng, fill):
    a = _array(img)
    h, w = a.shape[:2]
    short = min(h, w)
    sigma = 0.12 * short
    alpha = v * short
    fields = []
    for _ in range(2):
        d = gaussian_smooth(rng.uniform(-1.0, 1.0, (h, w)), sigma)
        rms = float(np.sqrt(np.mean(d * d)))
        fields.append(d * (alpha / rms) if rms > 0 else d)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = bilinear_sample(a, yy + fields[0], xx + fields[1])
    return _image(out, img.mode), {"rms_px": round(alpha, 4), "sigma_px": round(sigma, 4)}


def _stroke(img, v, rng, fill, thicker: bool):
    """Erode or dilate the foreground at sub-pixel precision (work at 4x or 2x, then reduce).

    The foreground is whatever contrasts with the border colour: on a dark background
    (MNIST) strokes are bright, so thickening is a max filter; on a light background
    (ink on paper) it is a min filter.
    """
    from PIL import Image

    short = min(img.size)
    radius = v * short / 28.0
    up = 4 if short <= 64 else 2 if short <= 128 else 1
    r = max(1, int(round(radius * up)))
    grow = thicker == _background_is_dark(img)  # grow the bright parts?
    big = img.resize((img.width * up, img.height * up), Image.Resampling.BILINEAR) if up > 1 else img
    big = Image.fromarray(morph(np.asarray(big), r, grow), img.mode)
    out = big.resize(img.size, Image.Resampling.BOX) if up > 1 else big
    return out, {"radius_px": round(radius, 4), "filter": ("max" if grow else "min"), "size": 2 * r + 1, "upscale": up}


def _thin(img, v, rng, fill):
    return _stroke(img, v, rng, fill, thicker=False)


def _thick(img, v, rng, fill):
    return _stroke(img, v, rng, fill, thicker=True)


FAMILY_FUNCS: dict[str, Callable] = {
    "rotation": _rotation, "shift": _shift, "zoom_in": _zoom_in, "zoom_out": _zoom_out,
    "gaussian_noise": _gaussian_noise, "blur": _blur, "brightness": _brightness, "contrast": _contrast,
    "jpeg": _jpeg, "pixelate": _pixelate, "occlusion": _occlusion, "elastic": _elastic,
    "shrink": _shrink, "thin": _thin, "thick": _thick,
}
assert set(FAMILY_FUNCS) == set(SEVERITY_TABLE)


def perturb_image(img, family: str, severity: int, rng: np.random.Generator, fill: str = "border"):
    """One corrupted version of an L or RGB image: (image, parameters used)."""
    if family not in SEVERITY_TABLE:
        raise UsageProblem(f"unknown perturbation {family!r}{suggest(family, FAMILIES)}")
    if severity not in SEVERITIES:
        raise UsageProblem(f"severity must be 1-5, not {severity!r}")
    value = SEVERITY_TABLE[family][1][severity - 1]
    out, params = FAMILY_FUNCS[family](img, value, rng, fill)
    return out, params


# -- manifests ------------------------------------------------------------------------------
# Perturbed images are always PNG: lossless, so the perturbation is all that differs from the source.
PERTURB_FORMAT = "png"


@dataclass(frozen=True)
class PerturbConfig:
    """One perturb run's settings: what ``perturb_manifest`` does and what each worker needs.

    The command's option defaults are these (tests/test_perturb.py ties them).
    """

    families: tuple[str, ...]
    severities: tuple[int, ...]
    split: str = "test"  # records to perturb: a split name, or "all"
    clean: bool = True  # also output the clean records
    seed: int = 0
    fill: str = "border"
    jobs: int = 0  # worker processes; 0: all usable cores
    force: bool = False  # write into a non-empty out_dir
    in_process_below: int | None = None  # None: imgcls.derived.IN_PROCESS_BELOW

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "severities", tuple(self.severities))


def perturb_task(config: PerturbConfig, task: tuple[str, str, list[tuple[str, int, str]]]) -> list[dict] | dict:
    """Worker: decode one test image once, write every (family, severity) version."""
    from imgcls.derived import derive_rng, normalise_mode, save_derived
    from imgcls.images import ImageRejected, open_image

    src, key, outputs = task
    try:
        img = normalise_mode(open_image(src))
    except ImageRejected as exc:
        return {"error": str(exc)}
    results = []
    for family, severity, dest in outputs:
        rng = derive_rng(config.seed, key, family, severity)
        new, params = perturb_image(img, family, severity, rng, config.fill)
        info = save_derived(new, dest, PERTURB_FORMAT)
        info["perturbation"] = family
        info["severity"] = severity
        info["transform"] = [{"op": family, "params": params}]
        results.append(info)
    return results


def select(record: dict, split: str) -> bool:
    """Records a run perturbs: the chosen split (or all), never already-perturbed ones."""
    if record.get("perturbation") is not None:
        return False
    return split == "all" or record.get("split") == split


def perturb_manifest(
    header: dict,
    records: list[dict],
    resolve: Callable[[dict], Any],
    out_dir: str,
    config: PerturbConfig,
    progress: Callable[[int], None] | None = None,
    emit: Callable[[dict, list[dict]], None] | None = None,
) -> tuple[dict, list[dict], int]:
    """Write perturbed copies of the selected records; return (header, records, images written).

    Output records: for each selected record in input order, the clean record (unless
    ``config.clean`` is False) followed by its perturbed versions. Other records are left out.
    Images are written into a staging folder and moved into ``out_dir`` only when all are
    written and ``emit(header, records)`` (the command's stdout write) has succeeded; on
    any failure the staging folder is removed and the error re-raised.
    """
    from imgcls.derived import IN_PROCESS_BELOW, OutputDir, collect_results, finish_output, record_keys, run_tasks
    from imgcls.errors import DataError

    split = config.split
    output = OutputDir(out_dir, force=config.force)
    chosen = [i for i, r in enumerate(records) if select(r, split)]
    if not chosen:
        splits = sorted({str(r.get("split")) for r in records if r.get("perturbation") is None})
        raise DataError(
            f"no records to perturb in split {split!r} (the manifest has: {', '.join(splits) or 'no clean records'}); "
            f"choose one with --split, or --split all"
        )
    keys = record_keys(records)
    pairs = [(f, s) for f in config.families for s in config.severities]
    ext = PERTURB_FORMAT
    tasks = [(str(resolve(records[i])), keys[i], [(f, s, output.staged(f"{f}/{s}/{keys[i]}.{ext}")) for f, s in pairs])
             for i in chosen]
    written = len(tasks) * len(pairs)
    output.make_dirs(f"{f}/{s}" for f, s in pairs)
    below = IN_PROCESS_BELOW if config.in_process_below is None else config.in_process_below
    stream = run_tasks(partial(perturb_task, config), tasks, config.jobs, weight=len(pairs), in_process_below=below)
    results = collect_results(output, stream, chosen, "perturbed",
                              lambda i, j, info: f"{info['perturbation']}/{info['severity']}/{keys[i]}.{ext}", progress,
                              commit=False)
    try:
        new_header, out_records = _perturbed_manifest(header, records, results, chosen, config, output, written)
    except BaseException:
        output.abort()
        raise
    finish_output(output, (lambda: emit(new_header, out_records)) if emit is not None else None)
    return new_header, out_records, written


def _perturbed_manifest(header: dict, records: list[dict], results: dict, chosen: list[int], config: PerturbConfig,
                        output: Any, written: int) -> tuple[dict, list[dict]]:
    out_records: list[dict] = []
    for i in chosen:
        record = records[i]
        if config.clean:
            out_records.append(record)
        for info in results[i]:
            new = dict(record)
            new.update(info)
            new["origin"] = record["path"]
            if record.get("sha256"):
                new["origin_sha256"] = record["sha256"]
            out_records.append(new)
    new_header = dict(header)
    new_header["perturb"] = {
        "kinds": list(config.families),
        "severities": list(config.severities),
        "split": config.split,
        "clean": config.clean,
        "seed": config.seed,
        "fill": config.fill,
        "out": str(output.path),
        "written": written,
    }
    return new_header, out_records
