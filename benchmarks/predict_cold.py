"""Cold start of ``imgcls predict one.jpg`` against ``python -c "import torch, torchvision"``.

    python benchmarks/predict_cold.py [--arch cnn] [--size 64] [--repeat 5]

Makes one 640x480 JPEG and a randomly initialised model (``--arch``, ``--size``) in a
temporary folder, then times fresh processes, interleaved: the baseline import and
``imgcls predict`` (console script of this interpreter). Prints one JSON object with
the best and median wall times; ``extra_s`` = predict - baseline (target: < 1 s).
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


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--size", type=int, default=64, help="model input size (px)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from imgcls.models import get_model
    from imgcls.models.io import ModelInfo, save_model

    script = Path(sys.executable).with_name("imgcls")
    imgcls = [str(script)] if script.exists() else [sys.executable, "-m", "imgcls"]
    env = {**os.environ, "IMGCLS_MODEL": ""}
    with tempfile.TemporaryDirectory(prefix="imgcls-predictcold-") as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB").save(tmp / "one.jpg", quality=90)
        torch.manual_seed(0)
        classes = [f"c{i}" for i in range(args.classes)]
        model = get_model(args.arch, num_classes=args.classes, in_channels=3)
        save_model(tmp / "model.safetensors", model, ModelInfo(
            arch=args.arch, classes=classes, image_size=args.size, channels=3, mean=[0.5] * 3, std=[0.25] * 3))
        model_mb = (tmp / "model.safetensors").stat().st_size / 1e6
        baseline_cmd = [sys.executable, "-c", "import torch, torchvision"]
        predict_cmd = [*imgcls, "predict", str(tmp / "one.jpg"), "--model", str(tmp / "model.safetensors"), "--json"]
        timed(baseline_cmd, env), timed(predict_cmd, env)  # warm the page cache
        base, pred = [], []
        for _ in range(args.repeat):
            base.append(timed(baseline_cmd, env))
            pred.append(timed(predict_cmd, env))
    print(json.dumps({
        "benchmark": "predict_cold",
        "arch": args.arch, "size": args.size, "repeats": args.repeat, "cpu_count": os.cpu_count(),
        "model_mb": round(model_mb, 2),
        "import_torch_torchvision_s": {"best": round(min(base), 3), "median": round(statistics.median(base), 3)},
        "predict_one_jpg_s": {"best": round(min(pred), 3), "median": round(statistics.median(pred), 3)},
        "extra_s": {"best": round(min(pred) - min(base), 3),
                    "median": round(statistics.median(pred) - statistics.median(base), 3)},
        "target": "extra_s < 1.0",
    }, indent=2))


if __name__ == "__main__":
    main()
