"""Fashion-MNIST, 1,000 training images per class: imgcls train --arch cnn, test accuracy and wall time.

    python benchmarks/fashion_mnist.py                 # the full run (10 epochs), prints JSON
    python benchmarks/fashion_mnist.py --quick         # 100 per class, 2 epochs, 1,000 test images
    python benchmarks/fashion_mnist.py -- --lr 3e-3    # extra arguments go to imgcls train

Flow: PNG class folders (train: 1,000 per class; val: 100 per class taken from the REST of the
official training set, used only for best-epoch selection; test: the official 10,000 t10k
images), then ``imgcls prepare DATA > manifest``, ``imgcls train manifest --arch cnn
--epochs 10``, and the test accuracy of the saved model through imgcls' own preprocessing.
Times are wall clock of each command as a subprocess (imports included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fmnist as fm  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: the whole official test set")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "imgcls-bench-fmnist")
    parser.add_argument("--quick", action="store_true", help="100 per class, 2 epochs, 100 test images per class")
    parser.add_argument("train_args", nargs="*", help="extra imgcls train arguments (after --)")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_class, args.val_per_class, args.epochs, args.test_per_class = 100, 20, 2, 100

    result: dict = {"benchmark": "fashion_mnist", "machine": fm.machine()}
    data = args.work / f"data-{args.per_class}-{args.val_per_class}-{args.test_per_class or 'all'}"
    t0 = time.perf_counter()
    fm.materialise(data, args.per_class, args.val_per_class, args.test_per_class)
    result["materialise_s"] = round(time.perf_counter() - t0, 1)
    manifest = args.work / f"{data.name}.jsonl"
    result["prepare_s"] = round(fm.run([*fm.IMGCLS, "prepare", str(data), "-q"], stdout=manifest), 1)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.work / f"run-{args.arch}-{stamp}"
    train_cmd = ["train", str(manifest), "--arch", args.arch, "--epochs", str(args.epochs), "--out", str(run_dir),
                 *args.train_args]
    out_manifest = args.work / f"out-{stamp}.jsonl"
    result["command"] = "imgcls " + " ".join(train_cmd).replace(str(args.work), "$WORK")
    result["train_s"] = round(fm.run([*fm.IMGCLS, *train_cmd], stdout=out_manifest), 1)
    hist = fm.history(run_dir)
    result["epochs_run"] = len(hist)
    best = [h for h in hist if h.get("best")]
    result["best_epoch"] = best[-1]["epoch"] if best else None
    result["val_acc_at_best_epoch"] = best[-1]["val_acc"] if best else None
    result["seconds_per_epoch"] = [h["seconds"] for h in hist]
    result.update(fm.test_accuracy(run_dir / "model.safetensors", out_manifest))
    result.update(per_class=args.per_class, val_per_class=args.val_per_class, arch=args.arch, epochs=args.epochs,
                  load_avg_end=os.getloadavg())
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
