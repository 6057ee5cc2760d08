#!/usr/bin/env python
"""Robustness study on Fashion-MNIST: does augmentation buy robustness to perturbations?

The study users run (issue 5): the same CNN trained without augmentation, with on-the-fly
augmentation (``train --augment standard``) and on offline augmented copies (``imgcls
augment``), each evaluated on the clean test set and on its perturbed versions
(``imgcls perturb``); the table shows accuracy per perturbation family for each model
and where augmentation helps.

Everything goes through the command line, as a user would run it::

    imgcls prepare DATA > base.jsonl                          # train/val/test PNG folders
    imgcls perturb base.jsonl --out perturbed/ --severity 1,3,5 > perturbed.jsonl
    imgcls train base.jsonl --arch cnn --epochs 10 --augment none     --out runs/none
    imgcls train base.jsonl --arch cnn --epochs 10 --augment standard --out runs/standard
    imgcls augment base.jsonl --out augmented/ --copies 2 --preset standard > augmented.jsonl
    imgcls train augmented.jsonl --arch cnn --epochs 10 --augment none --out runs/offline
    imgcls eval perturbed.jsonl --model runs/X/model.safetensors --json    # for each X

Data: 1,000 training images per class from the official training set, 100 validation
images per class (disjoint), and the first --test-per-class images per class of the
official test set (benchmarks/_fmnist.py). Prints one JSON object; also writes
results.json and results.md (the table for docs/benchmarks.md) in --work.

    .venv/bin/python benchmarks/robustness_study.py                  # the full study
    .venv/bin/python benchmarks/robustness_study.py --quick          # a smoke test, a minute or two
    .venv/bin/python benchmarks/robustness_study.py -- --threads 2   # extra arguments go to train
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fmnist as fm  # noqa: E402

VARIANTS = {
    "none": "no augmentation",
    "standard": "train --augment standard (on the fly)",
    "offline": "imgcls augment --preset standard --copies 2, then train --augment none",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=200,
                        help="clean test images per class (each gets kinds x severities perturbed copies)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch", default="cnn")
    parser.add_argument("--kinds", default="all", help="imgcls perturb --kinds")
    parser.add_argument("--severity", default="1,3,5", help="imgcls perturb --severity")
    parser.add_argument("--variants", default="none,standard,offline", help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--copies", type=int, default=2, help="imgcls augment --copies for the offline variant")
    parser.add_argument("--work", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "imgcls-robustness-study")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 50 per class, 2 epochs, 20 test images per class, 4 kinds at severity 3")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("train_args", nargs="*", help="extra imgcls train arguments (after --)")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.val_per_class, args.test_per_class, args.epochs = 50, 20, 20, 2
        args.kinds, args.severity = "rotation,gaussian_noise,shrink,thick", "3"
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    return args


def imgcls(*args: object) -> list[str]:
    return [*fm.IMGCLS, *map(str, args)]


def show(cmd: list[str], work: Path) -> str:
    return "imgcls " + " ".join(cmd[len(fm.IMGCLS):]).replace(str(work), "$WORK")


def model_from_stream(manifest: Path, run_dir: Path) -> Path:
    """The model train recorded in the header of the stream it printed (else the run folder's)."""
    try:
        with open(manifest, encoding="utf-8") as fh:
            header = json.loads(fh.readline())
        if isinstance(header, dict) and header.get("model"):
            return Path(header["model"])
    except (OSError, ValueError):
        pass
    return run_dir / "model.safetensors"


def robustness(report: dict) -> dict:
    """clean accuracy and per-perturbation accuracies (mean over severities, and per severity)."""
    model = report["models"][0]
    rob = model.get("robustness") or {}
    out = {"clean": (rob.get("clean") or {}).get("accuracy"), "overall": model["metrics"]["accuracy"],
           "mean_perturbed": rob.get("mean_accuracy"), "mean_relative_drop": rob.get("mean_relative_drop"),
           "perturbations": {}}
    for p in rob.get("perturbations", []):
        out["perturbations"][p["perturbation"]] = {
            "accuracy": p["accuracy"],
            "relative_drop": p["relative_drop"],
            "severities": {str(s["severity"]): s["accuracy"] for s in p["severities"]},
        }
    return out


def table(results: dict, variants: list[str]) -> str:
    """Markdown: accuracy per family (mean over severities) per model, and the gain over 'none'."""
    def pct(x):
        return "" if x is None else f"{100 * x:.1f}"

    base = "none" if "none" in variants else None
    head = ["perturbation"] + [f"{v}" for v in variants] + [f"{v} - none" for v in variants if base and v != base]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    families = []
    for v in variants:
        for f in results[v]["perturbations"]:
            if f not in families:
                families.append(f)
    rows = [("clean", {v: results[v]["clean"] for v in variants})]
    rows += [(f, {v: results[v]["perturbations"].get(f, {}).get("accuracy") for v in variants}) for f in families]
    rows.append(("mean over perturbations", {v: results[v]["mean_perturbed"] for v in variants}))
    for name, accs in rows:
        cells = [name] + [pct(accs[v]) for v in variants]
        if base:
            for v in variants:
                if v != base:
                    a, b = accs.get(v), accs.get(base)
                    cells.append("" if a is None or b is None else f"{100 * (a - b):+.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    variants = args.variants.split(",")
    work = args.work
    data, base = work / "data", work / "base.jsonl"
    perturbed_dir, perturbed = work / "perturbed", work / "perturbed.jsonl"
    augmented_dir, augmented = work / "augmented", work / "augmented.jsonl"
    steps: list[tuple[str, list[str], Path | None, Path | None]] = []  # (name, cmd, stdin, stdout)
    owns = {"perturb": perturbed_dir, "augment": augmented_dir, **{f"train-{v}": work / "runs" / v for v in variants}}

    steps.append(("prepare", imgcls("prepare", data, "-q"), None, base))
    steps.append(("perturb", imgcls("perturb", base, "--out", perturbed_dir, "--kinds", args.kinds,
                                    "--severity", args.severity, "-q"), None, perturbed))
    if "offline" in variants:
        steps.append(("augment", imgcls("augment", base, "--out", augmented_dir, "--preset", "standard",
                                        "--copies", args.copies, "-q"), None, augmented))
    for v in variants:
        source = augmented if v == "offline" else base
        augment = "standard" if v == "standard" else "none"
        steps.append((f"train-{v}", imgcls("train", source, "--arch", args.arch, "--epochs", args.epochs,
                                           "--augment", augment, "--out", work / "runs" / v, *args.train_args),
                      None, work / f"trained-{v}.jsonl"))

    if args.dry_run:
        for _, cmd, _, out in steps:
            print(show(cmd, work) + (f" > {str(out).replace(str(work), '$WORK')}" if out else ""))
        for v in variants:
            print(f"imgcls eval $WORK/perturbed.jsonl --model $WORK/runs/{v}/model.safetensors --json > $WORK/eval-{v}.json")
        return

    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "robustness_study", "machine": fm.machine(), "settings": {
        "per_class": args.per_class, "val_per_class": args.val_per_class, "test_per_class": args.test_per_class,
        "epochs": args.epochs, "arch": args.arch, "kinds": args.kinds, "severity": args.severity,
        "copies": args.copies, "variants": {v: VARIANTS[v] for v in variants}, "train_args": args.train_args}}
    t0 = time.perf_counter()
    fm.materialise(data, args.per_class, args.val_per_class, args.test_per_class)
    result["materialise_s"] = round(time.perf_counter() - t0, 1)
    timings, commands = {}, {}
    for name, cmd, stdin, stdout in steps:
        if name in owns and owns[name].exists():
            shutil.rmtree(owns[name])  # the study owns --work: each step starts from a clean folder
        print(f"[robustness_study] {show(cmd, work)}", file=sys.stderr, flush=True)
        commands[name] = show(cmd, work)
        timings[name] = round(fm.run(cmd, stdin=stdin, stdout=stdout), 1)

    results = {}
    for v in variants:
        model = model_from_stream(work / f"trained-{v}.jsonl", work / "runs" / v)
        report_path = work / f"eval-{v}.json"
        cmd = imgcls("eval", perturbed, "--model", model, "--json")
        print(f"[robustness_study] {show(cmd, work)}", file=sys.stderr, flush=True)
        commands[f"eval-{v}"] = show(cmd, work)
        timings[f"eval-{v}"] = round(fm.run(cmd, stdout=report_path), 1)
        results[v] = robustness(json.loads(report_path.read_text()))
        history = fm.history(work / "runs" / v)
        results[v]["epochs_run"] = len(history)
    result["commands"], result["seconds"], result["results"] = commands, timings, results
    result["table_markdown"] = table(results, variants)
    (work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (work / "results.md").write_text(result["table_markdown"] + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
