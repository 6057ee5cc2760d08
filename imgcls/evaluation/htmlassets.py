"""Pictures and history for the HTML report: thumbnails, Grad-CAM overlays, history.jsonl.

Only the images the page shows are read (the listed mistakes and disagreements, at most
``--errors`` each), so the page and the time to write it do not grow with the test set.
Small images are embedded at their own size and enlarged by the browser with visible
pixels; large ones are reduced to ``THUMB`` px. Overlays are JPEG, thumbnails PNG unless
a photo is reduced.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgcls.evaluation.html import ModelAssets, ReportAssets

THUMB = 128  # px, longest side of an embedded picture
CAM_SIDE = 96  # px, longest side of a Grad-CAM overlay


def data_uri(image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        image.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def thumbnail_uri(image) -> str:
    from PIL import Image

    from imgcls.images import to_mode

    image = to_mode(image, 1 if image.mode in ("L", "1", "I", "I;16", "F", "LA") else 3)
    if max(image.size) <= THUMB:
        return data_uri(image, "PNG")
    scale = THUMB / max(image.size)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    return data_uri(small, "JPEG")


def read_history(model_path: Path) -> tuple[list[dict[str, Any]], Path]:
    from imgcls.evaluation.plots import read_history as read_rows

    path = Path(model_path).resolve().parent / "history.jsonl"
    try:
        return (read_rows(path) if path.is_file() else []), path
    except (OSError, UnicodeDecodeError):
        return [], path


def _open(path: str):
    from imgcls.images import ImageRejected, open_image

    try:
        return open_image(path)
    except ImageRejected:
        return None


def model_assets(ev: Any, *, device: str = "cpu", explain: bool = True) -> ModelAssets:
    """History, the mistakes' thumbnails and (with ``explain``) their Grad-CAM overlays for one evaluation."""
    import numpy as np

    history, source = read_history(ev.path)
    assets = ModelAssets(history=history, history_source=str(source))
    mistakes = ev.report["errors"]["most_confident"]
    images = [_open(e["path"]) for e in mistakes]
    assets.mistakes = [{"image": thumbnail_uri(img) if img is not None else None, "cam_pred": None, "cam_true": None}
                       for img in images]
    shown = [k for k, img in enumerate(images) if img is not None]
    from imgcls.evaluation.onnx_backend import is_onnx_path

    if not explain or not shown or is_onnx_path(ev.path):  # Grad-CAM needs the torch model's gradients
        return assets
    from imgcls.evaluation.explain import find_target_layer, gradcam, overlay
    from imgcls.images import image_to_uint8
    from imgcls.models.io import load_model

    model, info = load_model(ev.path, device)
    layer = find_target_layer(model, info.image_size, info.channels, device)
    h, w = layer.shape
    assets.cam_layer = (f"block {layer.index + 1} of {len(getattr(model, 'blocks', []) or [])} "
                        f"({type(layer.module).__name__}, a {h}x{w} map at {info.image_size} px)")
    index = {name: i for i, name in enumerate(info.classes)}
    arrays = np.stack([image_to_uint8(images[k], info.image_size, info.channels) for k in shown])
    pred = [index[mistakes[k]["pred"]] for k in shown]
    true = [index[mistakes[k]["true"]] for k in shown]
    heat = gradcam(model, info, np.concatenate([arrays, arrays]), pred + true, device=device, layer=layer)
    for n, k in enumerate(shown):
        assets.mistakes[k]["cam_pred"] = data_uri(overlay(images[k], heat[n], CAM_SIDE), "JPEG")
        assets.mistakes[k]["cam_true"] = data_uri(overlay(images[k], heat[len(shown) + n], CAM_SIDE), "JPEG")
        assets.mistakes[k]["cam_true_empty"] = bool(heat[len(shown) + n].max() < 1e-6)  # no positive evidence
    return assets


def collect_assets(evaluations: Sequence[Any], document: dict[str, Any], *, device: str = "cpu",
                   explain: bool | None = None) -> ReportAssets:
    """Everything the page shows besides the document. ``explain`` None: Grad-CAM when grad-cam is installed
    (a note on the page says how to get it otherwise)."""
    from imgcls.evaluation.explain import EXPLAIN_HINT, have_gradcam

    from imgcls.evaluation.onnx_backend import is_onnx_path

    notes = []
    if explain is None and all(is_onnx_path(ev.path) for ev in evaluations):
        explain = False  # Grad-CAM runs on torch models only: no note, and no torch import for it
    if explain is None:
        explain = have_gradcam()
        if not explain:
            notes.append(f"Grad-CAM overlays of the mistakes need the grad-cam package: {EXPLAIN_HINT}.")
    assets = ReportAssets(models=[model_assets(ev, device=device, explain=explain) for ev in evaluations],
                          notes=notes)
    for e in (document.get("agreement") or {}).get("examples") or []:
        img = _open(e["path"])
        if img is not None:
            assets.images[e["path"]] = thumbnail_uri(img)
    return assets


def write_pages(evaluations: Sequence[Any], document: dict[str, Any], paths: Sequence[Any], *,
                device: str = "cpu", inputs: Sequence[Any] = ()) -> list[Any]:
    """Render the page once and write it to each path or checked output target (complete or absent); say so."""
    from imgcls.console import info, warn
    from imgcls.evaluation.html import render_html
    from imgcls.fsutil import write_output

    assets = collect_assets(evaluations, document, device=device)
    for n in assets.notes:
        warn(n)
    text = render_html(document, assets)
    for path in paths:
        write_output(path, text, option="--html", inputs=inputs)
        info(f"HTML report written to {getattr(path, 'given', path)} ({len(text.encode('utf-8')) / 1e6:.1f} MB)")
    return list(paths)
