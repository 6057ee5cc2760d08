"""Training recipes on small data (issue 15): each element alone and combined, against today's defaults.

    OMP_NUM_THREADS=1 python benchmarks/recipes_study.py --out study.jsonl            # the whole study
    OMP_NUM_THREADS=1 python benchmarks/recipes_study.py --out s.jsonl --only cnn --sizes 10   # a part
    python benchmarks/recipes_study.py --summary study.jsonl                           # the tables

Data (the first K training images per class of a seeded permutation; the seed of a row
also seeds imgcls, so each seed is another subset *and* another initialisation):

* Fashion-MNIST (``benchmarks/_fmnist.py``): K = 10, 50, 500 per class; validation 30 per
  class from outside the training pool; test: the first 100 per class of the official
  t10k set (1,000 images);
* the cat/dog photos (/work/data/catsdogs, 1,000 32-px RGB PNGs per class): K = 50, 500
  per class; validation 100 per class and test 300 per class (600 images), disjoint.

Models: the scratch ``cnn`` at the data's own size (28 px gray / 32 px RGB), and
MobileNetV2 from the shipped ImageNet weights (``--weights``, mean = std = 0.5) at
``--mobilenet-size`` px (64 by default: fine-tuning MobileNetV2 on a 2-core CPU costs
about 4x more per image at 128 px; see docs/benchmarks.md for the bound chosen).

Recipes (``RECIPES`` below): the exact imgcls arguments of each are in the output rows.
Every row runs imgcls through its CLI (train / finetune, then ``eval --split test --json``,
with ``--tta`` for the rows marked so: that report carries accuracy with and without TTA).
Rows are appended to ``--out`` as they finish; a rerun skips rows already there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fmnist as fm  # noqa: E402

CATSDOGS = Path(os.environ.get("CATSDOGS_DIR", "/work/data/catsdogs"))
DEFAULT_WEIGHTS = fm.REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"

# (name, kind, args, tta, scope). kind: "train" (one train run), "finetune" (train --freeze, then finetune the
# frozen model: the frozen run is shared by every finetune recipe of a cell and reported as "frozen").
# Every recipe but the "defaults" ones spells out each element, so its meaning does not change with the
# defaults; "defaults" runs imgcls as shipped. scope bounds the CPU: "all" cells, "small" (under 500 per
# class), "seed0" (small sizes, first seed only), "seed0+500" (that and the cat/dog cell at 500), "cheap"
# (all but Fashion-MNIST at 500 per class), "explicit" (every cell, only when named by --recipes).
# "{W}" and "{S}" stand for the weights file and the MobileNetV2 input size.
OFF = ["--mixup", "0", "--cutmix", "0", "--ema", "0", "--label-smoothing", "0"]
TODAY_SCRATCH = ["--precise-bn", "0", *OFF]  # today's defaults (before issue 15)
ONECYCLE = ["--schedule", "onecycle", "--lr", "1e-3", *OFF]
RECIPES = {
    "cnn": [
        ("today", "train", TODAY_SCRATCH, True, "all"),
        ("+precise-bn", "train", ["--precise-bn", "2048", *OFF], False, "cheap"),
        ("+mixup", "train", [*TODAY_SCRATCH, "--mixup", "0.2"], False, "cheap"),
        ("+cutmix", "train", [*TODAY_SCRATCH, "--cutmix", "1.0"], False, "seed0"),
        ("+ema", "train", [*TODAY_SCRATCH, "--ema", "0.99"], False, "small"),
        ("+smoothing", "train", [*TODAY_SCRATCH, "--label-smoothing", "0.1"], False, "small"),
        # the elements on top of precise BN (without it, an early best epoch can collapse in eval mode)
        ("+precise-bn+smoothing", "train", ["--precise-bn", "2048", *OFF, "--label-smoothing", "0.1"], True, "cheap"),
        ("combined", "train", ["--precise-bn", "2048", "--mixup", "0.2", "--cutmix", "0", "--ema", "0.99",
                               "--label-smoothing", "0.1"], True, "cheap"),
        ("defaults", "train", [], True, "fm500"),
        ("today-3ep", "train", [*TODAY_SCRATCH, "--epochs", "3"], False, "small"),
        ("+precise-bn-3ep", "train", ["--precise-bn", "2048", *OFF, "--epochs", "3"], False, "small"),
    ],
    "mobilenet_v2": [
        # "frozen" (train --freeze: the same today and now) runs first, shared by the finetune rows
        ("ft-today", "finetune", ["--schedule", "cosine", "--lr", "1e-4", *OFF], False, "cheap"),
        ("ft-onecycle", "finetune", ONECYCLE, False, "cheap"),
        ("ft-onecycle+mixup", "finetune", [*ONECYCLE, "--mixup", "0.2"], False, "cheap"),
        ("ft-onecycle+ema", "finetune", [*ONECYCLE, "--ema", "0.99"], False, "seed0"),
        ("ft-onecycle+smoothing", "finetune", [*ONECYCLE, "--label-smoothing", "0.1"], False, "cheap"),
        ("ft-onecycle+mixup+smoothing", "finetune", [*ONECYCLE, "--mixup", "0.2", "--label-smoothing", "0.1"], True,
         "cheap"),
        ("ft-defaults", "finetune", [], True, "fm500"),
        # candidates for the small cells where the defaults kept the frozen start (issue 15 follow-up): the
        # defaults with less of the backbone moving; run with --recipes (scope "explicit": never by default)
        ("ft-defaults-unfreeze3", "finetune", ["--unfreeze", "3"], False, "explicit"),
        ("ft-defaults-ratio0.01", "finetune", ["--backbone-lr-ratio", "0.01"], False, "explicit"),
        ("ft-defaults-unfreeze0", "finetune", ["--unfreeze", "0"], False, "explicit"),  # the head alone
        # finetune's own epochs (the parent's: 20 after train --freeze), not the study's --finetune-epochs bound
        ("ft-defaults-20ep", "finetune", ["--epochs", "20"], False, "explicit"),
        ("pre-today", "train", ["--freeze-epochs", "0", "--schedule", "cosine", *OFF], False, "seed0+500"),
        ("pre-defaults", "train", [], False, "seed0+500"),
    ],
}
# The shipped defaults are, by their settings, recipes measured above: where a "defaults" row was not run
# (every cell but Fashion-MNIST at 500 per class, to bound the CPU), the summary shows these in its place.
# True of the defaults chosen by this study (issue 15); check it again if the defaults change.
DEFAULTS_ARE = {"cnn": {"defaults": "+precise-bn"}, "mobilenet_v2": {"ft-defaults": "ft-onecycle+mixup+smoothing"}}
SEEDS = {"cnn": {10: [0, 1, 2], 50: [0, 1], 500: [0]},  # per-class size -> seeds
         "mobilenet_v2": {10: [0, 1], 50: [0, 1], 500: [0]}}


def in_scope(scope: str, name: str, k: int, seed: int, explicit: bool = False) -> bool:
    if scope == "all":
        return True
    if scope == "explicit":  # only when named by --recipes, in every cell
        return explicit
    if scope == "small":
        return k < 500
    if scope == "seed0":
        return k < 500 and seed == 0
    if scope == "fm500":  # see DEFAULTS_ARE
        return name == "fmnist" and k >= 500
    if scope == "seed0+500":  # the first seed of the small cells, and the cheap 500-per-class cell
        return (k < 500 and seed == 0) or (k >= 500 and name != "fmnist")
    return not (name == "fmnist" and k >= 500)  # "cheap"


FROZEN_ARGS = ["--freeze"]
MOBILENET_COMMON = ["--arch", "mobilenet_v2", "--weights", "{W}", "--image-size", "{S}"]


def materialise_catsdogs(dest: Path, per_class: int, val_per_class: int, test_per_class: int, seed: int) -> None:
    """dest/{train,val,test}/{cat,dog}/*.png: a seeded permutation per class; val and test from beyond a 500 pool."""
    import numpy as np

    marker = dest / "done.json"
    key = {"per_class": per_class, "val": val_per_class, "test": test_per_class, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == key:
        return
    pool = 500
    rng = np.random.default_rng(seed)
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        files = sorted((CATSDOGS / folder).glob("*.png"))
        order = [files[i] for i in rng.permutation(len(files))]
        parts = {"train": order[:per_class], "val": order[pool:pool + val_per_class],
                 "test": order[pool + val_per_class:pool + val_per_class + test_per_class]}
        for split, chosen in parts.items():
            target = dest / split / label
            target.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copyfile(f, target / f.name)
    marker.write_text(json.dumps(key))


def dataset(args, name: str, k: int, seed: int) -> Path:
    """The prepared manifest of one data subset (materialised once)."""
    data = args.work / f"{name}-{k}-s{seed}"
    if name == "fmnist":
        fm.materialise(data, k, args.fm_val, args.fm_test, seed=seed)
    else:
        materialise_catsdogs(data, k, args.cd_val, args.cd_test, seed)
    manifest = args.work / f"{data.name}.jsonl"
    if not manifest.exists():
        fm.run([*fm.IMGCLS, "prepare", str(data), "-q"], stdout=manifest)
    return manifest


def evaluate(model: Path, manifest: Path, tta: bool) -> dict:
    report = model.parent / ("eval-tta.json" if tta else "eval.json")
    if not report.exists():
        cmd = [*fm.IMGCLS, "eval", str(manifest), "-m", str(model), "--split", "test", "--json", "-q",
               "--batch-size", "200", "-o", str(report)]
        fm.run(cmd + (["--tta"] if tta else []))
    doc = json.loads(report.read_text())["models"][0]
    out = {"test_acc": round(doc["metrics"]["accuracy"], 4), "test_images": doc["n_images"]}
    if tta:
        out["test_acc"] = round(doc["tta"]["without"]["accuracy"], 4)
        out["test_acc_tta"] = round(doc["tta"]["with"]["accuracy"], 4)
        out["tta_views"] = doc["tta"]["views"]
    return out


def expand(items: list[str], args) -> list[str]:
    return [a.replace("{W}", str(args.weights)).replace("{S}", str(args.mobilenet_size)) for a in items]


def run_cell(args, done: set, out, name: str, arch: str, k: int, seed: int) -> None:
    manifest = dataset(args, name, k, seed)
    base = ["--seed", str(seed), "--batch-size", str(args.batch_size), "--threads", "1"]
    model_args = ["--arch", "cnn"] if arch == "cnn" else expand(MOBILENET_COMMON, args)
    frozen_dir = args.work / f"run-{name}-{k}-s{seed}-{arch}-frozen"
    frozen_stream = args.work / f"{frozen_dir.name}.jsonl"

    def emit(row: dict) -> None:
        row.update(dataset=name, arch=arch, per_class=k, seed=seed)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(json.dumps(row), file=sys.stderr, flush=True)

    for recipe, kind, extra, tta, scope in RECIPES[arch]:
        if not in_scope(scope, name, k, seed, explicit=bool(args.recipes) and recipe in args.recipes):
            continue
        if args.recipes and recipe not in args.recipes and not (kind == "finetune" and "frozen" in args.recipes):
            continue
        if recipe in args.exclude:
            continue
        if kind == "finetune" and ("frozen", name, arch, k, seed) not in done:
            cmd = ["train", str(manifest), *model_args, *FROZEN_ARGS, *base, "--out", str(frozen_dir)]
            seconds = fm.run([*fm.IMGCLS, *cmd], stdout=frozen_stream) if not frozen_dir.exists() else None
            emit({"recipe": "frozen", "command": "imgcls " + " ".join(cmd), "train_s": seconds and round(seconds, 1),
                  **evaluate(frozen_dir / "model.safetensors", manifest, tta=False)})
            done.add(("frozen", name, arch, k, seed))
        if args.recipes and recipe not in args.recipes:
            continue
        if (recipe, name, arch, k, seed) in done:
            continue
        run_dir = args.work / f"run-{name}-{k}-s{seed}-{arch}-{recipe}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        if arch != "cnn":
            epochs = [] if "--epochs" in extra else ["--epochs", str(args.finetune_epochs)]
        elif k >= 500 and name == "fmnist" and "--epochs" not in extra:
            epochs = ["--epochs", str(args.cnn_large_epochs)]
        else:
            epochs = []
        if kind == "train":
            cmd = ["train", str(manifest), *model_args, *base, *epochs, *expand(extra, args), "--out", str(run_dir)]
        else:
            cmd = ["finetune", str(frozen_stream), *base, *epochs, *expand(extra, args), "--out", str(run_dir)]
        seconds = fm.run([*fm.IMGCLS, *cmd], stdout=args.work / f"{run_dir.name}.jsonl")
        history = fm.history(run_dir)
        best = [h for h in history if h.get("best")]
        row = {"recipe": recipe, "command": "imgcls " + " ".join(cmd), "train_s": round(seconds, 1),
               "best_epoch": best[-1]["epoch"] if best else None,
               "best_weights": best[-1].get("weights") if best else None,
               "epochs_run": len(history),
               **evaluate(run_dir / "model.safetensors", manifest, tta=tta)}
        emit(row)
        done.add((recipe, name, arch, k, seed))


def summary(path: Path) -> None:
    """Markdown tables: per architecture, the mean test accuracy of each recipe per data set and size
    (the number of seeds in brackets, the range below); then TTA against none where it was measured."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    columns = [("fmnist", 10), ("fmnist", 50), ("fmnist", 500), ("catsdogs", 50), ("catsdogs", 500)]
    for arch in ("cnn", "mobilenet_v2"):
        mine = [r for r in rows if r["arch"] == arch]
        if not mine:
            continue
        aliases = DEFAULTS_ARE.get(arch, {})
        for shipped, same in aliases.items():  # the defaults' line: their own rows, else the identical recipe's
            have = {(r["dataset"], r["per_class"]) for r in mine if r["recipe"] == shipped}
            mine += [{**r, "recipe": shipped} for r in mine
                     if r["recipe"] == same and (r["dataset"], r["per_class"]) not in have]
        recipes = list(dict.fromkeys(r["recipe"] for r in mine))
        print(f"\n#### {arch}\n")
        print("| recipe | " + " | ".join(f"{'F-MNIST' if n == 'fmnist' else 'cat/dog'} {k}/class" for n, k in columns) + " |")
        print("|---|" + "---:|" * len(columns))
        for recipe in recipes:
            cells = []
            for name, k in columns:
                accs = [r["test_acc"] for r in mine if r["recipe"] == recipe and r["dataset"] == name
                        and r["per_class"] == k]
                if not accs:
                    cells.append("")
                    continue
                spread = f" ({min(accs):.3f}-{max(accs):.3f})" if len(accs) > 1 else ""
                cells.append(f"{statistics.mean(accs):.3f} [{len(accs)}]{spread}")
            print(f"| {recipe} | " + " | ".join(cells) + " |")
    tta = [r for r in rows if "test_acc_tta" in r]
    if tta:
        print("\n#### TTA (same models, without / with)\n")
        print("| arch | recipe | data | per class | seeds | without | with | gain (points) |")
        print("|---|---|---|---:|---:|---:|---:|---:|")
        groups: dict = {}
        for r in tta:
            groups.setdefault((r["arch"], r["recipe"], r["dataset"], r["per_class"]), []).append(r)
        for (arch, recipe, name, k), rs in sorted(groups.items()):
            a = statistics.mean(r["test_acc"] for r in rs)
            b = statistics.mean(r["test_acc_tta"] for r in rs)
            print(f"| {arch} | {recipe} | {name} | {k} | {len(rs)} | {a:.3f} | {b:.3f} | {100 * (b - a):+.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="rows are appended here (JSON Lines)")
    parser.add_argument("--summary", type=Path, help="print the tables of a finished --out file and exit")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "imgcls-recipes")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--only", nargs="+", choices=["cnn", "mobilenet_v2"], default=["cnn", "mobilenet_v2"])
    parser.add_argument("--datasets", nargs="+", choices=["fmnist", "catsdogs"], default=["fmnist", "catsdogs"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="per class (default: 10 50 500 / 50 500)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of every cell (default: SEEDS: cnn 3 at 10 per class, 2 at 50, 1 at 500; "
                             "mobilenet_v2 2, 2, 1)")
    parser.add_argument("--recipes", nargs="+", default=None, help="only these recipes (and the frozen start)")
    parser.add_argument("--exclude", nargs="+", default=[], help="skip these recipes")
    parser.add_argument("--cnn-large-epochs", type=int, default=10,
                        help="epochs of the cnn rows on Fashion-MNIST at 500 per class (the CPU bound)")
    parser.add_argument("--mobilenet-size", type=int, default=64)
    parser.add_argument("--finetune-epochs", type=int, default=6, help="epochs of every MobileNetV2 run that trains it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fm-val", type=int, default=30)
    parser.add_argument("--fm-test", type=int, default=100)
    parser.add_argument("--cd-val", type=int, default=100)
    parser.add_argument("--cd-test", type=int, default=300)
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return
    if args.out is None:
        parser.error("--out is required")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add((r["recipe"], r["dataset"], r["arch"], r["per_class"], r["seed"]))
    t0 = time.perf_counter()
    with open(args.out, "a") as out:
        out.write("")  # the file exists from the start
        cells = []
        for arch in args.only:
            for name in args.datasets:
                for k in args.sizes or ([10, 50, 500] if name == "fmnist" else [50, 500]):
                    cells += [(arch, name, k, seed) for seed in (args.seeds or SEEDS[arch].get(k, [0]))]
        # the small sizes of everything first, then the 500-per-class cells (catsdogs' 1,000 images before
        # Fashion-MNIST's 5,000)
        cells.sort(key=lambda c: (c[2] >= 500, c[2] >= 500 and c[1] == "fmnist", c[0] != "cnn"))
        for arch, name, k, seed in cells:
            run_cell(args, done, out, name, arch, k, seed)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "machine": fm.machine(),
                      "load_avg_end": os.getloadavg()}), file=sys.stderr)


if __name__ == "__main__":
    main()
