"""Offline data augmentation with Pillow and NumPy (never torch).

Why one large module: the operations' definitions (``OP_DEFS``), their sampling, the fused
affine resampling, ``replay`` and the manifest run all share ``OpSpec``, and together they are
the whole offline-augmentation API (as :mod:`imgcls.perturb` is for perturbations). The only
separable piece, the manifest run (``plan_copies`` to the end), is short and its only caller
is the command.

An augmentation *pipeline* is a list of :class:`OpSpec` (operation name, magnitude,
probability), written on the command line as ``rotate:15,shift:0.1,flip`` (see
:data:`OPS_SYNTAX`). For each image, :func:`augment_image` samples concrete parameters
from a seeded NumPy generator, applies the operations in order and returns the image
plus the list of ``{"op", "params"}`` actually applied; :func:`replay` re-applies such a
list exactly, so a manifest's ``transform`` field is a complete recipe.

Consecutive geometric operations (flip, rotate, shift, zoom, shear) are fused into one
affine resampling, as Keras' ImageDataGenerator and torchvision's RandomAffine do, so an
image is interpolated once, not once per operation. A fused transform that maps pixels
onto pixels (flips, whole-pixel shifts) is resampled with nearest neighbour: exact.

The presets (:data:`PRESETS`) are the offline twins of ``imgcls train --augment``, built
from its definitions (:data:`imgcls.training.config.AUGMENT_PRESETS`): ``light`` flips and
shifts; ``standard`` adds Keras ImageDataGenerator-like rotation and zoom; ``strong`` adds
one op of TrivialAugmentWide with a random magnitude. Uncovered areas are filled from the nearest edge pixel by default, as train
does (Keras' ``fill_mode="nearest"``). Two deliberate differences: shifts are whole
pixels (a pure shift or flip stays exact, not blurred), and the transform is done with
Pillow on the image, not on the normalised tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from imgcls.derived import fill_colour, suggest
from imgcls.errors import UsageProblem
from imgcls.training.config import AUGMENT_PRESETS

Transform = dict[str, Any]  # {"op": name, "params": {...}}


# -- value parsing --------------------------------------------------------------------------
@dataclass(frozen=True)
class OpDef:
    """One operation: its magnitude's meaning, default, allowed range and probability."""

    name: str
    summary: str
    value_name: str | None = None  # None: the op takes no value
    default: Any = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] = ()
    prob: float = 1.0
    geometric: bool = False

    def parse_value(self, text: str | None, item: str) -> Any:
        if text is None:
            return self.default
        if self.value_name is None:
            raise UsageProblem(f"--ops {item!r}: {self.name} takes no value")
        if self.choices:
            value = text.strip().lower()
            if value not in self.choices:
                raise UsageProblem(
                    f"--ops {item!r}: {self.name} takes {self.value_name}, one of {', '.join(self.choices)}; got {text!r}"
                )
            return value
        try:
            number = float(text)
        except ValueError:
            raise UsageProblem(f"--ops {item!r}: {self.name} takes {self.value_name}, a number{self.range_text()}; got {text!r}") from None
        if not math.isfinite(number):
            raise UsageProblem(f"--ops {item!r}: {self.name} takes a finite number; got {text!r}")
        if self.integer:
            if number != int(number):
                raise UsageProblem(f"--ops {item!r}: {self.name} takes a whole number{self.range_text()}; got {text!r}")
            number = int(number)
        too_low = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        too_high = self.high is not None and (number >= self.high if self.high_open else number > self.high)
        if too_low or too_high:
            raise UsageProblem(f"--ops {item!r}: {self.name} {self.value_name} must be{self.range_text()}; got {text}")
        return number

    def range_text(self) -> str:
        if self.low is None and self.high is None:
            return ""
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f" in {lo}{_num(self.low)}, {_num(self.high)}{hi}"


def _num(x: float | None) -> str:
    if x is None:
        return "inf"
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class OpSpec:
    """An operation in a pipeline: canonical name, magnitude (None: default), probability."""

    name: str
    value: Any = None
    prob: float | None = None

    @property
    def definition(self) -> OpDef:
        return OP_DEFS[self.name]

    @property
    def magnitude(self) -> Any:
        return self.definition.default if self.value is None else self.value

    @property
    def probability(self) -> float:
        return self.definition.prob if self.prob is None else self.prob

    def __str__(self) -> str:
        text = self.name
        if self.definition.value_name is not None:
            text += f":{_num(self.magnitude) if not isinstance(self.magnitude, str) else self.magnitude}"
        if self.prob is not None:
            text += f"@{_num(self.prob)}"
        return text


OP_DEFS: dict[str, OpDef] = {d.name: d for d in [
    OpDef("flip", "mirror left-right (h) and/or top-bottom (v), each with the probability (default 0.5)",
          "AXES", "h", choices=("h", "v", "hv", "vh"), prob=0.5, geometric=True),
    OpDef("rotate", "rotate by an angle drawn uniformly from [-DEG, DEG] (positive = counter-clockwise)",
          "DEG", 15.0, 0, 180, geometric=True),
    OpDef("shift", "translate by whole pixels, up to FRAC of the width and height in each direction",
          "FRAC", 0.1, 0, 1, high_open=True, geometric=True),
    OpDef("zoom", "scale the content by a factor drawn from [1-FRAC, 1+FRAC] (>1 zooms in)",
          "FRAC", 0.1, 0, 1, high_open=True, geometric=True),
    OpDef("shear", "shear along x by an angle drawn from [-DEG, DEG]", "DEG", 10.0, 0, 45, geometric=True),
    OpDef("brightness", "multiply brightness by a factor from [1-F, 1+F]", "F", 0.2, 0, 1),
    OpDef("contrast", "scale contrast by a factor from [1-F, 1+F]", "F", 0.2, 0, 1),
    OpDef("colour", "scale saturation by a factor from [1-F, 1+F] (no effect on grey images)", "F", 0.2, 0, 1),
    OpDef("sharpness", "scale sharpness by a factor from [1-F, 1+F]", "F", 0.5, 0, 1),
    OpDef("autocontrast", "stretch the histogram to 0-255, ignoring CUTOFF percent at each end", "CUTOFF", 0.0, 0, 50, high_open=True),
    OpDef("equalize", "equalise the histogram (Pillow's algorithm, as torchvision's: no effect below 256 pixels)"),
    OpDef("whiten", "per-image standardisation: (x - mean) / std over all pixels and channels, "
          "then +-K std mapped onto 0-255", "K", 2.0, 0, 10, low_open=True),
    OpDef("grayscale", "drop colour (an RGB image stays 3-channel, with equal channels)"),
    OpDef("blur", "Gaussian blur with sigma (pixels) drawn from [0, SIGMA]", "SIGMA", 1.0, 0, 50, low_open=True),
    OpDef("noise", "add Gaussian noise with std drawn from [0, STD] (fraction of 255)", "STD", 0.03, 0, 1, low_open=True),
    OpDef("crop", "crop a random part covering a fraction [MIN, 1] of the area (same aspect ratio), resize it back", "MIN", 0.8, 0, 1, low_open=True),
    OpDef("posterize", "keep a random number of bits in [BITS, 8] per channel", "BITS", 4, 1, 8, integer=True),
    OpDef("solarize", "invert pixels above a threshold drawn from [T, 255]", "T", 128, 0, 255, integer=True),
    OpDef("trivial", "one op of TrivialAugmentWide with a random magnitude: identity, shear x/y (up to "
          "atan 0.99), translate x/y (up to 32 px), rotate (up to 135 deg), brightness, colour, contrast, "
          "sharpness (factor 1 +- 0.99), posterize (8-2 bits), solarize, autocontrast or equalize",
          geometric=False),
]}

FILLS = ("edge", "border", "black", "white")

ALIASES = {
    "rotation": "rotate", "translate": "shift", "scale": "zoom", "color": "colour", "saturation": "colour",
    "equalise": "equalize", "greyscale": "grayscale", "gray": "grayscale", "grey": "grayscale",
    "standardize": "whiten", "standardise": "whiten", "gaussian_blur": "blur", "gaussian_noise": "noise",
    "trivialaugment": "trivial", "hflip": "flip", "mirror": "flip",
}



def _offline_twin(geometry: dict[str, Any]) -> tuple[OpSpec, ...]:
    """The ops of a ``train --augment`` preset: flip, rotate, shift, zoom, then TrivialAugmentWide's one op."""
    ops = [OpSpec("flip", "h")] if geometry.get("flip") else []
    ops += [OpSpec(op, geometry[key]) for key, op in (("rotation", "rotate"), ("shift", "shift"), ("zoom", "zoom"))
            if geometry.get(key)]
    if geometry.get("policy") == "trivialaugment":
        ops.append(OpSpec("trivial"))
    return tuple(ops)


# The offline twins of ``imgcls train --augment``: built from its presets, so the magnitudes are the same.
PRESETS: dict[str, tuple[OpSpec, ...]] = {name: _offline_twin(geometry) for name, geometry in AUGMENT_PRESETS.items()
                                          if geometry}

OPS_SYNTAX = """\
--ops is a comma-separated list applied in order, each item OP[:VALUE][@PROB]:
VALUE is the op's magnitude (its default when left out), PROB the chance the op is
applied to an image (default 1, flip 0.5 per axis). A preset name (light, standard,
strong) may stand for its ops. Example: --ops rotate:20,shift:0.1,flip,noise:0.05@0.5"""


def ops_table() -> list[tuple[str, str, str]]:
    """(syntax, default, meaning) rows for --help and the man page."""
    rows = []
    for d in OP_DEFS.values():
        syntax = d.name if d.value_name is None else f"{d.name}[:{d.value_name}]"
        default = "" if d.value_name is None else _num(d.default) if not isinstance(d.default, str) else d.default
        limits = f"; {d.value_name}{d.range_text()}" if d.value_name and d.low is not None else ""
        rows.append((syntax, default, d.summary + limits))
    return rows


def describe_pipeline(ops: Sequence[OpSpec]) -> str:
    return ",".join(str(op) for op in ops)


def parse_ops(text: str) -> list[OpSpec]:
    """Parse ``--ops``; a mistake raises UsageProblem naming the item and what was expected."""
    specs: list[OpSpec] = []
    if not text or not text.strip():
        raise UsageProblem("--ops is empty; e.g. --ops rotate:15,shift:0.1,flip")
    for position, raw in enumerate(text.split(","), 1):
        item = raw.strip()
        if not item:
            raise UsageProblem(f"--ops {text!r}: item {position} is empty (two commas?)")
        body, prob_text = item, None
        if "@" in item:
            body, prob_text = item.split("@", 1)
        name_text, value_text = body, None
        if ":" in body:
            name_text, value_text = body.split(":", 1)
        name = name_text.strip().lower().replace("-", "_")
        if name in PRESETS:
            if value_text is not None or prob_text is not None:
                raise UsageProblem(f"--ops {item!r}: a preset name takes no value or probability")
            specs.extend(PRESETS[name])
            continue
        name = ALIASES.get(name, name)
        if name not in OP_DEFS:
            raise UsageProblem(
                f"--ops {item!r}: unknown operation {name_text.strip()!r}{suggest(name, list(OP_DEFS) + list(PRESETS))}; "
                f"known: {', '.join(OP_DEFS)}; presets: {', '.join(PRESETS)}"
            )
        definition = OP_DEFS[name]
        if value_text is not None and not value_text.strip():
            raise UsageProblem(f"--ops {item!r}: missing value after ':'")
        value = definition.parse_value(value_text.strip() if value_text is not None else None, item)
        prob = None
        if prob_text is not None:
            try:
                prob = float(prob_text)
            except ValueError:
                raise UsageProblem(f"--ops {item!r}: probability after '@' must be a number in [0, 1]; got {prob_text!r}") from None
            if not 0.0 <= prob <= 1.0:
                raise UsageProblem(f"--ops {item!r}: probability after '@' must be in [0, 1]; got {prob_text}")
        specs.append(OpSpec(name, value, prob))
    return specs


def pipeline_for(preset: str | None, ops: str | None, flip: bool = True) -> list[OpSpec]:
    """The ops for ``--preset`` or ``--ops`` (ops wins; both given is refused by the command).

    ``flip=False`` drops every flip (train's ``--no-flip``: digits, text, handed things).
    """
    if ops is not None:
        specs = parse_ops(ops)
    elif preset in PRESETS:
        specs = list(PRESETS[preset])
    else:
        raise UsageProblem(f"--preset {preset!r}: unknown preset{suggest(str(preset), PRESETS)}; known: {', '.join(PRESETS)}")
    return specs if flip else [op for op in specs if op.name != "flip"]


# -- geometry -----------------------------------------------------------------------------
def _centred(linear: np.ndarray, width: int, height: int) -> np.ndarray:
    """A 3x3 forward matrix applying ``linear`` (2x2) about the image centre."""
    cx, cy = width / 2.0, height / 2.0
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = [cx, cy] - linear @ [cx, cy]
    return m


def geometric_matrix(op: str, params: dict, width: int, height: int) -> np.ndarray:
    """The forward 3x3 matrix (input -> output coordinates, pixel centres at +0.5) of an op."""
    if op == "flip":
        m = np.eye(3)
        if "h" in params["axes"]:
            m = np.array([[-1.0, 0, width], [0, 1, 0], [0, 0, 1]]) @ m
        if "v" in params["axes"]:
            m = np.array([[1.0, 0, 0], [0, -1, height], [0, 0, 1]]) @ m
        return m
    if op == "rotate":
        t = math.radians(params["degrees"])
        return _centred(np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]), width, height)
    if op == "shift":
        m = np.eye(3)
        m[0, 2], m[1, 2] = params["dx"], params["dy"]
        return m
    if op == "zoom":
        s = params["scale"]
        return _centred(np.array([[s, 0.0], [0.0, s]]), width, height)
    if op == "shear":
        t = math.tan(math.radians(params["degrees"]))
        linear = np.array([[1.0, 0.0], [t, 1.0]]) if params.get("axis") == "y" else np.array([[1.0, t], [0.0, 1.0]])
        return _centred(linear, width, height)
    raise KeyError(op)


def _is_identity(m: np.ndarray) -> bool:
    return bool(abs(m[0, 0] - 1) < 1e-12 and abs(m[1, 1] - 1) < 1e-12 and abs(m[0, 1]) < 1e-12
                and abs(m[1, 0]) < 1e-12 and abs(m[0, 2]) < 1e-9 and abs(m[1, 2]) < 1e-9)


def apply_affine(img, forward: np.ndarray, fill: str = "edge") -> Any:
    """Resample once with the inverse of ``forward``; exact (nearest) when it maps pixels to pixels.

    ``fill`` ``edge`` repeats the nearest edge pixel (Keras' fill_mode="nearest", train's
    border padding): the image is edge-padded by half its size first, and anything beyond
    that gets the border colour. ``border``/``black``/``white`` fill with one colour.
    """
    from PIL import Image

    if _is_identity(forward):
        return img
    inverse = np.linalg.inv(forward)
    coeffs = [float(v) for v in inverse[:2].reshape(-1)]
    a, b, c, d, e, f = coeffs
    # a signed permutation of the axes plus a whole-pixel offset: nearest neighbour is exact
    exact = all(abs(v - round(v)) < 1e-9 for v in coeffs) and sorted(abs(round(v)) for v in (a, b, d, e)) == [0, 0, 1, 1]
    resample = Image.Resampling.NEAREST if exact else Image.Resampling.BILINEAR
    if fill != "edge":
        return img.transform(img.size, Image.Transform.AFFINE, tuple(coeffs), resample=resample, fillcolor=fill_colour(img, fill))
    w, h = img.size
    pad = (max(w, h) + 1) // 2
    arr = np.asarray(img)
    padded = Image.fromarray(arr.take(_edge_index(h, pad), 0).take(_edge_index(w, pad), 1), img.mode)
    coeffs[2] += pad  # input coordinates move by the padding
    coeffs[5] += pad
    # the border colour is only needed where the output reaches beyond the padding
    corners = [(a * x + b * y + coeffs[2], d * x + e * y + coeffs[5]) for x in (0, w) for y in (0, h)]
    inside = all(1 <= cx <= w + 2 * pad - 1 and 1 <= cy <= h + 2 * pad - 1 for cx, cy in corners)  # 1 px margin: bilinear
    colour = (0 if img.mode == "L" else (0, 0, 0)) if inside else fill_colour(img, "border")
    return padded.transform(img.size, Image.Transform.AFFINE, tuple(coeffs), resample=resample, fillcolor=colour)


@functools.lru_cache(maxsize=64)
def _edge_index(n: int, pad: int) -> np.ndarray:
    """Indices that repeat the first and last rows/columns ``pad`` times (edge padding by take())."""
    return np.clip(np.arange(-pad, n + pad), 0, n - 1)


# -- photometric ops (deterministic given their params) ------------------------------------
def _enhance(kind: str):
    def run(img, params):
        from PIL import ImageEnhance

        return getattr(ImageEnhance, kind)(img).enhance(params["factor"])

    return run


def _autocontrast(img, params):
    from PIL import ImageOps

    return ImageOps.autocontrast(img, cutoff=params.get("cutoff", 0))


def _equalize(img, params):
    from PIL import ImageOps

    return ImageOps.equalize(img)


def _posterize(img, params):
    from PIL import ImageOps

    return ImageOps.posterize(img, int(params["bits"]))


def _solarize(img, params):
    from PIL import ImageOps

    return ImageOps.solarize(img, int(params["threshold"]))


def _whiten(img, params):
    from PIL import Image

    a = np.asarray(img, dtype=np.float32)
    std = float(a.std())
    z = (a - float(a.mean())) / std if std > 1e-6 else np.zeros_like(a)  # a flat image stays flat (mid-grey)
    out = np.clip(np.rint(127.5 + z * (127.5 / params["k"])), 0, 255).astype(np.uint8)
    return Image.fromarray(out, img.mode)


def _grayscale(img, params):
    if img.mode == "L":
        return img
    return img.convert("L").convert(img.mode)


def _blur(img, params):
    from PIL import ImageFilter

    if params["sigma"] <= 0:
        return img
    return img.filter(ImageFilter.GaussianBlur(params["sigma"]))


def _noise(img, params):
    """The pixel draws come from params['seed'], so the recorded transform replays exactly."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float32)
    gen = np.random.default_rng(params["seed"])
    noisy = a + gen.standard_normal(a.shape, dtype=np.float32) * np.float32(params["std"] * 255.0)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), img.mode)


def _crop(img, params):
    from PIL import Image

    box = (params["left"], params["top"], params["left"] + params["width"], params["top"] + params["height"])
    return img.resize(img.size, Image.BILINEAR, box=box)


APPLY: dict[str, Callable] = {
    "brightness": _enhance("Brightness"),
    "contrast": _enhance("Contrast"),
    "colour": _enhance("Color"),
    "sharpness": _enhance("Sharpness"),
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "whiten": _whiten,
    "grayscale": _grayscale,
    "blur": _blur,
    "noise": _noise,
    "crop": _crop,
    "posterize": _posterize,
    "solarize": _solarize,
}

GEOMETRIC = frozenset(d.name for d in OP_DEFS.values() if d.geometric)


# -- sampling -------------------------------------------------------------------------------
def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def _factor(m: float, rng: np.random.Generator) -> dict:
    return {"factor": _r(rng.uniform(1.0 - m, 1.0 + m))}


# torchvision's TrivialAugmentWide: 14 ops, 31 magnitude bins, a random sign where it applies
TRIVIAL_CHOICES = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
                   "colour", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
TRIVIAL_BINS = 31


def _sample_trivial(rng: np.random.Generator) -> list[Transform]:
    choice = TRIVIAL_CHOICES[int(rng.integers(len(TRIVIAL_CHOICES)))]
    level = int(rng.integers(TRIVIAL_BINS))
    frac = level / (TRIVIAL_BINS - 1)
    sign = -1.0 if rng.random() < 0.5 else 1.0
    if choice == "identity":
        return []
    if choice in ("shear_x", "shear_y"):
        degrees = sign * math.degrees(math.atan(0.99 * frac))
        return [{"op": "shear", "params": {"degrees": _r(degrees, 3), "axis": choice[-1]}}]
    if choice in ("translate_x", "translate_y"):
        px = int(round(sign * 32.0 * frac))
        return [{"op": "shift", "params": {"dx": px, "dy": 0} if choice == "translate_x" else {"dx": 0, "dy": px}}]
    if choice == "rotate":
        return [{"op": "rotate", "params": {"degrees": _r(sign * 135.0 * frac, 3)}}]
    if choice in ("brightness", "colour", "contrast", "sharpness"):
        return [{"op": choice, "params": {"factor": _r(1.0 + sign * 0.99 * frac)}}]
    if choice == "posterize":
        return [{"op": "posterize", "params": {"bits": int(8 - round(level / ((TRIVIAL_BINS - 1) / 6)))}}]
    if choice == "solarize":
        return [{"op": "solarize", "params": {"threshold": int(round(255 * (1 - frac)))}}]
    if choice == "autocontrast":
        return [{"op": "autocontrast", "params": {"cutoff": 0}}]
    return [{"op": "equalize", "params": {}}]


def sample_op(spec: OpSpec, rng: np.random.Generator, width: int, height: int) -> list[Transform]:
    """Concrete parameters for one op on one image (empty when the op is skipped)."""
    name, m = spec.name, spec.magnitude
    p = spec.probability
    if name == "flip":
        axes = "".join(axis for axis in "hv" if axis in m and rng.random() < p)
        return [{"op": "flip", "params": {"axes": axes}}] if axes else []
    if p < 1.0 and rng.random() >= p:
        return []
    if name == "rotate":
        return [{"op": name, "params": {"degrees": _r(rng.uniform(-m, m), 3)}}]
    if name == "shift":
        # whole pixels, as torchvision's RandomAffine: no interpolation blur for a pure shift
        dx = int(round(rng.uniform(-m, m) * width))
        dy = int(round(rng.uniform(-m, m) * height))
        return [{"op": name, "params": {"dx": dx, "dy": dy}}]
    if name == "zoom":
        return [{"op": name, "params": {"scale": _r(rng.uniform(1.0 - m, 1.0 + m))}}]
    if name == "shear":
        return [{"op": name, "params": {"degrees": _r(rng.uniform(-m, m), 3)}}]
    if name in ("brightness", "contrast", "colour", "sharpness"):
        return [{"op": name, "params": _factor(m, rng)}]
    if name == "autocontrast":
        return [{"op": name, "params": {"cutoff": m}}]
    if name in ("equalize", "grayscale"):
        return [{"op": name, "params": {}}]
    if name == "whiten":
        return [{"op": name, "params": {"k": m}}]
    if name == "blur":
        return [{"op": name, "params": {"sigma": _r(rng.uniform(0.0, m), 3)}}]
    if name == "noise":
        return [{"op": name, "params": {"std": _r(rng.uniform(0.0, m)), "seed": int(rng.integers(2**31))}}]
    if name == "crop":
        area = rng.uniform(m, 1.0)
        side = math.sqrt(area)
        w, h = side * width, side * height
        left = rng.uniform(0, width - w)
        top = rng.uniform(0, height - h)
        return [{"op": name, "params": {"left": _r(left, 3), "top": _r(top, 3), "width": _r(w, 3), "height": _r(h, 3)}}]
    if name == "posterize":
        return [{"op": name, "params": {"bits": int(rng.integers(m, 9))}}]
    if name == "solarize":
        return [{"op": name, "params": {"threshold": int(rng.integers(m, 256))}}]
    if name == "trivial":
        return _sample_trivial(rng)
    raise KeyError(name)  # pragma: no cover - OP_DEFS and this function agree


# -- applying -------------------------------------------------------------------------------
def replay(img, transforms: Sequence[Transform], fill: str = "edge"):
    """Apply a recorded transform list exactly (consecutive geometric ops fused into one resampling)."""
    if fill not in FILLS:
        raise UsageProblem(f"unknown fill {fill!r}: one of {', '.join(FILLS)}")
    pending: np.ndarray | None = None
    for t in transforms:
        op, params = t["op"], t.get("params", {})
        if op in GEOMETRIC:
            m = geometric_matrix(op, params, img.width, img.height)
            pending = m if pending is None else m @ pending
            continue
        if pending is not None:
            img = apply_affine(img, pending, fill)
            pending = None
        if op not in APPLY:
            raise UsageProblem(f"unknown transform op {op!r}")
        img = APPLY[op](img, params)
    if pending is not None:
        img = apply_affine(img, pending, fill)
    return img


def augment_image(img, ops: Sequence[OpSpec], rng: np.random.Generator, fill: str = "edge"):
    """One augmented version of ``img``: (image, transforms actually applied).

    Parameters are drawn for all ops first (from the image's own generator), then applied
    by :func:`replay`, so the returned list reproduces the image exactly.
    """
    transforms: list[Transform] = []
    for spec in ops:
        transforms.extend(sample_op(spec, rng, img.width, img.height))
    return replay(img, transforms, fill), transforms


def run_op(img, spec: OpSpec, rng: np.random.Generator, fill: str = "edge"):
    """One op as a pure function of (image, parameters, generator) -> (image, transforms)."""
    return augment_image(img, [spec], rng, fill)


# -- manifests ------------------------------------------------------------------------------
@dataclass
class AugmentPlan:
    """What a run will write: per source record, the copy numbers and their output names."""

    sources: dict[int, list[tuple[int, str]]] = field(default_factory=dict)  # record index -> [(copy, relpath)]
    per_class_before: dict[str, int] = field(default_factory=dict)
    per_class_after: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.sources.values())


def is_source(record: dict) -> bool:
    """Only original training images are augmented (never val/test, never earlier copies)."""
    return record.get("split", "train") == "train" and not record.get("transform") and not record.get("perturbation")


def plan_copies(
    records: Sequence[dict],
    keys: Sequence[str],
    classes: Sequence[str],
    copies: int,
    balance: bool = False,
    per_class: int | None = None,
    ext: str = ".png",
) -> AugmentPlan:
    """Decide how many copies each training image gets and where they go.

    Without balancing every source gets ``copies``. With balancing each class is brought
    up to ``target * (1 + copies)`` training images, where target is the majority class's
    count (or ``per_class``); extra copies go round-robin over the class's sources in
    manifest order. Classes already at or above the target get none (originals are never
    dropped).
    """
    index_of = {c: i for i, c in enumerate(classes)}
    plan = AugmentPlan()
    by_class: dict[str, list[int]] = {}
    train_count: dict[str, int] = {}
    for i, record in enumerate(records):
        if record.get("split", "train") != "train":
            continue
        label = record.get("label")
        label_key = label if label is not None else ""
        train_count[label_key] = train_count.get(label_key, 0) + 1
        if is_source(record):
            by_class.setdefault(label_key, []).append(i)
    plan.per_class_before = dict(train_count)

    def folder(label_key: str) -> str:
        return f"{index_of[label_key]:03d}" if label_key in index_of else "unlabelled"

    counts: dict[int, int] = {}
    if balance or per_class is not None:
        base = per_class if per_class is not None else max(train_count.values(), default=0)
        target = base * (1 + copies)
        for label_key, sources in by_class.items():
            need = max(0, target - train_count[label_key])
            n = len(sources)
            for j, i in enumerate(sources):
                counts[i] = need // n + (1 if j < need % n else 0)
    else:
        for sources in by_class.values():
            for i in sources:
                counts[i] = copies
    after = dict(train_count)
    for label_key, sources in by_class.items():
        for i in sources:
            k = counts.get(i, 0)
            if k:
                plan.sources[i] = [(c, f"{folder(label_key)}/{keys[i]}-{c}{ext}") for c in range(k)]
                after[label_key] += k
    plan.per_class_after = after
    return plan


@dataclass(frozen=True)
class AugmentConfig:
    """One augment run's settings: what ``augment_manifest`` does and what each worker needs.

    The command's option defaults are these (tests/test_augment.py ties them).
    """

    ops: tuple[OpSpec, ...]
    copies: int = 2  # per training image; the command passes 0 when balancing without --copies
    balance: bool = False
    per_class: int | None = None
    seed: int = 0
    fill: str = "edge"
    fmt: str = "png"
    jobs: int = 0  # worker processes; 0: all usable cores
    force: bool = False  # write into a non-empty out_dir
    in_process_below: int | None = None  # None: imgcls.derived.IN_PROCESS_BELOW

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))


def augment_task(config: AugmentConfig, task: tuple[str, str, list[tuple[int, str]]]) -> list[dict] | dict:
    """Worker: decode one source once, write its copies; a bad source gives {"error": message}."""
    from imgcls.derived import derive_rng, normalise_mode, save_derived
    from imgcls.images import ImageRejected, open_image

    src, key, copies = task
    try:
        img = normalise_mode(open_image(src))
    except ImageRejected as exc:
        return {"error": str(exc)}
    out = []
    for copy, dest in copies:
        rng = derive_rng(config.seed, key, "augment", copy)
        new, transforms = augment_image(img, config.ops, rng, config.fill)
        info = save_derived(new, dest, config.fmt)
        info["transform"] = transforms
        out.append(info)
    return out


def augment_manifest(
    header: dict,
    records: list[dict],
    resolve: Callable[[dict], Any],
    out_dir: str,
    config: AugmentConfig,
    progress: Callable[[int], None] | None = None,
    emit: Callable[[dict, list[dict]], None] | None = None,
) -> tuple[dict, list[dict], AugmentPlan]:
    """Write augmented copies of the training images; return (header, records, plan).

    The records are the input records in order, each source followed by its copies.
    Images are written into a staging folder and moved into ``out_dir`` only when all are
    written and ``emit(header, records)`` (the command's stdout write) has succeeded; on
    any failure the staging folder is removed and the error re-raised.
    """
    from imgcls.derived import (FORMATS, IN_PROCESS_BELOW, OutputDir, collect_results, finish_output, record_keys,
                                run_tasks)

    output = OutputDir(out_dir, force=config.force)
    keys = record_keys(records)
    classes = list(header.get("classes") or [])
    plan = plan_copies(records, keys, classes, config.copies, config.balance, config.per_class, FORMATS[config.fmt])
    order = sorted(plan.sources)
    tasks = [(str(resolve(records[i])), keys[i], [(c, output.staged(rel)) for c, rel in plan.sources[i]])
             for i in order]
    output.make_dirs({rel.split("/")[0] for i in order for _, rel in plan.sources[i]})
    below = IN_PROCESS_BELOW if config.in_process_below is None else config.in_process_below
    stream = run_tasks(partial(augment_task, config), tasks, config.jobs, weight=max(1, config.copies),
                       in_process_below=below)
    results = collect_results(output, stream, order, "augmented", lambda i, j, info: plan.sources[i][j][1], progress,
                              commit=False)
    try:
        new_header, out_records = _augmented_manifest(header, records, results, config, output, plan)
    except BaseException:
        output.abort()
        raise
    finish_output(output, (lambda: emit(new_header, out_records)) if emit is not None else None)
    return new_header, out_records, plan


def _augmented_manifest(header: dict, records: list[dict], results: dict, config: AugmentConfig, output: Any,
                        plan: AugmentPlan) -> tuple[dict, list[dict]]:
    out_records: list[dict] = []
    for i, record in enumerate(records):
        out_records.append(record)
        for info in results.get(i, []):
            copy = dict(record)
            copy.update(info)
            copy["split"] = "train"
            copy["origin"] = record["path"]
            if record.get("sha256"):
                copy["origin_sha256"] = record["sha256"]
            copy.pop("perturbation", None)
            copy.pop("severity", None)
            out_records.append(copy)
    new_header = dict(header)
    new_header["augment"] = {
        "ops": describe_pipeline(config.ops),
        "copies": config.copies,
        "balance": bool(config.balance or config.per_class is not None),
        **({"per_class": config.per_class} if config.per_class is not None else {}),
        "seed": config.seed,
        "fill": config.fill,
        "format": config.fmt,
        "out": str(output.path),
        "written": plan.total,
    }
    return new_header, out_records
