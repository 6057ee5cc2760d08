"""imgcls audit against planted problems (issue 18): label errors, near-duplicates, outliers, ambiguous images.

    OMP_NUM_THREADS=1 python benchmarks/audit_study.py --weights ../shared/weights/mobilenet_v2-imagenet.safetensors

Fashion-MNIST, 1,000 training images per class (benchmarks/_fmnist.py: the first 1,000 of a seeded
permutation per class, 100 validation and 100 test images per class): 12,000 images.

* label errors: 5 % of the training labels flipped to another class at random (seed 0); precision and
  recall of the records audit flags "label", at its default threshold; a scikit-learn baseline
  (raw pixels, logistic regression, 5-fold cross_val_predict, cleanlab find_label_issues) beside it;
* near-duplicates: 200 test images re-encoded as JPEG quality 70, resized by 0.8-1.2 and cropped by up to
  5 %, planted in train: recall (the copy flagged "duplicate" of its original, as leakage); the false-pair
  rate: the fraction of the clean images (the data set without planted copies) that appear in a reported
  pair (a flagged copy and its kept image) other than a planted copy with its original, in the run without
  planted copies and in the run with them. Both data sets hold a few genuine duplicates of their own: they
  count as false here (an upper bound); fm-clean-pairs.png / catsdogs-clean-pairs.png under --work show
  the pairs for a person to judge. --seed N plants other copies (and flips other labels);
  --duplicates-only runs every audit with --checks duplicates and skips the label baseline (minutes less);
* outliers: 50 cats-vs-dogs photos (grey) filed under random classes; ambiguous: 50 50/50 blends of two
  training images of different classes; recall and precision;
* the same planted-copy study on the 2,000 cats-vs-dogs photos (/work/data/catsdogs), when present.

Writes JSON to --out (default: /tmp/imgcls-audit-study/results.json) and prints it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fmnist  # noqa: E402

CATSDOGS = Path(os.environ.get("CATSDOGS_DIR", "/work/data/catsdogs"))


def degrade(img, rng):
    """Crop up to 5 % of each side's length (split at random between the two sides), resize by 0.8-1.2, JPEG 70."""
    from PIL import Image

    w, h = img.size
    cw, ch = rng.uniform(0, 0.05) * w, rng.uniform(0, 0.05) * h
    left, top = rng.uniform(0, cw), rng.uniform(0, ch)
    img = img.crop((round(left), round(top), round(w - (cw - left)), round(h - (ch - top))))
    s = rng.uniform(0.8, 1.2)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def read(path: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines[0], lines[1:]


def write(path: Path, header: dict, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))


def audit(manifest: Path, out: Path, extra: list[str]) -> tuple[float, dict, list[dict]]:
    seconds = _fmnist.run(_fmnist.IMGCLS + ["audit", str(manifest), "--json", str(out.with_suffix(".json")),
                                            "-o", str(out), *extra])
    doc = json.loads(out.with_suffix(".json").read_text())
    return seconds, doc, read(out)[1]


def label_scores(records: list[dict], flipped: set[str]) -> dict:
    flagged = {r["path"] for r in records if "label" in (r.get("audit") or {}).get("issues", [])}
    tp = len(flagged & flipped)
    return {"flipped": len(flipped), "flagged": len(flagged), "precision": round(tp / max(1, len(flagged)), 3),
            "recall": round(tp / max(1, len(flipped)), 3)}


def plant_copies(sources: list[str], dest: Path, rng, folder_of) -> dict[str, str]:
    """copy path -> original path."""
    from PIL import Image

    out = {}
    for src in sources:
        target = dest / "train" / folder_of(src) / f"copy-{Path(src).stem}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(src) as img:
            target.write_bytes(degrade(img.copy(), rng))
        out[str(target)] = src
    return out


def dup_recall(records: list[dict], copies: dict[str, str]) -> dict:
    found = sum(1 for r in records if r["path"] in copies
                and (r.get("audit") or {}).get("duplicate", {}).get("of") == copies[r["path"]])
    flagged_any = sum(1 for r in records if r["path"] in copies and "duplicate" in (r.get("audit") or {}))
    return {"planted": len(copies), "found": found, "recall": round(found / max(1, len(copies)), 3),
            "flagged_with_another_partner": flagged_any - found}


def false_pairs(doc: dict, copies: dict[str, str], clean_images: int, sheet: Path | None = None) -> dict:
    """Reported pairs (each flagged copy with its kept image) other than a planted copy with its original; the
    false-pair rate is the fraction of the clean images (the data set without planted copies) in such a pair."""
    pairs = [(m["path"], g["kept"]) for g in (doc.get("duplicates") or {}).get("groups", [])
             for m in g["members"] if not m["kept"]]
    false = [(a, b) for a, b in pairs if copies.get(a) != b and copies.get(b) != a]
    images = {x for pair in false for x in pair}
    if sheet is not None and false:
        pair_sheet(false[:60], sheet)
    return {"clean_images": clean_images, "reported_pairs": len(pairs), "false_pairs": len(false),
            "images_in_false_pairs": len(images), "rate": round(len(images) / max(1, clean_images), 4),
            "sheet": str(sheet) if sheet is not None and false else None}


def pair_sheet(pairs: list[tuple[str, str]], path: Path, side: int = 84) -> None:
    """The pairs side by side, 4 to a row, for a person to judge (a genuine duplicate or a look-alike)."""
    from PIL import Image

    cols = 4
    sheet = Image.new("RGB", (cols * (2 * side + 12), -(-len(pairs) // cols) * (side + 8)), "white")
    for k, (a, b) in enumerate(pairs):
        x, y = (k % cols) * (2 * side + 12), (k // cols) * (side + 8)
        for dx, f in ((0, a), (side + 2, b)):
            with Image.open(f) as img:
                sheet.paste(img.convert("RGB").resize((side, side), Image.NEAREST), (x + dx, y))
    sheet.save(path)


def sklearn_baseline(manifest: Path, flipped: set[str], max_score: float) -> dict:
    """Raw pixels -> logistic regression, 5-fold cross_val_predict over train+val, cleanlab find_label_issues."""
    from PIL import Image
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    t0 = time.perf_counter()
    header, records = read(manifest)
    pool = [r for r in records if r["split"] in ("train", "val")]
    x = np.stack([np.asarray(Image.open(r["path"]).convert("L"), dtype=np.float32).ravel() / 255 for r in pool])
    y = np.array([header["classes"].index(r["label"]) for r in pool])
    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=5, method="predict_proba")
    mask = find_label_issues(y, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    score = get_label_quality_scores(y, probs)
    out = {"seconds": round(time.perf_counter() - t0, 1), "probe_accuracy": round(float((probs.argmax(1) == y).mean()), 3)}
    for name, m in (("cleanlab_default", mask), (f"score_below_{max_score}", mask & (score < max_score))):
        flagged = {pool[i]["path"] for i in np.flatnonzero(m)}
        tp = len(flagged & flipped)
        out[name] = {"flagged": len(flagged), "precision": round(tp / max(1, len(flagged)), 3),
                     "recall": round(tp / max(1, len(flipped)), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(_fmnist.REPO.parent / "shared/weights/mobilenet_v2-imagenet.safetensors"))
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--work", type=Path, default=Path("/tmp/imgcls-audit-study"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-catsdogs", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--duplicates-only", action="store_true",
                    help="only the near-duplicate figures: every audit with --checks duplicates, no baseline")
    ap.add_argument("--seed", type=int, default=0, help="seeds the flipped labels and the planted copies")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    out_path = args.out or work / "results.json"
    extra = ["--weights", args.weights, "--image-size", str(args.image_size), "--cache-dir", str(work / "cache")]
    if args.duplicates_only:
        extra += ["--checks", "duplicates"]
        args.skip_baseline = True
    results: dict = {"machine": _fmnist.machine(), "command": " ".join(sys.argv), "image_size": args.image_size}
    rng = np.random.default_rng(args.seed)

    # -- Fashion-MNIST, clean images, 5 % flipped labels ------------------------------------------
    fm = work / "fm"
    _fmnist.materialise(fm, 1000, 100, 100)
    clean = work / "fm.jsonl"
    if not clean.exists():
        _fmnist.run(_fmnist.IMGCLS + ["prepare", str(fm), "-o", str(clean)])
    header, records = read(clean)
    classes = header["classes"]
    train = [i for i, r in enumerate(records) if r["split"] == "train"]
    flip = rng.choice(train, size=round(0.05 * len(train)), replace=False)
    for i in flip:
        records[i]["label"] = str(rng.choice([c for c in classes if c != records[i]["label"]]))
    flipped_paths = {records[i]["path"] for i in flip}
    noisy = work / "fm-flipped.jsonl"
    write(noisy, header, records)
    seconds, doc, audited = audit(noisy, work / "fm-flipped.audited.jsonl", extra)
    if not args.duplicates_only:
        results["fmnist_labels"] = {"seconds": round(seconds, 1), "timing": doc["timing"],
                                    **label_scores(audited, flipped_paths),
                                    "probe_accuracy": doc["labels"]["probe_accuracy"],
                                    "cleanlab_issues": doc["labels"]["cleanlab_issues"]}
    results["fmnist_clean_false_pairs"] = false_pairs(doc, {}, len(audited), work / "fm-clean-pairs.png")
    results["fmnist_clean_duplicates_s"] = doc["timing"]["duplicates_s"]
    results["fmnist_clean_outliers"] = doc["counts"]["outlier"]
    results["fmnist_clean_ambiguous"] = doc["counts"]["ambiguous"]
    print(json.dumps(results, indent=1), flush=True)
    if not args.skip_baseline:
        results["sklearn_baseline_pixels"] = sklearn_baseline(noisy, flipped_paths,
                                                              doc["settings"]["max_label_score"])
        print(json.dumps(results["sklearn_baseline_pixels"]), flush=True)

    # -- Fashion-MNIST with planted copies, outliers and blends -------------------------------------
    from PIL import Image

    planted = work / "fm-planted"
    shutil.rmtree(planted, ignore_errors=True)
    header, records = read(clean)
    tests = [r for r in records if r["split"] == "test"]
    pick = rng.choice(len(tests), size=200, replace=False)
    copies = plant_copies([tests[i]["path"] for i in pick], planted, rng, lambda p: Path(p).parent.name)
    outliers: set[str] = set()
    if CATSDOGS.is_dir():
        photos = sorted(CATSDOGS.rglob("*.png"))
        for k in rng.choice(len(photos), size=50, replace=False):
            target = planted / "train" / str(rng.choice(classes)) / f"photo-{k}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(photos[k]).convert("L").resize((28, 28)).save(target)
            outliers.add(str(target))
    trains = [r for r in records if r["split"] == "train"]
    blends: set[str] = set()
    while len(blends) < 50:
        a, b = rng.choice(len(trains), size=2, replace=False)
        if trains[a]["label"] == trains[b]["label"]:
            continue
        mix = Image.blend(Image.open(trains[a]["path"]).convert("L"), Image.open(trains[b]["path"]).convert("L"), 0.5)
        target = planted / "train" / trains[a]["label"] / f"blend-{a}-{b}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        mix.save(target)
        blends.add(str(target))
    man = work / "fm-planted.jsonl"
    _fmnist.run(_fmnist.IMGCLS + ["prepare", str(fm), str(planted), "-o", str(man)])
    seconds, doc, audited = audit(man, work / "fm-planted.audited.jsonl", extra)

    def scores(kind: str, truth: set[str]) -> dict:
        flagged = {r["path"] for r in audited if kind in (r.get("audit") or {}).get("issues", [])}
        tp = len(flagged & truth)
        return {"planted": len(truth), "flagged": len(flagged), "recall": round(tp / max(1, len(truth)), 3),
                "precision": round(tp / max(1, len(flagged)), 3)}

    results["fmnist_duplicates"] = {"seconds": round(seconds, 1), "duplicates_s": doc["timing"]["duplicates_s"],
                                    "candidates": doc["duplicates"]["candidates"], **dup_recall(audited, copies),
                                    "leak_groups": doc["counts"]["leak_groups"],
                                    "false": false_pairs(doc, copies, len(audited) - len(copies))}
    if not args.duplicates_only:
        results["fmnist_outliers"] = scores("outlier", outliers)
        results["fmnist_ambiguous"] = scores("ambiguous", blends)
    print(json.dumps(results, indent=1), flush=True)

    # -- cats vs dogs photos -----------------------------------------------------------------------------
    if CATSDOGS.is_dir() and not args.skip_catsdogs:
        cd = work / "catsdogs.jsonl"
        _fmnist.run(_fmnist.IMGCLS + ["prepare", str(CATSDOGS), "-o", str(cd)])
        seconds, doc, audited = audit(cd, work / "catsdogs.audited.jsonl", extra)
        results["catsdogs_clean"] = {"seconds": round(seconds, 1), "duplicates_s": doc["timing"]["duplicates_s"],
                                     **false_pairs(doc, {}, len(audited), work / "catsdogs-clean-pairs.png"),
                                     "label_flagged": doc["counts"]["label"], "outliers": doc["counts"]["outlier"]}
        header, records = read(cd)
        tests = [r for r in records if r["split"] == "test"]
        cdp = work / "catsdogs-planted"
        shutil.rmtree(cdp, ignore_errors=True)
        pick = rng.choice(len(tests), size=min(200, len(tests)), replace=False)
        copies = plant_copies([tests[i]["path"] for i in pick], cdp, rng, lambda p: Path(p).parent.name)
        # the copies join as training records of the already split manifest
        extra_records = [{"path": c, "label": Path(c).parent.name, "split": "train"} for c in copies]
        both = work / "catsdogs-planted.jsonl"
        write(both, header, records + extra_records)
        seconds, doc, audited = audit(both, work / "catsdogs-planted.audited.jsonl", extra)
        results["catsdogs_duplicates"] = {"seconds": round(seconds, 1), "duplicates_s": doc["timing"]["duplicates_s"],
                                          "candidates": doc["duplicates"]["candidates"], **dup_recall(audited, copies),
                                          "false": false_pairs(doc, copies, len(records))}
    out_path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
