"""ONNX against the model.safetensors file: ``imgcls predict one.jpg`` cold, ``imgcls eval`` throughput, export time.

    OMP_NUM_THREADS=1 python benchmarks/export_speed.py                      # cnn (64 px) and mobilenet_v2 (224 px)
    OMP_NUM_THREADS=1 python benchmarks/export_speed.py --archs cnn:64 --repeat 9 --eval-images 512

For each ``ARCH:SIZE``, in a temporary folder: a randomly initialised model (10 classes; the
weights do not change the cost) saved as model.safetensors; ``imgcls export`` to model.onnx
(timed, default exporter, then --exporter dynamo once) and to model-int8.onnx (--int8,
calibrated on 64 of the eval images); then

* cold start: fresh ``imgcls predict one.jpg --json`` processes (a 640x480 JPEG), interleaved
  safetensors / onnx / int8, ``--repeat`` rounds; best and median wall time;
* throughput: ONE ``imgcls eval`` over the same ``--eval-images`` 96 px JPEGs with the three
  models side by side (``-m A -m B -m C``), once through the decoded-image cache (images/s of
  the model alone: the first model decodes, every model's time excludes it) and once with
  --no-cache (decoding threads feeding the model, end to end).

``--light-venv DIR`` adds the ONNX file predicted by DIR/bin/imgcls, an install without torch
made as the README says (``pip install --no-deps imgcls`` plus the light packages).

The machine is shared: the load average (1 min) is printed before and after each part, and
best-of-N is the figure to quote. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load() -> float:
    return round(os.getloadavg()[0], 2)


def run(cmd: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, proc


def stats(values: list[float]) -> dict:
    return {"best": round(min(values), 3), "median": round(statistics.median(values), 3)}


def bench_arch(arch: str, size: int, args, tmp: Path, imgcls: list[str], env: dict) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo, save_model

    folder = tmp / f"{arch}-{size}"
    folder.mkdir()
    torch.manual_seed(0)
    model = get_model(arch, num_classes=10, in_channels=3)
    classes = [f"c{i}" for i in range(10)]
    st = save_model(folder / "model.safetensors", model, ModelInfo(
        arch=arch, classes=classes, image_size=size, channels=3, mean=[0.5] * 3, std=[0.25] * 3))
    rng = np.random.default_rng(0)
    one = folder / "one.jpg"
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB").save(one, quality=90)
    images = folder / "images"
    images.mkdir()
    records = []
    for i in range(args.eval_images):
        path = images / f"{i:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), "RGB").save(path, quality=90)
        records.append({"path": str(path), "label": classes[i % 10], "split": "test"})
    manifest = folder / "eval.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in [
        {"format": "imgcls-manifest", "version": "1.0", "classes": classes}, *records]) + "\n")

    out: dict = {"arch": arch, "size": size, "load_before": load(),
                 "model_mb": round(st.stat().st_size / 1e6, 2)}
    onnx_path, int8_path = folder / "model.onnx", folder / "model-int8.onnx"
    seconds, proc = run([*imgcls, "export", str(st), "-o", str(onnx_path)], env)
    out["export_s"] = round(seconds, 2)
    out["export_line"] = proc.stderr.strip().splitlines()[-1]
    out["check_line"] = next((line for line in proc.stderr.splitlines() if line.startswith("check:")), None)
    if not args.no_dynamo:
        seconds, proc = run([*imgcls, "export", str(st), "--exporter", "dynamo", "-o", str(folder / "dyn.onnx")], env)
        out["export_dynamo_s"] = round(seconds, 2)
    seconds, proc = run([*imgcls, "export", str(st), "--int8", "--calibration", str(images), "-o", str(int8_path)], env)
    out["export_int8_s"] = round(seconds, 2)
    out["onnx_mb"] = round(onnx_path.stat().st_size / 1e6, 2)
    out["int8_mb"] = round(int8_path.stat().st_size / 1e6, 2)

    models = {"safetensors": st, "onnx": onnx_path, "int8": int8_path}
    runners = {name: imgcls for name in models}
    if args.light_venv:  # the same ONNX file from an install without torch (README, "Predicting without torch")
        runners["onnx_torch_free_venv"] = [str(Path(args.light_venv) / "bin" / "imgcls")]
    files = {**models, "onnx_torch_free_venv": onnx_path}
    cold: dict[str, list[float]] = {name: [] for name in runners}
    for name, runner in runners.items():  # warm the page cache
        run([*runner, "predict", str(one), "-m", str(files[name]), "--json"], env)
    out["load_before_cold"] = load()
    for _ in range(args.repeat):
        for name, runner in runners.items():
            cold[name].append(run([*runner, "predict", str(one), "-m", str(files[name]), "--json"], env)[0])
    out["load_after_cold"] = load()
    out["predict_one_jpg_s"] = {name: stats(values) for name, values in cold.items()}

    for mode, extra in () if args.skip_eval else (("cached", ["--cache-dir", str(folder / "cache")]),
                                                  ("streamed", ["--no-cache"])):
        cmd = [*imgcls, "eval", str(manifest), "--json", "-q", *extra]
        for path in models.values():
            cmd += ["-m", str(path)]
        out[f"load_before_eval_{mode}"] = load()
        _, proc = run(cmd, env)
        document = json.loads(proc.stdout)
        out[f"eval_{mode}_images_per_s"] = {
            name: round(report["speed"]["images_per_second"], 1)
            for name, report in zip(models, document["models"])}
    out["eval_images"] = args.eval_images
    out["load_after"] = load()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="cnn:64,mobilenet_v2:224", help="ARCH:SIZE,... (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--eval-images", type=int, default=256)
    parser.add_argument("--no-dynamo", action="store_true", help="skip timing the dynamo exporter")
    parser.add_argument("--light-venv", metavar="DIR",
                        help="also time predict of the ONNX file with DIR/bin/imgcls (a venv without torch)")
    parser.add_argument("--skip-eval", action="store_true", help="cold start only")
    args = parser.parse_args()

    script = Path(sys.executable).with_name("imgcls")
    imgcls = [str(script)] if script.exists() else [sys.executable, "-m", "imgcls"]
    results = []
    with tempfile.TemporaryDirectory(prefix="imgcls-exportspeed-") as tmp:
        env = {**os.environ, "IMGCLS_MODEL": "", "IMGCLS_CACHE": str(Path(tmp) / "cache")}
        for item in args.archs.split(","):
            arch, size = item.split(":")
            results.append(bench_arch(arch, int(size), args, Path(tmp), imgcls, env))
    print(json.dumps({"benchmark": "export_speed", "cpu_count": os.cpu_count(),
                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "repeats": args.repeat,
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
