"""How much the imgcls pipeline costs on top of the model's own work (issue 6, benchmarks 1 and 2).

1. frozen transfer learning: wall time of
   ``imgcls train --arch mobilenet_v2 --freeze --epochs 10`` (process start, imports,
   decoding, feature extraction, 10 epochs of the head, saving) divided by the time of one
   backbone forward pass over the same images already in memory. Target <= 1.3 (floor 1.0).
2. scratch training: images/s of ``imgcls train --arch cnn`` on a folder of PNG files,
   divided by images/s of the same model stepping (AdamW, same batch size) on random
   tensors already in memory, over the same number of train and val images. Target >= 0.9.

Data: Fashion-MNIST PNG class folders (benchmarks/_fmnist.py). Prints one JSON object.

    .venv/bin/python benchmarks/pipeline_ratio.py [--per-class 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _fmnist  # noqa: E402

SHARED_WEIGHTS = HERE.parent.parent / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"


def imgcls(*args: str, stdin=None, stdout=None, env=None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgcls", *args], stdin=stdin, stdout=stdout or subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - start


def frozen_ratio(manifest: Path, work: Path, n_images: int, size: int, epochs: int, env: dict) -> dict:
    import torch

    from imgcls.manifest import read_all
    from imgcls.models import get_model
    from imgcls.models.preprocess import load_uint8, normalize

    weights = ["--weights", str(SHARED_WEIGHTS)] if SHARED_WEIGHTS.exists() else ["--no-pretrained"]
    wall = imgcls("train", str(manifest), "--arch", "mobilenet_v2", *weights, "--freeze", "--epochs", str(epochs),
                  "--image-size", str(size), "--patience", "0", "--no-cache", "--out", str(work / "frozen"),
                  "--batch-size", "64", env=env)
    header, records, reader = read_all(manifest)
    used = [r for r in records if r.get("split") in ("train", "val")]
    images = torch.from_numpy(__import__("numpy").stack([load_uint8(reader.resolve(r), size, 3) for r in used]))
    model = get_model("mobilenet_v2", num_classes=10, in_channels=3).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), 64):
            model.features(normalize(images[i:i + 64], [0.5] * 3, [0.5] * 3).contiguous(memory_format=torch.channels_last))
    forward = time.perf_counter() - start
    return {"images": len(used), "image_size": size, "epochs": epochs, "train_wall_s": round(wall, 2),
            "one_backbone_pass_s": round(forward, 2), "ratio": round(wall / forward, 3), "target": "<= 1.3"}


def scratch_ratio(manifest: Path, work: Path, epochs: int, batch: int, env: dict) -> dict:
    import torch

    from imgcls.manifest import read_all
    from imgcls.models import get_model

    header, records, _ = read_all(manifest)
    n_train = sum(r.get("split") == "train" for r in records)
    n_val = sum(r.get("split") == "val" for r in records)
    # a zero-epoch-like baseline: the fixed costs (start, imports, decoding) are part of the pipeline
    wall = imgcls("train", str(manifest), "--arch", "cnn", "--epochs", str(epochs), "--patience", "0", "--no-cache",
                  "--batch-size", str(batch), "--out", str(work / "scratch"), env=env)
    pipeline_ips = (n_train + n_val) * epochs / wall
    model = get_model("cnn", num_classes=10, in_channels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for _ in range(0, n_train, batch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            for _ in range(0, n_val, batch):
                model(x)
    raw = time.perf_counter() - start
    raw_ips = (n_train + n_val) * epochs / raw
    return {"train_images": n_train, "val_images": n_val, "epochs": epochs, "batch_size": batch,
            "pipeline_wall_s": round(wall, 2), "pipeline_images_per_s": round(pipeline_ips, 1),
            "raw_tensor_s": round(raw, 2), "raw_images_per_s": round(raw_ips, 1),
            "ratio": round(pipeline_ips / raw_ips, 3), "target": ">= 0.9"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=200, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=96, help="input size of the frozen mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    work = args.work or Path(tempfile.mkdtemp(prefix="imgcls-ratio-"))
    data = work / "data"
    if not data.exists():
        _fmnist.materialise(data, args.per_class, args.val_per_class, test_per_class=0)
    manifest = work / "data.jsonl"
    with open(manifest, "w") as fh:
        imgcls("prepare", str(data), "-q", stdout=fh, env=env)
    result = {"machine": f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
              "frozen_transfer": frozen_ratio(manifest, work, 0, args.size, args.epochs, env),
              "scratch": scratch_ratio(manifest, work, args.epochs, args.batch_size, env)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
