"""imgcls against the tools users have (issue 6, benchmark 3).

Same data for everyone: Fashion-MNIST, 1,000 training images per class as PNG class
folders and the official 10,000 test images as a folder. 10 epochs, batch 128, 2 threads:

(a) the hand-written PyTorch loop (torchvision ImageFolder + DataLoader), peers/torch_loop.py;
(b) Keras with image_dataset_from_directory, peers/keras_cnn.py, in its own virtual
    environment (tensorflow-cpu from PyPI, made here on first use; never a project dependency);
both running the classic MNIST-study CNN, and
(c) imgcls with its own defaults: prepare | train --epochs 10 --batch-size 128 | eval.

Time to accuracy (target (i): the peers' test accuracy in at most half their wall time):
the same imgcls pipeline with nothing but --epochs set (every other option at its
default), for E in --tta-epochs, shortest first, until a run's test accuracy reaches the
best peer's. Each of those is a complete, independent run a user would type, timed end
to end (prepare, train, eval); no test data is looked at during training.

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


def run_imgcls(data: Path, work: Path, epochs: int, env: dict, train_options: str = "--batch-size 128") -> dict:
    start = time.perf_counter()
    run = work / f"imgcls-run-{time.time_ns()}"
    pipeline = (f"{sys.executable} -m imgcls prepare {data} -q | "
                f"{sys.executable} -m imgcls train --epochs {epochs} {train_options} --no-cache --out {run} -q | "
                f"{sys.executable} -m imgcls eval --json -q")
    out = subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - start
    report = json.loads(out.stdout)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return {"tool": "imgcls", "command": f"train --epochs {epochs} {train_options}".strip(), "wall_s": round(wall, 1),
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
    parser.add_argument("--skip", default="", help="comma-separated: keras, torch, imgcls, tta")
    parser.add_argument("--tta-epochs", default="3,4,5,6,8,10",
                        help="time to accuracy: imgcls --epochs values to try, shortest first")
    parser.add_argument("--peer-accuracy", type=float, default=None,
                        help="time-to-accuracy target when the peers are skipped (e.g. from an earlier run)")
    parser.add_argument("--peer-wall", type=float, default=None,
                        help="the fastest peer's wall time when the peers are skipped")
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
    peers = [r for r in results["runs"] if r["tool"] != "imgcls"]
    target = max([r["test_accuracy"] for r in peers], default=args.peer_accuracy)
    fastest = min([r["wall_s"] for r in peers], default=args.peer_wall)
    if "tta" not in skip and target is not None:
        # Time to accuracy: complete runs with imgcls' defaults and only --epochs set.
        tries = []
        for epochs in [int(e) for e in args.tta_epochs.split(",") if e]:
            run = run_imgcls(data, args.work, epochs, env, train_options="")
            tries.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
            if run["test_accuracy"] >= target:
                break
        reached = [r for r in tries if r["test_accuracy"] >= target]
        results["time_to_accuracy"] = {
            "target_accuracy": target, "fastest_peer_wall_s": fastest, "tries": tries,
            "imgcls_wall_s": reached[0]["wall_s"] if reached else None,
            "fraction_of_fastest_peer": round(reached[0]["wall_s"] / fastest, 3) if reached and fastest else None,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
