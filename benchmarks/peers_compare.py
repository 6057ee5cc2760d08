"""imgcls against the tools users have (issue 6, benchmark 3).

Same data for everyone: Fashion-MNIST, 1,000 training images per class as PNG class
folders and the official 10,000 test images as a folder. 10 epochs, batch 128, 2 threads:

(a) the hand-written PyTorch loop (torchvision ImageFolder + DataLoader), peers/torch_loop.py;
(b) Keras with image_dataset_from_directory, peers/keras_cnn.py, in its own virtual
    environment (tensorflow-cpu from PyPI, made here on first use; never a project dependency);
both running the classic MNIST-study CNN, and
(c) imgcls with its own defaults: prepare | train --epochs 10 --batch-size 128 | eval.

The PyTorch peer runs with this environment's torch (the same build imgcls uses).
Prints one JSON object: wall time and test accuracy of each.

    .venv/bin/python benchmarks/peers_compare.py [--epochs 10] [--threads 2] [--per-class 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _fmnist  # noqa: E402


def keras_python(work: Path) -> Path:
    venv = work / "venv-keras"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu", "pillow"], check=True)
    return python


def run_peer(python: Path, script: str, train: Path, test: Path, epochs: int, threads: int, env: dict) -> dict:
    out = subprocess.run([str(python), str(HERE / "peers" / script), str(train), str(test), str(epochs), str(threads)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_imgcls(data: Path, work: Path, epochs: int, env: dict) -> dict:
    start = time.perf_counter()
    run = work / f"imgcls-run-{int(time.time())}"
    pipeline = (f"{sys.executable} -m imgcls prepare {data} -q | "
                f"{sys.executable} -m imgcls train --epochs {epochs} --batch-size 128 --no-cache --out {run} -q | "
                f"{sys.executable} -m imgcls eval --json -q")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    report = json.loads(out.stdout)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return {"tool": "imgcls", "wall_s": round(wall, 1),
            "test_accuracy": round(report["models"][0]["metrics"]["accuracy"], 4),
            "parameters": report["models"][0]["model"].get("parameters"),
            "epoch_seconds": [h["seconds"] for h in history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: the whole official test set")
    parser.add_argument("--work", type=Path, default=HERE.parent / "bench-data")
    parser.add_argument("--skip", default="", help="comma-separated: keras, torch, imgcls")
    args = parser.parse_args()
    data = args.work / f"peers-fmnist-{args.per_class}-{args.test_per_class or 'all'}"
    _fmnist.materialise(data, args.per_class, 0, test_per_class=args.test_per_class)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    skip = set(filter(None, args.skip.split(",")))
    results = {"machine": f"{os.cpu_count()} CPUs", "epochs": args.epochs, "threads": args.threads,
               "train_per_class": args.per_class, "runs": []}
    if "torch" not in skip:
        results["runs"].append(run_peer(Path(sys.executable), "torch_loop.py", data / "train", data / "test",
                                        args.epochs, args.threads, env))
    if "keras" not in skip:
        results["runs"].append(run_peer(keras_python(args.work), "keras_cnn.py", data / "train", data / "test",
                                        args.epochs, args.threads, env))
    if "imgcls" not in skip:
        results["runs"].append(run_imgcls(data, args.work, args.epochs, env))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
