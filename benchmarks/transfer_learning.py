"""Transfer learning against training from scratch on Fashion-MNIST, at 10, 50, 100 and 500 images per class.

    python benchmarks/transfer_learning.py --weights ../shared/weights/mobilenet_v2-imagenet.safetensors
    python benchmarks/transfer_learning.py --weights W --sizes 10 50 --test-per-class 100   # quicker

For each training-set size K (the first K images per class of one seeded permutation of the
official training set, so smaller sets are subsets of larger ones):

1. scratch:   imgcls train --arch cnn (28 px, 1 channel: the data's own size)
2. frozen:    imgcls train --arch mobilenet_v2 --weights W --freeze --head linear --image-size 160
              (ImageNet backbone as a fixed feature extractor; features computed once)
3. finetuned: imgcls finetune (the frozen run's stream) --unfreeze 3: the last 3 of mobilenet_v2's
              9 stages plus the head, head at 1e-4, backbone at 1e-5, BatchNorm statistics frozen
              (imgcls' finetune defaults)

160 px rather than 96: on the 28 px images upsampled, ImageNet features at 160 px gave clearly
better validation accuracy than at 96 px (and no worse than 224 px) in a frozen-backbone probe;
see docs/benchmarks.md (transfer learning).

Validation: 50 images per class from outside the 1,000-per-class training pool (the same for
every K and every method; used for early stopping / best-epoch selection only). Test: the
official t10k images (all 10,000 unless --test-per-class). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fmnist as fm  # noqa: E402

DEFAULT_WEIGHTS = fm.REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="mobilenet_v2 ImageNet state dict")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 500], help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: all 10,000 test images")
    parser.add_argument("--image-size", type=int, default=160, help="input size of mobilenet_v2")
    parser.add_argument("--scratch-args", default="--arch cnn --epochs 30 --batch-size 32 --patience 10")
    parser.add_argument("--frozen-args", default="--head linear --epochs 30 --batch-size 32 --patience 10",
                        help="the SGD head this table was measured with; benchmarks/heads_study.py compares the heads")
    parser.add_argument("--finetune-args", default="--unfreeze 3 --epochs 8 --patience 4")
    parser.add_argument("--methods", nargs="+", default=["scratch", "frozen", "finetuned"])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "imgcls-bench-transfer")
    args = parser.parse_args(argv)
    if not args.weights.exists():
        raise SystemExit(f"{args.weights}: no such weights file (see ../shared/weights/README.md)")

    report: dict = {"benchmark": "transfer_learning", "machine": fm.machine(), "weights": str(args.weights),
                    "image_size": args.image_size, "val_per_class": args.val_per_class,
                    "test_per_class": args.test_per_class or "all",
                    "commands": {"scratch": f"imgcls train M {args.scratch_args}",
                                 "frozen": f"imgcls train M --arch mobilenet_v2 --weights W --freeze "
                                           f"--image-size {args.image_size} {args.frozen_args}",
                                 "finetuned": f"imgcls finetune FROZEN_STREAM {args.finetune_args}"},
                    "rows": []}
    for k in args.sizes:
        data = args.work / f"data-{k}-{args.val_per_class}-{args.test_per_class or 'all'}"
        fm.materialise(data, k, args.val_per_class, args.test_per_class)
        manifest = args.work / f"{data.name}.jsonl"
        fm.run([*fm.IMGCLS, "prepare", str(data), "-q"], stdout=manifest)
        row: dict = {"per_class": k, "train_images": 10 * k}
        stamp = time.strftime("%Y%m%d-%H%M%S")
        runs = {m: args.work / f"run-{k}-{m}-{stamp}" for m in ("scratch", "frozen", "finetuned")}
        streams = {m: args.work / f"out-{k}-{m}-{stamp}.jsonl" for m in runs}
        if "scratch" in args.methods:
            cmd = ["train", str(manifest), *shlex.split(args.scratch_args), "--out", str(runs["scratch"])]
            row["scratch_train_s"] = round(fm.run([*fm.IMGCLS, *cmd], stdout=streams["scratch"]), 1)
            row["scratch"] = fm.test_accuracy(runs["scratch"] / "model.safetensors", streams["scratch"])
        if "frozen" in args.methods or "finetuned" in args.methods:
            cmd = ["train", str(manifest), "--arch", "mobilenet_v2", "--weights", str(args.weights), "--freeze",
                   "--image-size", str(args.image_size), *shlex.split(args.frozen_args), "--out", str(runs["frozen"])]
            row["frozen_train_s"] = round(fm.run([*fm.IMGCLS, *cmd], stdout=streams["frozen"]), 1)
            row["frozen"] = fm.test_accuracy(runs["frozen"] / "model.safetensors", streams["frozen"])
        if "finetuned" in args.methods:
            cmd = ["finetune", str(streams["frozen"]), *shlex.split(args.finetune_args), "--out", str(runs["finetuned"])]
            row["finetune_train_s"] = round(fm.run([*fm.IMGCLS, *cmd], stdout=streams["finetuned"]), 1)
            row["finetuned"] = fm.test_accuracy(runs["finetuned"] / "model.safetensors", streams["finetuned"])
            hist = fm.history(runs["finetuned"])
            row["finetune_best_epoch"] = max((h["epoch"] for h in hist if h.get("best")), default=None)
        report["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report["load_avg_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
