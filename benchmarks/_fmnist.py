"""Shared by the Fashion-MNIST benchmarks: materialise subsets as PNG class folders, score a model.

Data: the Debian package dataset-fashion-mnist (IDX files under /usr/share/datasets/fashion-mnist).
Training images: the first K per class of a seeded permutation of the official training set
(so smaller K are subsets of larger ones); validation images: the next V per class of the same
permutation (disjoint from every training subset, never counted as training data); test: the
official 10,000 t10k images (or the first N per class with --test-per-class).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

IDX_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
REPO = Path(__file__).resolve().parent.parent
IMGCLS = [sys.executable, "-m", "imgcls"]


def load_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from imgcls.importers import read_idx

    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        images = read_idx(IDX_DIR / f"{stem}-images-idx3-ubyte.gz")
        labels = read_idx(IDX_DIR / f"{stem}-labels-idx1-ubyte.gz")
        out[split] = (images, labels)
    return out


def pools(labels: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Per class, the training-set indices in a seeded random order."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(len(CLASSES))]


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> int:
    from PIL import Image

    for i in indices:
        target = folder / CLASSES[int(labels[i])] / f"{int(i):05d}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(target)
    return len(indices)


def materialise(dest: Path, per_class: int, val_per_class: int, test_per_class: int | None = None,
                seed: int = 0) -> dict:
    """dest/{train,val,test}/<class>/<index>.png (the layout imgcls prepare keeps as is)."""
    marker = dest / "done.json"
    key = {"per_class": per_class, "val_per_class": val_per_class, "test_per_class": test_per_class, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == key:
        return key
    arrays = load_arrays()
    images, labels = arrays["train"]
    order = pools(labels, seed)
    train_idx = np.concatenate([p[:per_class] for p in order])
    val_idx = np.concatenate([p[1000 if per_class <= 1000 else per_class:][:val_per_class] for p in order])
    timages, tlabels = arrays["test"]
    if test_per_class is None:
        test_idx = np.arange(len(tlabels))
    else:
        test_idx = np.concatenate([np.flatnonzero(tlabels == c)[:test_per_class] for c in range(len(CLASSES))])
    write_pngs(dest / "train", images, labels, train_idx)
    write_pngs(dest / "val", images, labels, val_idx)
    write_pngs(dest / "test", timages, tlabels, test_idx)
    marker.write_text(json.dumps(key))
    return key


def run(cmd: list[str], stdin: Path | None = None, stdout: Path | None = None) -> float:
    """Run a command, return its wall time; stderr passes through (progress lines)."""
    t0 = time.perf_counter()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as fin, \
            open(stdout, "wb") if stdout else open(os.devnull, "wb") as fout:
        proc = subprocess.run(cmd, stdin=fin, stdout=fout, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}")
    return time.perf_counter() - t0


def test_accuracy(model_path: Path, manifest: Path, split: str = "test", batch_size: int = 256) -> dict:
    """Accuracy on the manifest's test records, through the model's own preprocessing."""
    import torch

    from imgcls.manifest import read_all
    from imgcls.models.io import load_model
    from imgcls.models.preprocess import normalize
    from imgcls.training.data import preload_images

    model, info = load_model(model_path)
    header, records, reader = read_all(manifest)
    recs = [r for r in records if r.get("split") == split]
    paths = [reader.resolve(r) for r in recs]
    index = {c: i for i, c in enumerate(info.classes)}
    labels = torch.tensor([index[r["label"]] for r in recs])
    t0 = time.perf_counter()
    images = preload_images(paths, info.image_size, info.channels)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(recs), batch_size):
            x = normalize(images[start:start + batch_size], info.mean, info.std)
            correct += int((model(x).argmax(1) == labels[start:start + batch_size]).sum())
    return {"test_images": len(recs), "test_acc": round(correct / max(1, len(recs)), 4),
            "eval_s": round(time.perf_counter() - t0, 1)}


def history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_avg_start": os.getloadavg()}
