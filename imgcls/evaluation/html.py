"""``imgcls eval --html FILE``: one self-contained page built from the ``--json`` document.

Why one large module: it is one page's renderer (escaping, numbers, inline SVG charts,
sections, then about 100 lines of the page's CSS and script); :mod:`imgcls.audit.html` builds
its own page from the escaping and table helpers, the CSS and the script here.

Everything the page shows as a number comes from the eval document (the same object
``--json`` prints), rendered here; the only other inputs are pictures and the run's
``history.jsonl`` (:mod:`imgcls.evaluation.htmlassets` gathers those). The page needs no
network: charts are inline SVG drawn here, pictures are ``data:`` URIs, fonts are the
system's, and a Content-Security-Policy forbids every request except ``data:`` images
and the one inline script (sorting tables), allowed by its hash.

Escaping is not optional: :func:`el` escapes every text child and attribute value, and
only markup built by :func:`el` itself (a :class:`Markup`) passes through unescaped.
Labels and file names are data, never markup. The document is also embedded as JSON
(``<script type="application/json" id="imgcls-eval-data">``) with ``<``, ``>``, ``&``
and U+2028/U+2029 escaped, so the page carries its own data. Decisions:
docs/design/html-report.md.
"""

from __future__ import annotations

import base64
import hashlib
import html as _html
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from imgcls.metadata import is_number

# -- escaping ---------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Markup(str):
    """Text that is already HTML (built by :func:`el`): inserted as is."""

    __slots__ = ()


def esc(value: Any) -> Markup:
    """Escaped text (control characters other than tab and newlines become U+FFFD)."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("")
    return Markup(_html.escape(_CONTROL.sub("\ufffd", str(value)), quote=True))


_VOID = frozenset({"img", "meta", "br", "link", "hr", "col"})


def _attrs(attrs: dict[str, Any]) -> str:
    out = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = key.rstrip("_").replace("_", "-")
        out.append(f" {name}" if value is True else f' {name}="{esc(value)}"')
    return "".join(out)


def _flatten(children: Iterable[Any]) -> Iterable[Any]:
    for child in children:
        if isinstance(child, (list, tuple)) or (hasattr(child, "__next__")):
            yield from _flatten(child)
        elif child is not None:
            yield child


def el(name: str, /, *children: Any, **attrs: Any) -> Markup:
    """``<name attrs>children</name>``: text children and attribute values escaped, Markup kept.

    Attribute names come from code (``class_`` -> ``class``, ``data_value`` -> ``data-value``).
    """
    if name in _VOID:
        return Markup(f"<{name}{_attrs(attrs)}>")
    inner = "".join(esc(c) for c in _flatten(children))
    return Markup(f"<{name}{_attrs(attrs)}>{inner}</{name}>")


def join(parts: Iterable[Any]) -> Markup:
    return Markup("".join(esc(p) for p in _flatten(parts)))


def script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no '</script>', no HTML comment openers, no line separators."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


# -- numbers ----------------------------------------------------------------------------------------

DASH = "\u2013"


def pct(value: Any, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}%" if is_number(value) else DASH


def num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not is_number(value):
        return DASH if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def raw_value(value: Any) -> str:
    """The exact value for data-value (and sorting): repr round-trips a float exactly, as JSON does."""
    if isinstance(value, bool) or not is_number(value):
        return ""
    return repr(value)


def numcell(value: Any, text: str | None = None, **attrs: Any) -> Markup:
    attrs.setdefault("class_", "n")
    return el("td", num(value) if text is None else text, data_value=raw_value(value), **attrs)


# -- page assets (pictures and history, gathered by htmlassets) --------------------------------------

@dataclass
class ModelAssets:
    history: list[dict[str, Any]] = field(default_factory=list)
    history_source: str | None = None
    # one entry per errors.most_confident item: {"image", "cam_pred", "cam_true"} data URIs (or None)
    mistakes: list[dict[str, Any]] = field(default_factory=list)  # data URIs (or None), cam_true_empty
    cam_layer: str | None = None  # which block Grad-CAM explains, in words
    notes: list[str] = field(default_factory=list)


@dataclass
class ReportAssets:
    models: list[ModelAssets] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)  # path -> thumbnail data URI (agreement examples)
    notes: list[str] = field(default_factory=list)


# -- SVG charts -------------------------------------------------------------------------------------

# Okabe-Ito colours (distinguishable with colour-blindness) plus a dash pattern and a marker shape
# per series, so lines stay apart in greyscale too.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
DASHES = ["", "6 3", "2 3", "8 3 2 3", "4 2 1 2", "10 4"]
MARKERS = ["circle", "square", "triangle", "diamond", "circle-open", "square-open"]


def _marker(kind: str, x: float, y: float, colour: str) -> Markup:
    r = 3.2
    fill = "white" if kind.endswith("-open") else colour
    kind = kind.removesuffix("-open")
    if kind == "square":
        return el("rect", x=f"{x - r:.1f}", y=f"{y - r:.1f}", width=f"{2 * r:.1f}", height=f"{2 * r:.1f}",
                  fill=fill, stroke=colour)
    if kind == "triangle":
        pts = f"{x:.1f},{y - r - 0.8:.1f} {x - r - 0.4:.1f},{y + r:.1f} {x + r + 0.4:.1f},{y + r:.1f}"
        return el("polygon", points=pts, fill=fill, stroke=colour)
    if kind == "diamond":
        pts = f"{x:.1f},{y - r - 0.8:.1f} {x + r + 0.8:.1f},{y:.1f} {x:.1f},{y + r + 0.8:.1f} {x - r - 0.8:.1f},{y:.1f}"
        return el("polygon", points=pts, fill=fill, stroke=colour)
    return el("circle", cx=f"{x:.1f}", cy=f"{y:.1f}", r=f"{r:.1f}", fill=fill, stroke=colour)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    out = []
    t = start
    while t <= hi + 1e-9 * step:
        out.append(round(t, 10))
        t += step
    return out


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    style: int = 0
    title: str | None = None  # tooltip prefix per point


def line_chart(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str,
               ylim: tuple[float, float] | None = None, xcategories: Sequence[str] | None = None,
               vlines: Sequence[tuple[float, str]] = (), hline: tuple[float, str] | None = None,
               width: int = 440, height: int = 270, yfmt=None) -> Markup:
    """A line chart as inline SVG, with a legend; every point carries a tooltip with its value."""
    left, right, top, bottom = 52, 12, 28, 42 + 16 * ((len(series) + 1) // 2)
    pw, ph = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + ([hline[0]] if hline else [])
    if xcategories is not None:
        xlo, xhi = -0.3, len(xcategories) - 0.7
    else:
        xlo, xhi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if xhi == xlo:
            xlo, xhi = xlo - 0.5, xhi + 0.5
    if ylim is not None:
        ylo, yhi = ylim
    else:
        ylo, yhi = (min(ys), max(ys)) if ys else (0.0, 1.0)
        pad = (yhi - ylo) * 0.08 or 0.5
        ylo, yhi = ylo - pad, yhi + pad
    fx = lambda x: left + (x - xlo) / (xhi - xlo) * pw  # noqa: E731
    fy = lambda y: top + (1 - (y - ylo) / (yhi - ylo)) * ph  # noqa: E731
    yfmt = yfmt or (lambda v: f"{v:g}")
    parts: list[Any] = [el("title", title)]
    parts.append(el("text", title, x=str(left), y="16", class_="ct"))
    for t in _ticks(ylo, yhi):
        y = fy(t)
        parts.append(el("line", x1=str(left), x2=str(left + pw), y1=f"{y:.1f}", y2=f"{y:.1f}", class_="grid"))
        parts.append(el("text", yfmt(t), x=str(left - 6), y=f"{y + 4:.1f}", class_="tick", text_anchor="end"))
    if xcategories is not None:
        xt: list[tuple[float, str]] = [(i, name) for i, name in enumerate(xcategories)]
    else:
        integer = all(float(x).is_integer() for x in xs)
        xt = [(t, f"{t:g}") for t in _ticks(xlo, xhi, 6) if not integer or float(t).is_integer()]
    for t, label in xt:
        parts.append(el("text", label, x=f"{fx(t):.1f}", y=str(top + ph + 16), class_="tick", text_anchor="middle"))
    parts.append(el("rect", x=str(left), y=str(top), width=str(pw), height=str(ph), class_="frame"))
    parts.append(el("text", xlabel, x=f"{left + pw / 2:.1f}", y=str(top + ph + 32), class_="axis",
                    text_anchor="middle"))
    parts.append(el("text", ylabel, x="12", y=f"{top + ph / 2:.1f}", class_="axis", text_anchor="middle",
                    transform=f"rotate(-90 12 {top + ph / 2:.1f})"))
    for k, (x, label) in enumerate(vlines):
        px = fx(x)
        parts.append(el("line", x1=f"{px:.1f}", x2=f"{px:.1f}", y1=str(top), y2=str(top + ph), class_="mark"))
        right_side = px < left + pw * 0.8  # near the right edge, the label goes left of the line
        parts.append(el("text", label, x=f"{px + 3 if right_side else px - 3:.1f}", y=str(top + 11 + 11 * (k % 2)),
                        class_="tick", text_anchor=None if right_side else "end"))
    if hline is not None:
        py = fy(hline[0])
        parts.append(el("line", x1=str(left), x2=str(left + pw), y1=f"{py:.1f}", y2=f"{py:.1f}", class_="mark"))
        parts.append(el("text", hline[1], x=str(left + pw - 3), y=f"{py - 4:.1f}", class_="tick",
                        text_anchor="end"))
    for s in series:
        colour = PALETTE[s.style % len(PALETTE)]
        dash = DASHES[s.style % len(DASHES)]
        marker = MARKERS[s.style % len(MARKERS)]
        pts = [(fx(x), fy(y)) for x, y in s.points]
        if len(pts) > 1:
            parts.append(el("polyline", points=" ".join(f"{x:.1f},{y:.1f}" for x, y in pts), fill="none",
                            stroke=colour, stroke_width="2", stroke_dasharray=dash or None))
        for (px, py), (x, y) in zip(pts, s.points):
            xname = xcategories[int(x)] if xcategories is not None else f"{x:g}"
            parts.append(el("g", el("title", f"{s.title or s.name}, {xlabel} {xname}: {yfmt(y)}"),
                            _marker(marker, px, py, colour)))
    for i, s in enumerate(series):  # legend below the plot, two per row
        lx = left + (i % 2) * (pw / 2)
        ly = top + ph + 50 + 16 * (i // 2)
        colour = PALETTE[s.style % len(PALETTE)]
        parts.append(el("line", x1=f"{lx:.1f}", x2=f"{lx + 26:.1f}", y1=f"{ly - 4:.1f}", y2=f"{ly - 4:.1f}",
                        stroke=colour, stroke_width="2", stroke_dasharray=DASHES[s.style % len(DASHES)] or None))
        parts.append(_marker(MARKERS[s.style % len(MARKERS)], lx + 13, ly - 4, colour))
        parts.append(el("text", s.name, x=f"{lx + 32:.1f}", y=f"{ly:.1f}", class_="tick"))
    return el("svg", *parts, viewBox=f"0 0 {width} {height}", width=str(width), height=str(height), role="img",
              class_="chart", xmlns="http://www.w3.org/2000/svg")


def reliability_chart(calibration: dict[str, Any], name: str, width: int = 340, height: int = 320) -> Markup:
    """Accuracy per confidence bin as bars, mean confidence as a tick on each, the diagonal = calibrated."""
    left, right, top, bottom = 48, 12, 28, 42
    pw, ph = width - left - right, height - top - bottom
    fx = lambda x: left + x * pw  # noqa: E731
    fy = lambda y: top + (1 - y) * ph  # noqa: E731
    ece = calibration.get("ece")
    title = f"{name}: reliability, ECE {num(ece)}"
    parts: list[Any] = [el("title", title), el("text", title, x=str(left), y="16", class_="ct")]
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(el("line", x1=str(left), x2=str(left + pw), y1=f"{fy(t):.1f}", y2=f"{fy(t):.1f}", class_="grid"))
        parts.append(el("text", f"{t:g}", x=str(left - 6), y=f"{fy(t) + 4:.1f}", class_="tick", text_anchor="end"))
        parts.append(el("text", f"{t:g}", x=f"{fx(t):.1f}", y=str(top + ph + 16), class_="tick",
                        text_anchor="middle"))
    for b in calibration.get("bins") or []:
        if not b.get("count") or not is_number(b.get("accuracy")):
            continue
        x0, x1 = fx(b["lower"]), fx(b["upper"])
        acc, conf = b["accuracy"], b.get("confidence")
        tip = (f"confidence ({b['lower']:g}, {b['upper']:g}]: {b['count']} images, accuracy {num(acc)}, "
               f"mean confidence {num(conf)}")
        bar = el("rect", x=f"{x0 + 1:.1f}", y=f"{fy(acc):.1f}", width=f"{max(0.5, x1 - x0 - 2):.1f}",
                 height=f"{fy(0) - fy(acc):.1f}", class_="bar")
        tick = el("line", x1=f"{x0 + 1:.1f}", x2=f"{x1 - 1:.1f}", y1=f"{fy(conf):.1f}", y2=f"{fy(conf):.1f}",
                  class_="conf") if is_number(conf) else None
        parts.append(el("g", el("title", tip), bar, tick))
    parts.append(el("line", x1=f"{fx(0):.1f}", y1=f"{fy(0):.1f}", x2=f"{fx(1):.1f}", y2=f"{fy(1):.1f}",
                    class_="diag"))
    parts.append(el("rect", x=str(left), y=str(top), width=str(pw), height=str(ph), class_="frame"))
    parts.append(el("text", "confidence (top probability)", x=f"{left + pw / 2:.1f}", y=str(top + ph + 32),
                    class_="axis", text_anchor="middle"))
    parts.append(el("text", "accuracy", x="12", y=f"{top + ph / 2:.1f}", class_="axis", text_anchor="middle",
                    transform=f"rotate(-90 12 {top + ph / 2:.1f})"))
    return el("svg", *parts, viewBox=f"0 0 {width} {height}", width=str(width), height=str(height), role="img",
              class_="chart", xmlns="http://www.w3.org/2000/svg")


# -- page parts -------------------------------------------------------------------------------------

def table(head: Sequence[Any], rows: Iterable[Sequence[Any]], *, caption: str | None = None,
          sortable: bool = True, foot: Iterable[Sequence[Any]] = (), id: str | None = None,
          class_: str = "") -> Markup:
    """A real table; cells that are Markup starting with <td/<th are used as given."""

    def cells(row: Sequence[Any], tag: str = "td") -> Markup:
        out = []
        for i, cell in enumerate(row):
            if isinstance(cell, Markup) and (cell.startswith("<td") or cell.startswith("<th")):
                out.append(cell)
            elif i == 0 and tag == "td":
                out.append(el("th", cell, scope="row"))
            else:
                out.append(el(tag, cell))
        return el("tr", out)

    head_row = el("tr", [el("th", h, scope="col") for h in head])
    parts = [el("caption", caption) if caption else None, el("thead", head_row), el("tbody", [cells(r) for r in rows])]
    foot = list(foot)
    if foot:
        parts.append(el("tfoot", [cells(r) for r in foot]))
    classes = " ".join(c for c in ("sortable" if sortable else "", class_) if c) or None
    return el("table", parts, class_=classes, id=id)


def section(anchor: str, heading: str, *body: Any, level: int = 2) -> Markup:
    return el("section", el(f"h{level}", heading), body, id=anchor, aria_labelledby=None)


def note(text: Any) -> Markup:
    return el("p", text, class_="note")


_KNOWN_MODEL_KEYS = ("model", "n_images", "unknown", "metrics", "per_class", "confusion_matrix", "calibration",
                     "errors", "robustness", "speed")
_KNOWN_TOP_KEYS = ("schema", "schema_version", "imgcls_version", "manifest", "split", "n_selected",
                   "n_unlabelled", "n_unsplit_as_test", "settings", "models", "comparison", "agreement")
METRIC_LABELS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "top_k_accuracy": "top-k accuracy",
    "macro_precision": "macro precision", "macro_recall": "macro recall", "macro_f1": "macro F1",
    "weighted_precision": "weighted precision", "weighted_recall": "weighted recall", "weighted_f1": "weighted F1",
    "log_loss": "log loss", "ece": "ECE (expected calibration error)", "mean_confidence": "mean confidence",
    "top_k": "k of top-k",
}
_PERCENT_METRICS = {"accuracy", "balanced_accuracy", "top_k_accuracy", "mean_confidence"}


def metric_cell(key: str, value: Any, best: bool = False) -> Markup:
    text = pct(value) if key in _PERCENT_METRICS else num(value)
    return numcell(value, text, class_="n best" if best else "n")


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts and lists as (dotted.key, scalar) pairs: the generic view of blocks this page
    does not know (a newer imgcls, or another branch's additions)."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        out = []
        for i, v in enumerate(value[:200]):
            out += flatten(v, f"{prefix}[{i}]")
        if len(value) > 200:
            out.append((f"{prefix}[...]", f"{len(value) - 200} more"))
        return out
    return [(prefix, value)]


def generic_block(anchor: str, name: str, value: Any, level: int = 3) -> Markup:
    rows = [(key, numcell(v) if is_number(v) else el("td", DASH if v is None else str(v)))
            for key, v in flatten(value)]
    return section(anchor, name, note("Shown as it appears in the JSON document (this page version has no "
                                      "dedicated view for it)."),
                   table(["key", "value"], rows, sortable=False, id=f"{anchor}-t"), level=level)


# -- sections ---------------------------------------------------------------------------------------

def _model_name(report: dict[str, Any], index: int) -> str:
    return str((report.get("model") or {}).get("name") or f"model {index + 1}")


def summary_section(doc: dict[str, Any]) -> Markup:
    models = doc.get("models") or []
    names = [_model_name(r, i) for i, r in enumerate(models)]
    keys: list[str] = []
    for r in models:
        keys += [k for k in (r.get("metrics") or {}) if k not in keys and k != "top_k"]
    rows = []
    for key in keys:
        values = [(r.get("metrics") or {}).get(key) for r in models]
        label = METRIC_LABELS.get(key, key)
        if key == "top_k_accuracy":
            ks = {(r.get("metrics") or {}).get("top_k") for r in models}
            label = f"top-{ks.pop()} accuracy" if len(ks) == 1 else "top-k accuracy"
        better = min if key in ("log_loss", "ece") else max
        numbers = [v for v in values if is_number(v)]
        best = better(numbers) if len(models) > 1 and numbers and key != "mean_confidence" else None
        rows.append([label, *[metric_cell(key, v, best is not None and v == best) for v in values]])
    rows.append(["images scored", *[numcell(r.get("n_images")) for r in models]])
    rows.append(["architecture", *[el("td", (r.get("model") or {}).get("arch")) for r in models]])
    rows.append(["parameters", *[numcell((r.get("model") or {}).get("parameters")) for r in models]])
    rows.append(["input", *[el("td", f"{(r.get('model') or {}).get('image_size')} px, "
                                      f"{(r.get('model') or {}).get('channels')} channel(s)") for r in models]])
    speed = [(r.get("speed") or {}) for r in models]
    rows.append(["images/s", *[numcell(s.get("images_per_second"), num(s.get("images_per_second"), 1))
                               for s in speed]])
    rows.append(["device", *[el("td", s.get("device")) for s in speed]])
    head = ["", *names]
    body = [table(head, rows, caption="Summary metrics" + (" (best of each row in bold)" if len(models) > 1 else ""),
                  sortable=False, id="summary-table")]
    facts = [
        ("manifest", doc.get("manifest")), ("split", doc.get("split")),
        ("records selected", doc.get("n_selected")), ("without label (left out)", doc.get("n_unlabelled")),
        ("without split (counted as test)", doc.get("n_unsplit_as_test")),
    ]
    for r in models:
        unknown = (r.get("unknown") or {})
        if unknown.get("count"):
            labels = ", ".join(f"{k} ({v})" for k, v in (unknown.get("labels") or {}).items())
            facts.append((f"{_model_name(r, models.index(r))}: unknown labels left out",
                          f"{unknown['count']}: {labels}"))
    settings = doc.get("settings") or {}
    facts.append(("settings", ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in settings.items())))
    facts.append(("imgcls", f"{doc.get('imgcls_version')} (eval document schema {doc.get('schema_version')})"))
    body.append(el("dl", [[el("dt", k), el("dd", DASH if v is None else (num(v) if is_number(v) else str(v)))]
                          for k, v in facts], class_="facts"))
    return section("summary", "Summary", body)


def per_class_table(report: dict[str, Any], anchor: str) -> Markup:
    cm = report.get("confusion_matrix") or {}
    classes, counts = cm.get("classes") or [], cm.get("counts") or []
    rows = []
    for row in report.get("per_class") or []:
        i = row.get("index")
        worst = ""
        if isinstance(i, int) and i < len(counts):
            others = [(c, j) for j, c in enumerate(counts[i]) if j != i and c]
            if others:
                c, j = max(others, key=lambda t: (t[0], -t[1]))
                worst = f"{classes[j]} ({c})"
        predicted = row.get("predicted")
        rows.append([row.get("class"), numcell(row.get("precision")), numcell(row.get("recall")),
                     numcell(row.get("f1")), numcell(row.get("support")),
                     numcell(predicted, class_="n never" if predicted == 0 else "n"), el("td", worst)])
    m = report.get("metrics") or {}
    n = report.get("n_images")
    foot = [[el("th", "macro average", scope="row"), numcell(m.get("macro_precision")),
             numcell(m.get("macro_recall")), numcell(m.get("macro_f1")), numcell(n), el("td", ""), el("td", "")],
            [el("th", "weighted average", scope="row"), numcell(m.get("weighted_precision")),
             numcell(m.get("weighted_recall")), numcell(m.get("weighted_f1")), numcell(n), el("td", ""),
             el("td", "")]]
    return table(["class", "precision", "recall", "F1", "support", "predicted", "most often predicted instead"],
                 rows, foot=foot, id=anchor, caption="Per class (click a column heading to sort)")


CLUSTER_FROM = 25  # classes: from here on the matrix is ordered by confusion (similar classes side by side)


def cluster_order(rates: list[list[float]]) -> list[int]:
    """Rows/columns so that classes confused with each other sit together (average-linkage clustering
    of the symmetrised off-diagonal confusion); the model's order where scipy is missing."""
    n = len(rates)
    try:
        import numpy as np
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform
    except ImportError:
        return list(range(n))
    r = np.asarray(rates, dtype=float)
    sim = (r + r.T) / 2
    np.fill_diagonal(sim, 0.0)
    dist = sim.max() - sim
    np.fill_diagonal(dist, 0.0)
    if n < 3 or not np.isfinite(dist).all() or dist.max() == 0:
        return list(range(n))
    return [int(i) for i in leaves_list(linkage(squareform(dist, checks=False), "average", optimal_ordering=n <= 200))]


def confusion_table(report: dict[str, Any], anchor: str) -> Markup:
    cm = report.get("confusion_matrix") or {}
    classes, counts, rates = cm.get("classes") or [], cm.get("counts") or [], cm.get("normalized") or []
    n = len(classes)
    if not n or len(counts) != n:
        return note("No confusion matrix in the document.")
    clustered = n >= CLUSTER_FROM
    order = cluster_order(rates) if clustered else list(range(n))
    big = n > 12
    head = [el("th", "true \u2193 / predicted \u2192", scope="col", class_="corner")]
    for j in order:
        head.append(el("th", el("span", classes[j]), scope="col", title=classes[j], class_="v" if big else None))
    body = []
    for i in order:
        cells = [el("th", classes[i], scope="row", title=classes[i])]
        support = sum(counts[i])
        for j in order:
            c = counts[i][j]
            share = rates[i][j] if i < len(rates) and j < len(rates[i]) else 0.0
            level = min(9, int(share * 10)) if c else None
            cls = " ".join(x for x in (f"h{level}" if level is not None else "", "d" if i == j else "") if x)
            if not c:
                body_cell = el("td", "", class_=cls or None, data_value="0")
            else:
                tip = f"true {classes[i]}, predicted {classes[j]}: {c} of {support} ({pct(share)})"
                text = [el("span", str(c)), el("small", pct(share, 0))] if n <= 12 else str(c)
                body_cell = el("td", text, class_=cls, title=tip, data_value=str(c), data_share=raw_value(share))
            cells.append(body_cell)
        body.append(el("tr", cells))
    legend = el("p", "Cell shade: share of the true class (row), from ",
                el("span", "0", class_="swatch h0"), " to ", el("span", "100%", class_="swatch h9"),
                "; diagonal cells (right answers) are outlined."
                + (" Each cell: count and row share." if n <= 12 else " Hover a cell for its row share."),
                class_="note")
    parts = [legend]
    if clustered:
        parts.append(note(f"{n} classes: rows and columns are ordered so that classes the model confuses "
                          f"sit next to each other (hierarchical clustering of the confusion); the table "
                          f"scrolls both ways, its headings stay in view."))
    parts.append(el("div", el("table", el("caption", "Confusion matrix (counts)"), el("thead", el("tr", head)),
                              el("tbody", body), class_="cm" + (" big" if big else ""), id=anchor),
                    class_="scroll", tabindex="0", role="region", aria_label="confusion matrix, scrollable"))
    return join(parts)


def calibration_part(report: dict[str, Any], name: str, anchor: str) -> Markup:
    cal = report.get("calibration") or {}
    if not cal.get("bins"):
        return note("No calibration bins in the document.")
    rows = [[f"({b['lower']:g}, {b['upper']:g}]", numcell(b.get("count")), numcell(b.get("confidence")),
             numcell(b.get("accuracy"))] for b in cal["bins"]]
    text = note(f"Expected calibration error (ECE) {num(cal.get('ece'))} over {cal.get('n_bins')} equal-width "
                f"bins of the top probability: the mean gap between confidence and accuracy, weighted by the "
                f"bins' share of images. Bars at the diagonal mean calibrated; bars below it, overconfident. "
                f"The short line on each bar is the bin's mean confidence.")
    return join([text, el("figure", reliability_chart(cal, name),
                          el("figcaption", "Reliability diagram (accuracy per confidence bin)")),
                 el("details", el("summary", "bins as a table"),
                    table(["confidence", "images", "mean confidence", "accuracy"], rows, id=anchor))])


def learning_part(assets: ModelAssets | None, name: str, anchor: str) -> Markup:
    history = assets.history if assets else []
    if not history or assets is None:
        where = assets.history_source if assets and assets.history_source else "the model's run folder"
        return note(f"No training history ({where} has no history.jsonl): learning curves need the run folder "
                    f"the model was trained in (imgcls train and finetune write it).")
    epochs = [h.get("epoch") for h in history]
    vlines = []
    for k in range(1, len(history)):
        epoch = epochs[k]
        if history[k].get("phase") != history[k - 1].get("phase") and is_number(epoch):
            vlines.append((epoch - 0.5, str(history[k].get("phase") or "")))
    best = [h.get("epoch") for h in history if h.get("best")]
    if best and is_number(best[-1]):
        vlines.append((best[-1], "best"))
    charts = []
    for key, label, fmt in (("loss", "loss", None), ("acc", "accuracy", None)):
        series = []
        for style, split in enumerate(("train", "val")):
            pts = [(h["epoch"], h[f"{split}_{key}"]) for h in history
                   if is_number(h.get("epoch")) and is_number(h.get(f"{split}_{key}"))]
            if pts:
                series.append(Series(f"{split} {label}", pts, style))
        if series:
            charts.append(el("figure", line_chart(series, title=f"{name}: {label} per epoch", xlabel="epoch",
                                                  ylabel=label, yfmt=fmt, vlines=vlines,
                                                  ylim=(0.0, 1.0) if key == "acc" else None),
                             el("figcaption", f"{label.capitalize()} per epoch, train and validation")))
    phases = list(dict.fromkeys(str(h.get("phase") or "train") for h in history))
    columns = [k for k in ("epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "best")
               if any(k in h for h in history)]
    rows = [[numcell(h.get(c)) if is_number(h.get(c)) and c != "epoch" else
             (el("td", str(h.get(c))) if c != "epoch" else el("th", str(h.get(c)), scope="row")) for c in columns]
            for h in history]
    return join([note(f"From {assets.history_source}: {len(history)} epochs ({', '.join(phases)}); the dashed lines "
                      f"mark a change of phase and the best epoch (the weights in the model file)."),
                 el("div", charts, class_="charts"),
                 el("details", el("summary", "history as a table"), table(columns, rows, id=anchor))])


def _img(uri: str | None, alt: str, cls: str = "thumb") -> Markup:
    if not uri:
        return el("span", "(no picture)", class_="nopic", role="img", aria_label=alt)
    return el("img", src=uri, alt=alt, class_=cls)


def mistakes_part(report: dict[str, Any], assets: ModelAssets | None, anchor: str) -> Markup:
    errors = report.get("errors") or {}
    mistakes = errors.get("most_confident") or []
    if not mistakes:
        return note("No mistakes to show." if errors.get("n_errors", 0) == 0 else
                    "Mistakes are not listed (--errors 0).")
    pictures = assets.mistakes if assets else []
    figures = []
    for k, e in enumerate(mistakes):
        pic = pictures[k] if k < len(pictures) else {}
        true, pred = str(e.get("true")), str(e.get("pred"))
        imgs = [el("div", _img(pic.get("image"), f"mistake {k + 1}: an image of {true} predicted as {pred}"),
                   el("span", "image", class_="cap"))]
        if pic.get("cam_pred"):
            imgs.append(el("div", _img(pic["cam_pred"], f"Grad-CAM of mistake {k + 1} for the predicted class "
                                                        f"{pred}: brighter areas weighed more for {pred}"),
                           el("span", f"why {pred}", class_="cap")))
        if pic.get("cam_true"):
            empty = pic.get("cam_true_empty")
            imgs.append(el("div", _img(pic["cam_true"], f"Grad-CAM of mistake {k + 1} for the true class {true}: "
                                       + ("no region raised its score" if empty else
                                          f"brighter areas weighed more for {true}")),
                           el("span", f"evidence for {true}" + (": none" if empty else ""), class_="cap")))
        figures.append(el("figure", el("div", imgs, class_="pics"), el("figcaption",
            el("span", "true ", el("b", true)), el("br"),
            el("span", "predicted ", el("b", pred), " p=", el("span", num(e.get("prob")),
                                                                 data_value=raw_value(e.get("prob")))),
            el("br"), el("span", f"p({true})=", el("span", num(e.get("prob_true")),
                                                    data_value=raw_value(e.get("prob_true")))),
            el("br"), el("code", str(e.get("path"))),
        ), class_="mistake"))
    head = note(f"{num(errors.get('n_errors'))} of {num(report.get('n_images'))} images are misclassified; the "
                f"{len(mistakes)} below are those the model was surest of (its highest probability on a wrong "
                f"class).")
    parts = [head]
    if assets and assets.cam_layer:
        parts.append(note(f"Grad-CAM (Selvaraju et al., 2017) shows which regions raised the score of a class, "
                          f"from the gradients at {assets.cam_layer}; brighter = more weight (inferno scale, "
                          f"readable in greyscale)."))
    parts.append(el("div", figures, class_="gallery", id=anchor))
    return join(parts)


def pairs_part(report: dict[str, Any], anchor: str) -> Markup:
    errors = report.get("errors") or {}
    pairs = errors.get("confused_pairs") or []
    parts = []
    if pairs:
        rows = [[p.get("true"), el("td", p.get("pred")), numcell(p.get("count")),
                 numcell(p.get("rate"), pct(p.get("rate")))] for p in pairs]
        parts.append(table(["true class", "predicted as", "images", "share of the true class"], rows, id=anchor,
                           caption="Most confused pairs"))
    never = errors.get("never_predicted") or []
    n_classes = len((report.get("confusion_matrix") or {}).get("classes") or [])
    if never:
        parts.append(el("p", el("strong", f"Never predicted ({len(never)} of {n_classes} classes): "),
                        el("span", ", ".join(str(c) for c in never), class_="never"), class_="warn",
                        id=f"{anchor}-never"))
    else:
        parts.append(note(f"Every one of the {n_classes} classes is predicted at least once."))
    return join(parts)


def _severity_label(value: Any) -> str:
    return DASH if value is None else str(value)


def robustness_part(report: dict[str, Any], anchor: str) -> Markup:
    rob = report.get("robustness")
    if not rob:
        return note("No perturbed records (imgcls perturb adds them): no robustness breakdown.")
    clean = rob.get("clean") or {}
    rows = [[el("th", "clean", scope="row"), el("td", ""), numcell(clean.get("n")),
             numcell(clean.get("accuracy"), pct(clean.get("accuracy"))), el("td", "")]]
    for p in rob.get("perturbations") or []:
        for s in p.get("severities") or []:
            rows.append([el("th", p.get("perturbation"), scope="row"), el("td", _severity_label(s.get("severity"))),
                         numcell(s.get("n")), numcell(s.get("accuracy"), pct(s.get("accuracy"))),
                         numcell(s.get("relative_drop"), pct(s.get("relative_drop")))])
        rows.append([el("th", el("strong", p.get("perturbation")), scope="row"), el("td", "mean"),
                     numcell(p.get("n")), numcell(p.get("accuracy"), pct(p.get("accuracy")), class_="n strong"),
                     numcell(p.get("relative_drop"), pct(p.get("relative_drop")))])
    foot = [[el("th", "mean over perturbations", scope="row"), el("td", ""), el("td", ""),
             numcell(rob.get("mean_accuracy"), pct(rob.get("mean_accuracy"))),
             numcell(rob.get("mean_relative_drop"), pct(rob.get("mean_relative_drop")))]]
    text = note(f"Mean error over perturbations {num(rob.get('mean_error'))} (unnormalised, mCE-like). A "
                f"perturbation's accuracy is the mean of its severities'; relative drop = (clean - accuracy) / "
                f"clean.")
    return join([text, table(["perturbation", "severity", "images", "accuracy", "relative drop"], rows, foot=foot,
                             sortable=False, id=anchor, caption="Accuracy by perturbation and severity"),
                 robustness_charts([report], anchor + "-charts")])


def robustness_charts(reports: Sequence[dict[str, Any]], anchor: str) -> Markup:
    """One small chart per perturbation family: accuracy against severity, one line per model,
    clean accuracy at the left."""
    families: list[str] = []
    for r in reports:
        for p in (r.get("robustness") or {}).get("perturbations") or []:
            if p.get("perturbation") not in families:
                families.append(p.get("perturbation"))
    if not families:
        return Markup("")
    charts = []
    for family in families:
        severities: list[Any] = []
        for r in reports:
            for p in (r.get("robustness") or {}).get("perturbations") or []:
                if p.get("perturbation") == family:
                    severities += [s.get("severity") for s in p.get("severities") or []
                                   if s.get("severity") not in severities]
        categories = ["clean", *[_severity_label(s) for s in severities]]
        series = []
        for m, r in enumerate(reports):
            rob = r.get("robustness") or {}
            pts: list[tuple[float, float]] = []
            if is_number((rob.get("clean") or {}).get("accuracy")):
                pts.append((0, rob["clean"]["accuracy"]))
            for p in rob.get("perturbations") or []:
                if p.get("perturbation") == family:
                    for s in p.get("severities") or []:
                        if is_number(s.get("accuracy")):
                            pts.append((1 + severities.index(s.get("severity")), s["accuracy"]))
            if pts:
                series.append(Series(_model_name(r, m), pts, m))
        charts.append(el("figure", line_chart(series, title=str(family), xlabel="severity", ylabel="accuracy",
                                              ylim=(0.0, 1.0), xcategories=categories, width=300, height=230,
                                              yfmt=lambda v: f"{v:.2g}" if v not in (0, 1) else f"{v:g}"),
                         el("figcaption", f"{family}: accuracy against severity")))
    return el("div", charts, class_="charts small", id=anchor)


def model_section(report: dict[str, Any], index: int, assets: ModelAssets | None) -> Markup:
    name = _model_name(report, index)
    a = f"m{index}"
    model = report.get("model") or {}
    intro = el("p", el("code", str(model.get("path"))), f" \u00b7 {model.get('arch')} \u00b7 "
               f"{num(model.get('parameters'))} parameters \u00b7 {len(model.get('classes') or [])} classes"
               + (f" \u00b7 created {model.get('created')}" if model.get("created") else ""), class_="meta")
    parts = [intro]
    if assets:
        parts += [note(n) for n in assets.notes]
    parts.append(section(f"{a}-classes", "Per-class scores", per_class_table(report, f"{a}-per-class"), level=3))
    parts.append(section(f"{a}-confusion", "Confusion matrix", confusion_table(report, f"{a}-cm"), level=3))
    parts.append(section(f"{a}-calibration", "Calibration", calibration_part(report, name, f"{a}-bins"), level=3))
    parts.append(section(f"{a}-learning", "Learning curves", learning_part(assets, name, f"{a}-history"), level=3))
    parts.append(section(f"{a}-mistakes", "Most confident mistakes", mistakes_part(report, assets, f"{a}-gallery"),
                         level=3))
    parts.append(section(f"{a}-pairs", "Confused pairs and classes never predicted", pairs_part(report, f"{a}-pairs-t"),
                         level=3))
    parts.append(section(f"{a}-robustness", "Robustness", robustness_part(report, f"{a}-robustness-t"), level=3))
    extra = [k for k in report if k not in _KNOWN_MODEL_KEYS]
    for k, key in enumerate(extra):
        parts.append(generic_block(f"{a}-extra-{k}", str(key), report[key]))
    return section(f"model-{index}", f"Model {index + 1}: {name}", parts)


def comparison_section(doc: dict[str, Any], assets: ReportAssets | None) -> Markup:
    rows = doc.get("comparison") or []
    models = doc.get("models") or []
    names = [str(r.get("model")) for r in rows]
    classes: list[str] = []
    for r in rows:
        classes += [c for c in (r.get("per_class_f1") or {}) if c not in classes]
    head = ["class", *[f"F1 {n}" for n in names], *[f"\u0394 {n} \u2212 {names[0]}" for n in names[1:]]]
    body = []
    for c in classes:
        f1 = [(r.get("per_class_f1") or {}).get(c) for r in rows]
        diffs = [b - f1[0] if is_number(b) and is_number(f1[0]) else None for b in f1[1:]]
        body.append([c, *[numcell(v) for v in f1],
                     *[numcell(d, DASH if d is None else f"{d:+.3f}",
                               class_="n up" if (d or 0) > 0 else "n down" if (d or 0) < 0 else "n") for d in diffs]])
    parts = [note("The summary above puts the models' metrics side by side; here, per-class F1 and where the "
                  "models disagree. \u0394 > 0: better than the first model."),
             table(head, body, id="cmp-f1", caption="Per-class F1 by model (sort by a \u0394 column to find the "
                                                    "classes that changed most)")]
    agree = doc.get("agreement")
    if agree:
        n = agree.get("n_images")
        parts.append(table(["images", "count", "share"], [
            [label, numcell(agree.get(key)), numcell(agree.get(key) / n if n and is_number(agree.get(key)) else None,
                                                     pct(agree.get(key) / n) if n and is_number(agree.get(key)) else DASH)]
            for key, label in (("all_right", "every model right"), ("some_right", "some right, some wrong"),
                               ("all_wrong", "every model wrong"), ("same_prediction", "the same label from all"))],
            sortable=False, id="cmp-agreement", caption=f"Agreement on the {num(n)} images every model scored"))
        pair_rows = [[f"{p.get('a')} vs {p.get('b')}", numcell(p.get("both_right")), numcell(p.get("only_a_right")),
                      numcell(p.get("only_b_right")), numcell(p.get("both_wrong")), numcell(p.get("same_prediction"))]
                     for p in agree.get("pairs") or []]
        parts.append(table(["pair (A vs B)", "both right", "only A right", "only B right", "both wrong",
                            "same label"], pair_rows, id="cmp-pairs", caption="Pairs of models"))
        images = assets.images if assets else {}
        figures = []
        for k, e in enumerate(agree.get("examples") or []):
            preds = e.get("predictions") or []
            lines = []
            for p in preds:
                lines += [el("span", f"{p.get('model')}: ", el("b", str(p.get("pred"))), " p=",
                             el("span", num(p.get("prob")), data_value=raw_value(p.get("prob"))),
                             " \u2713" if p.get("correct") else " \u2717", class_="ok" if p.get("correct") else "ko"),
                          el("br")]
            alt = f"disagreement {k + 1}: an image of {e.get('true')}; " + "; ".join(
                f"{p.get('model')} says {p.get('pred')}" for p in preds)
            figures.append(el("figure", el("div", el("div", _img(images.get(str(e.get("path"))), alt)), class_="pics"),
                              el("figcaption", el("span", "true ", el("b", str(e.get("true")))), el("br"), lines,
                                 el("code", str(e.get("path")))), class_="mistake"))
        if figures:
            parts.append(el("h3", "Where the models disagree (the surest wrong answer first)"))
            parts.append(el("div", figures, class_="gallery", id="cmp-examples"))
    if any(m.get("robustness") for m in models):
        parts.append(el("h3", "Robustness side by side"))
        parts.append(robustness_charts(models, "cmp-robustness"))
    return section("comparison", "Comparison", parts)


CSS = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;--soft:#f6f8fa;--accent:#0b4f8a}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
background:var(--bg);margin:0}
header,main,footer{max-width:1280px;margin:0 auto;padding:0 20px}
header{padding-top:18px}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid var(--line);padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em}
nav ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 14px;margin:.4em 0}
a{color:var(--accent)}
.note{color:var(--muted);max-width:62em}.warn{background:#fff8c5;border-left:4px solid #9a6700;padding:6px 10px}
.meta{color:var(--muted)}
table{border-collapse:collapse;margin:.6em 0 1em;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:4px 0;caption-side:top}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:var(--soft)}
tbody tr:nth-child(even){background:#fbfcfd}
td.n{text-align:right}td.best{font-weight:700}td.never{font-weight:700;text-decoration:underline}
td.up::before{content:"\\25B2 ";font-size:.7em}td.down::before{content:"\\25BC ";font-size:.7em}
tfoot th,tfoot td{background:var(--soft);font-weight:600}
th button{font:inherit;background:none;border:0;padding:0;cursor:pointer;color:inherit;text-align:inherit}
th[aria-sort=ascending] button::after{content:" \\2191"}th[aria-sort=descending] button::after{content:" \\2193"}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;word-break:break-all}
.scroll{overflow:auto;max-height:80vh;max-width:100%;width:fit-content;border:1px solid var(--line)}
table.cm{margin:0;border-collapse:separate;border-spacing:0}
table.cm th,table.cm td{border:0;border-right:1px solid #eef1f4;border-bottom:1px solid #eef1f4;
text-align:right;min-width:2.6em;padding:2px 5px}
table.cm td small{display:block;font-size:.72em;opacity:.85}
table.cm thead th{position:sticky;top:0;z-index:2}table.cm tbody th{position:sticky;left:0;background:var(--soft);
z-index:1;text-align:left;max-width:14em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
table.cm thead th.corner{left:0;z-index:3;font-weight:400;color:var(--muted);white-space:nowrap}
table.cm.big th.v{vertical-align:bottom;height:9em}table.cm.big th.v span{writing-mode:vertical-rl;
transform:rotate(180deg);white-space:nowrap;max-height:9em;overflow:hidden;text-overflow:ellipsis;display:inline-block}
table.cm.big td{min-width:2.2em;font-size:.8em;padding:1px 3px}
table.cm td.d{outline:2px solid #1b1f24;outline-offset:-2px}
.h0{background:#f7fbff}.h1{background:#deebf7}.h2{background:#c6dbef}.h3{background:#9ecae1}.h4{background:#6baed6}
.h5{background:#4292c6;color:#fff}.h6{background:#2171b5;color:#fff}.h7{background:#08519c;color:#fff}
.h8{background:#08306b;color:#fff}.h9{background:#041c3f;color:#fff}
.swatch{display:inline-block;padding:0 6px;border:1px solid var(--line)}
.charts{display:flex;flex-wrap:wrap;gap:10px 24px}.charts figure{margin:0}
figure{margin:.5em 0}figcaption{font-size:.85em;color:var(--muted)}
svg.chart{max-width:100%;height:auto;font-family:inherit}
svg .ct{font-size:12px;font-weight:600;fill:var(--fg)}svg .tick{font-size:10px;fill:var(--muted)}
svg .axis{font-size:11px;fill:var(--fg)}svg .grid{stroke:#e6e9ed;stroke-width:1}
svg .frame{fill:none;stroke:#8c959f}svg .mark{stroke:#6e7781;stroke-dasharray:4 3}
svg .bar{fill:#6baed6;stroke:#08519c}svg .conf{stroke:#000;stroke-width:2}svg .diag{stroke:#000;stroke-dasharray:5 4}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(310px,1fr));gap:12px}
figure.mistake{border:1px solid var(--line);padding:8px;margin:0;background:var(--soft)}
.pics{display:flex;gap:6px}.pics div{text-align:center}.cap{display:block;font-size:.75em;color:var(--muted)}
img.thumb{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#fff;border:1px solid var(--line)}
.nopic{display:inline-block;width:96px;height:96px;border:1px dashed var(--line);font-size:.75em;color:var(--muted)}
figure.mistake code{display:block;word-break:break-all;font-size:.75em;margin-top:4px}
.ok{color:#1a7f37}.ko{color:#a40e26}
footer{color:var(--muted);font-size:.85em;padding:2em 20px}
@media print{.scroll{max-height:none;overflow:visible}nav{display:none}}
"""

SCRIPT = """(function () {
  "use strict";
  function key(cell) {
    if (!cell) { return null; }
    var v = cell.getAttribute("data-value");
    if (v !== null) { return v === "" ? null : parseFloat(v); }
    return cell.textContent.trim().toLowerCase();
  }
  function compare(x, y) {
    if (x === null) { return y === null ? 0 : 1; }
    if (y === null) { return -1; }
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  function sort(table, th, index) {
    var body = table.tBodies[0];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[index]), y = key(b.cells[index]);
      if (x === null || y === null) { return compare(x, y); }
      return ascending ? compare(x, y) : compare(y, x);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    var cells = table.tHead.rows[table.tHead.rows.length - 1].cells;
    Array.prototype.forEach.call(cells, function (th, index) {
      var button = document.createElement("button");
      button.type = "button";
      while (th.firstChild) { button.appendChild(th.firstChild); }
      th.appendChild(button);
      button.addEventListener("click", function () { sort(table, th, index); });
    });
  });
}());"""


def _script_hash(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{hash}'; "
       "base-uri 'none'; form-action 'none'")


def render_html(document: dict[str, Any], assets: ReportAssets | None = None, *,
                generated: datetime | None = None) -> str:
    """The whole page as one string."""
    models = document.get("models") or []
    names = [_model_name(r, i) for i, r in enumerate(models)]
    title = f"imgcls eval: {', '.join(names) or 'no model'} on {document.get('manifest')} ({document.get('split')})"
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    nav = [el("li", el("a", "Summary", href="#summary"))]
    if len(models) > 1:
        nav.append(el("li", el("a", "Comparison", href="#comparison")))
    nav += [el("li", el("a", f"Model {i + 1}: {n}", href=f"#model-{i}")) for i, n in enumerate(names)]
    body = [summary_section(document)]
    if assets and assets.notes:
        body += [el("p", n, class_="warn") for n in assets.notes]
    if len(models) > 1:
        body.append(comparison_section(document, assets))
    for i, report in enumerate(models):
        body.append(model_section(report, i, assets.models[i] if assets and i < len(assets.models) else None))
    extra = [k for k in document if k not in _KNOWN_TOP_KEYS]
    for k, key in enumerate(extra):
        body.append(generic_block(f"extra-{k}", str(key), document[key], level=2))
    head = join([
        Markup('<meta charset="utf-8">'),
        el("meta", http_equiv="Content-Security-Policy", content=CSP.format(hash=_script_hash(SCRIPT))),
        el("meta", name="viewport", content="width=device-width, initial-scale=1"),
        el("meta", name="generator", content=f"imgcls {document.get('imgcls_version')}"),
        el("link", rel="icon", href="data:,"),
        el("title", title),
        Markup(f"<style>{CSS}</style>"),
    ])
    page = join([
        Markup("<!DOCTYPE html>\n"),
        Markup('<html lang="en">'),
        el("head", head),
        Markup("<body>"),
        el("header", el("h1", "imgcls eval report"),
           el("p", f"{', '.join(names)} \u00b7 {document.get('manifest')} \u00b7 split {document.get('split')}",
              class_="meta"),
           el("nav", el("ul", nav), aria_label="sections")),
        el("main", body),
        el("footer", f"Written {when} by imgcls {document.get('imgcls_version')} from the same document "
                     f"imgcls eval --json prints; it is embedded in this page as JSON "
                     f"(script#imgcls-eval-data)."),
        Markup('<script type="application/json" id="imgcls-eval-data">'), Markup(script_json(document)),
        Markup("</script>"),
        Markup(f"<script>{SCRIPT}</script>"),
        Markup("</body></html>\n"),
    ])
    return str(page)
