"""Grad-CAM explanations: where in the image the model looked for the class it chose.

The class activation maps come from the grad-cam package (pytorch-grad-cam, the
``explain`` extra); imgcls adds what it cannot know: which layer of each architecture
to explain, the model's own preprocessing, and overlays that stay readable in
greyscale. Decision record: docs/design/html-report.md.

The target layer is picked from the model's ``blocks`` (the stages every imgcls
architecture lists from input to output), generically: the last block whose output is
still a spatial feature map of at least ``MIN_CAM_SIDE`` x ``MIN_CAM_SIDE`` (else the
largest map there is). Grad-CAM's usual choice, the last convolutional stage, is a 1x1
or 2x2 map on the 28-32 px images imgcls is often used with, which localises nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError, ModelError

EXPLAIN_HINT = "pip install 'imgcls[explain]' (grad-cam)"
MIN_CAM_SIDE = 4

# Matplotlib's "inferno" at 9 evenly spaced points: lightness rises monotonically from
# black to pale yellow, so the overlay still reads as "brighter = more important" in
# greyscale and for colour-blind readers (no matplotlib needed).
_INFERNO = np.array([
    [0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
    [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164],
], dtype=np.float64)


class MissingExplain(ImgclsError):
    """The grad-cam package is not installed."""


def have_gradcam() -> bool:
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        return False
    return True


def require_gradcam(what: str) -> None:
    if not have_gradcam():
        raise MissingExplain(f"{what} needs the grad-cam package: install it with {EXPLAIN_HINT}")


@dataclass
class TargetLayer:
    module: Any  # torch.nn.Module
    index: int  # position in model.blocks
    shape: tuple[int, int]  # (height, width) of its feature map at the model's input size


def _callable_block(block):
    """The module whose forward output is the block's output (a group of siblings: its last member)."""
    import torch

    while isinstance(block, torch.nn.ModuleList) and len(block):
        block = block[-1]
    return block


def find_target_layer(model, image_size: int, channels: int, device: str = "cpu") -> TargetLayer:
    """The block Grad-CAM explains (see the module docstring): found by one forward pass on a blank image."""
    import torch

    blocks = list(getattr(model, "blocks", None) or [])
    if not blocks:
        backbone = getattr(model, "backbone", model)
        blocks = list(backbone.children())
    shapes: dict[int, tuple[int, int]] = {}
    handles = []

    def recorder(i: int):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and i not in shapes:
                shapes[i] = (int(output.shape[2]), int(output.shape[3]))
        return hook

    for i, block in enumerate(blocks):
        handles.append(_callable_block(block).register_forward_hook(recorder(i)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, image_size, image_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    if not shapes:
        raise ModelError(f"{type(model).__name__}: no block yields a spatial feature map, so Grad-CAM has "
                         f"nothing to explain")
    large = [i for i, (h, w) in shapes.items() if min(h, w) >= MIN_CAM_SIDE]
    index = max(large) if large else max(shapes, key=lambda i: (shapes[i][0] * shapes[i][1], i))
    return TargetLayer(_callable_block(blocks[index]), index, shapes[index])


def gradcam(model, info, images: np.ndarray, targets: Sequence[int], *, device: str = "cpu",
            layer: TargetLayer | None = None, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps in [0, 1], one (size x size) float32 map per uint8 N x size x size x C image.

    ``targets`` are class indices (the predicted class to ask "why this answer?"). The
    model stays in eval mode; frozen parameters are fine (the gradient flows from the
    input). Raises MissingExplain without the grad-cam package.
    """
    require_gradcam("Grad-CAM")
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from imgcls.models.preprocess import normalize

    if len(images) == 0:
        return np.zeros((0, info.image_size, info.image_size), dtype=np.float32)
    layer = layer or find_target_layer(model, info.image_size, info.channels, device)
    model.eval()
    cam = GradCAM(model=model, target_layers=[layer.module])
    cam.compute_input_gradient = True  # frozen backbones: the gradient must flow from the input
    out = []
    try:
        # cuDNN runs an RNN backward only in training mode; cnn-gru on CUDA needs the native kernels
        no_cudnn = torch.backends.cudnn.flags(enabled=False) if str(device).startswith("cuda") \
            else contextlib.nullcontext()
        # inference_mode(False): predict's batches come from a generator that holds inference mode
        with torch.inference_mode(False), torch.enable_grad(), no_cudnn:
            for start in range(0, len(images), batch_size):
                chunk = np.ascontiguousarray(images[start:start + batch_size])
                x = normalize(torch.from_numpy(chunk).to(device), info.mean, info.std)
                wanted = [ClassifierOutputTarget(int(t)) for t in targets[start:start + batch_size]]
                out.append(np.asarray(cam(input_tensor=x, targets=wanted), dtype=np.float32))
    finally:
        cam.activations_and_grads.release()  # not `with cam`: its __exit__ prints to stdout
        model.zero_grad(set_to_none=True)
    heat = np.concatenate(out)
    return np.clip(np.nan_to_num(heat), 0.0, 1.0)


def colorize(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] map as inferno RGB (uint8), interpolated between the anchor colours."""
    position = np.clip(heat, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(position).astype(int).clip(0, len(_INFERNO) - 2)
    frac = (position - low)[..., None]
    rgb = _INFERNO[low] * (1 - frac) + _INFERNO[low + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(image, heat: np.ndarray, max_side: int | None = None):
    """The image desaturated and dimmed, with the heat map blended over it (a PIL RGB image).

    ``heat`` is the map at the model's square input; it is stretched back to the image's
    own aspect (the inverse of the model's square resize). Images smaller than
    ``max_side`` are enlarged with visible pixels, larger ones reduced.
    """
    from PIL import Image

    from imgcls.images import to_mode

    base = to_mode(image, 3)
    if max_side:
        scale = max_side / max(base.width, base.height)
        size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
        base = base.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    grey = np.asarray(base.convert("L"), dtype=np.float64)[..., None]
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8), "L")
    heat_img = heat_img.resize(base.size, Image.Resampling.BILINEAR)
    colour = colorize(np.asarray(heat_img, dtype=np.float64) / 255.0).astype(np.float64)
    blended = 0.4 * grey + 0.6 * colour
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def overlay_name(index: int, path: str | os.PathLike) -> str:
    """A safe file name for the overlay of input number ``index``: the number, then the input's stem
    reduced to [A-Za-z0-9._-] (never a label, never a path separator, never hidden)."""
    stem = _UNSAFE.sub("_", Path(str(path)).stem).strip("._")[:48]
    return f"{index:06d}-{stem}-gradcam.png" if stem else f"{index:06d}-gradcam.png"


class Explainer:
    """Writes one Grad-CAM overlay PNG per predicted image into a folder (``predict --explain DIR``).

    Each overlay explains the predicted label, on the photo at its own aspect, its long
    side brought into [min_side, max_side] px.
    """

    def __init__(self, model, info, folder: Path, *, device: str = "cpu", batch_size: int = 32,
                 min_side: int = 224, max_side: int = 512):
        require_gradcam("--explain")
        self.model, self.info, self.folder, self.device = model, info, Path(folder), device
        self.batch_size, self.min_side, self.max_side = batch_size, min_side, max_side
        self.layer = find_target_layer(model, info.image_size, info.channels, device)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0  # rows seen (the number in each file name)
        self.written = 0  # overlays written
        self._index = {name: i for i, name in enumerate(info.classes)}

    def annotate(self, rows: Iterable[dict]) -> Iterator[dict]:
        """Pass result rows through in order, adding "overlay" (the PNG's path) to each predicted one."""
        pending: list[dict] = []
        for row in rows:
            pending.append(row)
            if len(pending) >= self.batch_size:
                yield from self._flush(pending)
                pending = []
        if pending:
            yield from self._flush(pending)

    def _flush(self, rows: list[dict]) -> list[dict]:
        from imgcls.fsutil import atomic_path
        from imgcls.images import ImageRejected, image_to_uint8, open_image

        todo = []
        for row in rows:
            number = self.count
            self.count += 1
            if "error" in row:
                continue
            try:
                image = open_image(row["path"])
            except ImageRejected:
                continue  # the file changed since it was predicted: no overlay, the row stays as it is
            todo.append((row, number, image))
        if todo:
            arrays = np.stack([image_to_uint8(img, self.info.image_size, self.info.channels) for _, _, img in todo])
            heat = gradcam(self.model, self.info, arrays, [self._index[row["label"]] for row, _, _ in todo],
                           device=self.device, layer=self.layer, batch_size=self.batch_size)
            for (row, number, image), h in zip(todo, heat):
                target = self.folder / overlay_name(number, row["path"])
                with atomic_path(target) as tmp:
                    side = min(self.max_side, max(self.min_side, *image.size))  # small photos enlarged
                    overlay(image, h, side).save(tmp, format="PNG")
                row["overlay"] = str(target)
                self.written += 1
        return rows
