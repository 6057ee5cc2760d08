"""Eval throughput end to end against the model's raw inference speed on preloaded tensors.

    python benchmarks/eval_speed.py [--n 2000] [--size 28] [--channels 1] [--arch cnn] [--batch-size 64]

Writes N PNG files and a randomly initialised model to a temporary folder, then:

* ``end_to_end``: ``imgcls eval`` run as a subprocess on the N images, minus the
  same command on 1 image (process start, imports, model loading cancel out), both
  with ``--no-cache`` (decoding streamed to the model) and with a warm decoded-image
  cache (``cached``);
* ``loop``: the images/s eval itself reports (decoding or cache read + inference);
* ``raw``: the model alone on a preloaded, already normalised tensor (same batch size,
  same memory layout as eval feeds it).

Each measure is repeated (interleaved) and the best run of each is compared, since the
CPU may be shared; medians are printed too. Prints one JSON object;
``ratio_end_to_end`` = end_to_end / raw (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_images(folder: Path, n: int, size: int, channels: int, n_classes: int) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    base = rng.integers(0, 256, (n_classes, size, size, 3), dtype=np.uint8)
    for i in range(n):
        c = i % n_classes
        pixels = np.clip(base[c].astype(int) + rng.integers(-20, 21, (size, size, 3)), 0, 255).astype(np.uint8)
        img = Image.fromarray(pixels, "RGB")
        if channels == 1:
            img = img.convert("L")
        path = folder / f"c{c}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        records.append({"path": str(path), "label": f"c{c}", "split": "test"})
    return records


def write_manifest(path: Path, classes: list[str], records: list[dict]) -> None:
    lines = [json.dumps({"format": "imgcls-manifest", "version": "1.0", "classes": classes})]
    path.write_text("\n".join(lines + [json.dumps(r) for r in records]) + "\n")


def imgcls_command() -> list[str]:
    script = Path(sys.executable).with_name("imgcls")
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgcls"]


def run_eval(manifest: Path, model: Path, batch_size: int, device: str, workers: int | None,
             cache_dir: Path | None) -> tuple[float, dict]:
    cmd = [*imgcls_command(), "eval", str(manifest), "--model", str(model), "--json", "-q",
           "--batch-size", str(batch_size), "--device", device]
    cmd += ["--cache-dir", str(cache_dir)] if cache_dir else ["--no-cache"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"imgcls eval failed: {proc.stderr}")
    return wall, json.loads(proc.stdout)


def raw_speed(model_path: Path, n: int, batch_size: int, device: str) -> float:
    """The model alone on one preloaded batch, made by the same normalize() eval uses.

    normalize() turns a uint8 NHWC batch into NCHW floats that keep the channels-last
    memory layout, which CPU convolutions run at a different speed than a contiguous
    NCHW tensor: the raw figure must use the layout the model really gets.
    """
    import torch

    from imgcls.models.io import load_model
    from imgcls.models.preprocess import normalize

    model, info = load_model(model_path, device)
    size, channels = info.image_size, info.channels
    u8 = torch.randint(0, 256, (batch_size, size, size, channels), dtype=torch.uint8)
    x = normalize(u8.to(device), info.mean, info.std)
    batches = max(1, n // batch_size)
    with torch.inference_mode():
        for _ in range(2):
            torch.softmax(model(x), 1).cpu()
        start = time.perf_counter()
        for _ in range(batches):
            torch.softmax(model(x), 1).cpu()  # the same softmax + copy back eval does
        seconds = time.perf_counter() - start
    return batches * batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images")
    parser.add_argument("--size", type=int, default=28, help="image and model input size (px)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="eval --workers (default: eval's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (median reported)")
    args = parser.parse_args()

    import torch

    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo, save_model

    classes = [f"c{i}" for i in range(args.classes)]
    with tempfile.TemporaryDirectory(prefix="imgcls-evalbench-") as tmp:
        tmp = Path(tmp)
        records = make_images(tmp / "img", args.n, args.size, args.channels, args.classes)
        write_manifest(tmp / "all.jsonl", classes, records)
        write_manifest(tmp / "one.jsonl", classes, records[:1])
        torch.manual_seed(0)
        model = get_model(args.arch, num_classes=args.classes, in_channels=args.channels)
        save_model(tmp / "model.safetensors", model, ModelInfo(
            arch=args.arch, classes=classes, image_size=args.size, channels=args.channels,
            mean=[0.5] * args.channels, std=[0.25] * args.channels))
        model_path = tmp / "model.safetensors"

        cache = tmp / "cache"
        run_eval(tmp / "one.jsonl", model_path, args.batch_size, args.device, args.workers, None)  # warm page cache
        run_eval(tmp / "all.jsonl", model_path, args.batch_size, args.device, args.workers, cache)  # fill the cache
        runs: dict[str, list] = {"one": [], "no_cache": [], "cached": [], "raw": []}
        for _ in range(args.repeat):  # interleaved, so load from other jobs hits every measure alike
            runs["one"].append(run_eval(tmp / "one.jsonl", model_path, args.batch_size, args.device,
                                        args.workers, None)[0])
            runs["no_cache"].append(run_eval(tmp / "all.jsonl", model_path, args.batch_size, args.device,
                                             args.workers, None))
            runs["cached"].append(run_eval(tmp / "all.jsonl", model_path, args.batch_size, args.device,
                                           args.workers, cache))
            runs["raw"].append(raw_speed(model_path, args.n, args.batch_size, args.device))

    # best of the repeats: the least disturbed run of each measure (the CPU may be shared)
    one, raw = min(runs["one"]), max(runs["raw"])
    result = {
        "benchmark": "eval_speed",
        "arch": args.arch, "n_images": args.n, "size": args.size, "channels": args.channels,
        "batch_size": args.batch_size, "device": args.device, "workers": args.workers,
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "repeats": args.repeat,
        "raw_images_per_s": round(raw, 1),
        "eval_one_image_wall_s": round(one, 3),
    }
    for mode in ("no_cache", "cached"):
        walls = [w for w, _ in runs[mode]]
        loops = [d["models"][0]["speed"]["images_per_second"] for _, d in runs[mode]]
        end_to_end = (args.n - 1) / (min(walls) - one)
        median_e2e = (args.n - 1) / (statistics.median(walls) - statistics.median(runs["one"]))
        result[mode] = {
            "eval_wall_s": round(min(walls), 3),
            "end_to_end_images_per_s": round(end_to_end, 1),
            "loop_images_per_s": round(max(loops), 1),
            "ratio_end_to_end": round(end_to_end / raw, 3),
            "ratio_loop": round(max(loops) / raw, 3),
            "median_ratio_end_to_end": round(median_e2e / statistics.median(runs["raw"]), 3),
        }
    result["target"] = "ratio_end_to_end >= 0.9"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
