"""Accuracy per label: frozen-feature heads against a scikit-learn probe, a scratch CNN and fine-tuning.

    OMP_NUM_THREADS=1 python benchmarks/heads_study.py --out heads.json          # the table in docs/benchmarks.md
    OMP_NUM_THREADS=1 python benchmarks/heads_study.py --datasets catsdogs --sizes 1 10 --seeds 2   # quicker

For each data set, training size K (images per class) and seed, one manifest: K training images per
class drawn from a fixed pool with that seed (a seeded permutation per class, so for one seed smaller
sets are subsets of larger ones), plus the same validation and test images for every K and seed.
On it, through the CLI (one process per command, ``--threads 1``):

* ``cnn``:      imgcls train M --arch cnn                      (scratch, the data's own size)
* ``linear``:   imgcls train M --arch mobilenet_v2 --weights W --freeze --head linear --image-size S
                (the SGD-trained Dropout + Linear head: what --freeze did before --head)
* ``logreg``:   ... --head logreg      ``ncm``: ... --head ncm   (the same cached features)
* ``finetune``: imgcls finetune LOGREG_STREAM                  (today's finetune defaults, from logreg)
* ``probe``:    scikit-learn LogisticRegressionCV(cv=min(5, K), max_iter=1000) on the same frozen
                features (LogisticRegression() with its default C=1 at K=1, where no fold can hold
                an image out): the reference every paper reports.

Every optimisation option is imgcls' default. The heads' test accuracy is computed from the test
images' features (one backbone pass per data set, through the saved model's own preprocessing;
the backbone is the weights file's, identical in every frozen run) and each saved model's head;
cnn and finetune models are evaluated end to end. Data: Fashion-MNIST (official train set for the
pools, t10k for the test images) and the 2,000 cat/dog photos (32 px RGB).

Cost is bounded for a shared 2-core CPU: mobilenet_v2 at --image-size 96 (default), 200 test images
per class, 20 validation images per class, 5 seeds at K <= 10, 3 at K = 50 and 100, 1 at 500;
fine-tuning with min(3, seeds) seeds. Prints one JSON document (and progress on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fmnist as fm  # noqa: E402

DEFAULT_WEIGHTS = fm.REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"
CATSDOGS = Path(os.environ.get("CATSDOGS_DIR", "/work/data/catsdogs"))
HEADS = ("linear", "logreg", "ncm")


def seeds_for(k: int, seeds: int) -> int:
    return seeds if k <= 10 else (min(3, seeds) if k <= 100 else 1)


# -- data ----------------------------------------------------------------------------------

def prepare_pool(dataset: str, work: Path, pool: int, val: int, test: int) -> tuple[dict, list[dict]]:
    """The pool's manifest (header, records with split train/val/test), prepared once."""
    from imgcls.manifest import read_all

    manifest = work / f"{dataset}-pool-{pool}-{val}-{test}.jsonl"
    if dataset == "fmnist":
        folder = work / f"fmnist-pool-{pool}-{val}-{test}"
        marker = folder / "done.json"
        if not marker.exists():
            arrays = fm.load_arrays()
            images, labels = arrays["train"]
            order = fm.pools(labels, 0)
            fm.write_pngs(folder / "train", images, labels, np.concatenate([p[:pool] for p in order]))
            fm.write_pngs(folder / "val", images, labels, np.concatenate([p[1000:1000 + val] for p in order]))
            timages, tlabels = arrays["test"]
            tidx = np.concatenate([np.flatnonzero(tlabels == c)[:test] for c in range(len(fm.CLASSES))])
            fm.write_pngs(folder / "test", timages, tlabels, tidx)
            marker.write_text("{}")
        if not manifest.exists():
            fm.run([*fm.IMGCLS, "prepare", str(folder), "-q"], stdout=manifest)
        header, records, _ = read_all(manifest)
        return header, records
    # cat/dog photos: cats/ and dogs/ without splits; a fixed seeded split per class
    if not manifest.exists():
        fm.run([*fm.IMGCLS, "prepare", str(CATSDOGS), "--val", "0", "--test", "0", "-q"], stdout=manifest)
    header, records, reader = read_all(manifest)
    rng = np.random.default_rng(0)
    out = []
    for label in header["classes"]:
        recs = sorted((r for r in records if r["label"] == label), key=lambda r: r["path"])
        order = rng.permutation(len(recs))
        for rank, i in enumerate(order):
            split = "test" if rank < test else "val" if rank < test + val else "train" if rank < test + val + pool else None
            if split:
                out.append(dict(recs[i], path=str(reader.resolve(recs[i])), split=split))
    return header, out


def subset_manifest(work: Path, dataset: str, header: dict, records: list[dict], k: int, seed: int) -> Path:
    """K training images per class (seeded), the pool's val and test images."""
    from imgcls.manifest import write_manifest

    path = work / f"{dataset}-k{k}-s{seed}.jsonl"
    if path.exists():
        return path
    rng = np.random.default_rng(1000 + seed)
    chosen = []
    for label in header["classes"]:
        pool = sorted((r for r in records if r["split"] == "train" and r["label"] == label), key=lambda r: r["path"])
        chosen += [pool[i] for i in rng.permutation(len(pool))[:k]]
    rest = [r for r in records if r["split"] in ("val", "test")]
    hdr = {k2: v for k2, v in header.items() if k2 not in ("model", "run")}
    write_manifest(path, hdr, chosen + rest)
    return path


# -- features and scores -------------------------------------------------------------------

def split_features(model_path: Path, manifest: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Backbone features of a split's images through the model's own preprocessing (as eval sees them)."""
    import torch

    from imgcls.manifest import read_all
    from imgcls.models.io import load_model
    from imgcls.models.preprocess import normalize
    from imgcls.training.data import preload_images

    model, info = load_model(model_path)
    _, records, reader = read_all(manifest)
    recs = [r for r in records if r.get("split") == split]
    paths = [reader.resolve(r) for r in recs]
    index = {c: i for i, c in enumerate(info.classes)}
    images = preload_images(paths, info.image_size, info.channels)
    feats = []
    with torch.no_grad():
        for start in range(0, len(recs), 64):
            feats.append(model.features(normalize(images[start:start + 64], info.mean, info.std)).float())
    return torch.cat(feats).numpy(), np.array([index[r["label"]] for r in recs]), [str(p) for p in paths]


def head_accuracy(model_path: Path, feats: np.ndarray, labels: np.ndarray) -> float:
    import torch

    from imgcls.models.io import load_model

    model, _ = load_model(model_path)
    with torch.no_grad():
        pred = model.head(torch.from_numpy(feats)).argmax(1).numpy()
    return float((pred == labels).mean())


def probe_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    x, y = train
    t0 = time.perf_counter()
    k = min(5, int(np.bincount(y).min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = (LogisticRegressionCV(cv=k, max_iter=1000) if k >= 2 else LogisticRegression(max_iter=1000)).fit(x, y)
    return float(model.score(*test)), time.perf_counter() - t0


def stats(values: list[float]) -> dict:
    a = np.array(values, dtype=float)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
            "n": len(a), "values": [round(v, 4) for v in values]}


# -- the study -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="mobilenet_v2 ImageNet state dict")
    parser.add_argument("--datasets", nargs="+", default=["fmnist", "catsdogs"], choices=["fmnist", "catsdogs"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10, 50, 100, 500], help="images per class")
    parser.add_argument("--seeds", type=int, default=5, help="seeds at K <= 10 (3 at 50 and 100, 1 above)")
    parser.add_argument("--finetune-seeds", type=int, default=3, help="at most this many seeds fine-tune")
    parser.add_argument("--image-size", type=int, default=96, help="mobilenet_v2 input size")
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--methods", nargs="+", default=["cnn", *HEADS, "probe", "finetune"])
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "imgcls-bench-heads")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if not args.weights.exists():
        raise SystemExit(f"{args.weights}: no such weights file (see ../shared/weights/README.md)")
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    common = ["--threads", "1", "--cache-dir", str(cache)]
    frozen = ["--arch", "mobilenet_v2", "--weights", str(args.weights), "--freeze", "--image-size", str(args.image_size)]
    t_start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    report: dict = {"benchmark": "heads_study", "machine": fm.machine(), "weights": str(args.weights),
                    "image_size": args.image_size, "val_per_class": args.val_per_class,
                    "test_per_class": args.test_per_class, "seeds": args.seeds,
                    "commands": {"cnn": "imgcls train M --arch cnn " + " ".join(common[:2]),
                                 **{h: f"imgcls train M --arch mobilenet_v2 --weights W --freeze --image-size "
                                       f"{args.image_size} --head {h} --threads 1" for h in HEADS},
                                 "finetune": "imgcls finetune LOGREG_STREAM --threads 1",
                                 "probe": "LogisticRegressionCV(cv=min(5, K), max_iter=1000) on the frozen features"},
                    "results": {}}
    for dataset in args.datasets:
        header, records = prepare_pool(dataset, args.work, max(args.sizes), args.val_per_class, args.test_per_class)
        results: dict = {}
        test_feats = None
        pool_feats: dict[str, np.ndarray] = {}
        for k in args.sizes:
            row: dict = {m: [] for m in args.methods}
            seconds: dict = {m: [] for m in args.methods}
            for seed in range(seeds_for(k, args.seeds)):
                manifest = subset_manifest(args.work, dataset, header, records, k, seed)
                tag = f"{dataset}-k{k}-s{seed}"
                runs = {m: args.work / f"run-{tag}-{m}" for m in args.methods}
                streams = {m: args.work / f"out-{tag}-{m}.jsonl" for m in args.methods}
                if "cnn" in args.methods:
                    if not (runs["cnn"] / "model.safetensors").exists():
                        seconds["cnn"].append(fm.run([*fm.IMGCLS, "train", str(manifest), "--arch", "cnn", "--seed",
                                                      str(seed), *common, "--out", str(runs["cnn"])],
                                                     stdout=streams["cnn"]))
                    row["cnn"].append(fm.test_accuracy(runs["cnn"] / "model.safetensors", streams["cnn"])["test_acc"])
                needed = [h for h in HEADS if h in args.methods or (h == "logreg" and "finetune" in args.methods)]
                for head in needed:
                    runs[head], streams[head] = args.work / f"run-{tag}-{head}", args.work / f"out-{tag}-{head}.jsonl"
                    if not (runs[head] / "model.safetensors").exists():
                        seconds.setdefault(head, []).append(
                            fm.run([*fm.IMGCLS, "train", str(manifest), *frozen, "--head", head, "--seed", str(seed),
                                    *common, "--out", str(runs[head])], stdout=streams[head]))
                    if test_feats is None:  # one backbone pass over the test images and the training pool
                        model_file = runs[head] / "model.safetensors"
                        test_feats = split_features(model_file, manifest, "test")[:2]
                        feats, _, paths = split_features(model_file, manifest_with_pool(args.work, dataset, header,
                                                                                        records), "train")
                        pool_feats = dict(zip(paths, feats))
                    if head in args.methods:
                        row[head].append(head_accuracy(runs[head] / "model.safetensors", *test_feats))
                if "probe" in args.methods:
                    from imgcls.manifest import read_all

                    _, recs, reader = read_all(manifest)
                    index = {c: i for i, c in enumerate(header["classes"])}
                    train = [r for r in recs if r["split"] == "train"]
                    x = np.stack([pool_feats[str(reader.resolve(r))] for r in train])
                    y = np.array([index[r["label"]] for r in train])
                    acc, secs = probe_accuracy((x, y), test_feats)
                    row["probe"].append(acc)
                    seconds["probe"].append(secs)
                if "finetune" in args.methods and seed < args.finetune_seeds:
                    if not (runs["finetune"] / "model.safetensors").exists():
                        seconds["finetune"].append(fm.run([*fm.IMGCLS, "finetune", str(streams["logreg"]), "--threads",
                                                           "1", "--out", str(runs["finetune"])],
                                                          stdout=streams["finetune"]))
                    row["finetune"].append(fm.test_accuracy(runs["finetune"] / "model.safetensors",
                                                            streams["finetune"])["test_acc"])
                print(json.dumps({"dataset": dataset, "k": k, "seed": seed,
                                  **{m: round(v[seed], 4) for m, v in row.items() if len(v) > seed}}),
                      file=sys.stderr, flush=True)
            results[str(k)] = {m: stats(v) for m, v in row.items() if v}
            results[str(k)]["seconds"] = {m: round(float(np.mean(v)), 1) for m, v in seconds.items() if v}
            print(json.dumps({"dataset": dataset, "k": k, **{m: (s["mean"], s["std"]) for m, s in results[str(k)].items()
                                                            if m != "seconds"}}), file=sys.stderr, flush=True)
        report["results"][dataset] = results
    cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["cpu_s"] = round(cpu_end.ru_utime + cpu_end.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime
                            + own.ru_utime + own.ru_stime, 1)
    report["load_avg_end"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return report


def manifest_with_pool(work: Path, dataset: str, header: dict, records: list[dict]) -> Path:
    """Every pool image as a training record (for the probe's features of any subset)."""
    from imgcls.manifest import write_manifest

    path = work / f"{dataset}-pool-all.jsonl"
    if not path.exists():
        write_manifest(path, {k: v for k, v in header.items() if k not in ("model", "run")},
                       [r for r in records if r["split"] == "train"])
    return path


if __name__ == "__main__":
    main()
