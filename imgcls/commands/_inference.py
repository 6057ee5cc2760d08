"""The inference options eval and predict share, declared once; defaults from imgcls.evaluation.config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from imgcls.devices import DEVICES_HELP
from imgcls.evaluation.config import MAX_DECODE_THREADS, InferenceConfig

# Why the two --batch-size defaults differ (said in each command's help).
BATCH_SIZE_WHY = {
    "eval": "Larger than predict's default: eval scores the whole set before it reports anything, so "
            "fewer, larger model calls.",
    "predict": "Smaller than eval's default: predict writes each batch's lines as soon as it is done "
               "(first results sooner on a pipe), and --explain computes Grad-CAM a batch at a time.",
}


def inference_options(command: str, config: InferenceConfig, *, model_help: str, many_models: bool = False,
                      cache_note: str = "") -> Callable[[Callable], Callable]:
    """--model, --batch-size, --workers, --device, --cache-dir and --no-cache for ``command`` (eval or predict).

    The command receives them as ``models`` (a tuple, with ``many_models``) or ``model``, ``batch_size``,
    ``workers``, ``device``, ``cache_dir`` and ``no_cache``.
    """
    other = {"eval": "predict", "predict": "eval"}[command]
    options = [
        click.option("-m", "--model", "models" if many_models else "model", multiple=many_models,
                     metavar="FILE|RUN_DIR", help=model_help),
        click.option("--batch-size", type=click.IntRange(min=1), default=config.batch_size, show_default=True,
                     help=f"Images per inference batch. {BATCH_SIZE_WHY[command]}"),
        click.option("--workers", type=click.IntRange(min=0), default=config.workers,
                     help="Image-decoding threads in this process, working ahead of the model (threads, not the "
                          "worker processes of train --workers: Pillow releases the GIL while it decodes). 0, or "
                          f"a single image: decode in the main thread. Default: min({MAX_DECODE_THREADS}, "
                          "CPU count)."),
        click.option("--device", default=config.device, show_default=True,
                     help=f"{DEVICES_HELP}. An ONNX model: auto is CUDA with onnxruntime-gpu, else the CPU; no mps."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help=f"Decoded-image cache shared with train and {other} (entries keyed by the ordered files "
                          "as they are now: path, size, modification and change times; the model's image size "
                          f"and channels).{cache_note} Default: $IMGCLS_CACHE, else ~/.cache/imgcls."),
        click.option("--no-cache", is_flag=True, default=not config.cache,
                     help="Decode the images on the fly (a thread pool feeding the model) without reading or "
                          "writing the cache."),
    ]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
