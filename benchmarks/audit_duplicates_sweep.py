"""The near-duplicate threshold's window: recall of the planted copies and the share of clean images in another
reported pair, per --duplicate-residual, through the library (imgcls.audit.duplicates).

    OMP_NUM_THREADS=1 python benchmarks/audit_duplicates_sweep.py [--blur 1.0]

Reads the planted manifests benchmarks/audit_study.py left under --work (fm-planted.jsonl,
catsdogs-planted.jsonl: 200 test images re-encoded as JPEG 70, resized by 0.8-1.2, cropped by up to 5 %,
planted in train as copy-<name>.jpg); run that first. Candidates here are the thumbnail neighbours only (imgcls
audit adds the embedding's neighbours), so recall can be a little lower than audit's. --blur overrides
BLUR_SIGMA (the blur before registration) to compare settings. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def sweep(manifest: Path, thresholds: list[float], colour: bool) -> dict:
    from imgcls.audit import duplicates as D

    lines = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    header, recs = lines[0], lines[1:]
    root = Path(header.get("root") or manifest.parent)
    paths = [str(root / r["path"]) if not Path(r["path"]).is_absolute() else r["path"] for r in recs]
    is_copy = np.array([Path(p).name.startswith("copy-") for p in paths])
    tests = {(Path(p).parent.name, Path(p).stem): i for i, p in enumerate(paths)
             if recs[i].get("split") == "test" and not is_copy[i]}
    planted = set()
    for i in np.flatnonzero(is_copy):
        o = tests[(Path(paths[i]).parent.name, Path(paths[i]).stem[len("copy-"):])]
        planted.add((min(i, o), max(i, o)))
    t0 = time.perf_counter()
    x, x16 = D.thumbnails(D.grey_thumbnails(paths, None))
    cand = D.candidate_pairs(x, x16, 10)
    res = D.pair_residuals(x, x16, cand, max(thresholds), D.colour_loader(paths) if colour else None)
    seconds = time.perf_counter() - t0
    clean = int((~is_copy).sum())
    rows = []
    for thr in thresholds:
        hit = {tuple(p) for p in cand[res <= thr].tolist()}
        false = [p for p in hit if not (is_copy[p[0]] or is_copy[p[1]])]
        rows.append({"threshold": thr, "recall": round(len(hit & planted) / max(1, len(planted)), 3),
                     "clean_pairs": len(false),
                     "clean_images_in_pairs": round(len({i for p in false for i in p}) / max(1, clean), 4)})
    return {"manifest": str(manifest), "images": len(paths), "planted": len(planted), "candidates": len(cand),
            "seconds": round(seconds, 1), "sweep": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/imgcls-audit-study"))
    ap.add_argument("--blur", type=float, default=None, help="BLUR_SIGMA in px at 32 px (default: the library's)")
    ap.add_argument("--thresholds", default="0.012,0.015,0.018,0.02,0.022,0.025,0.03")
    args = ap.parse_args()
    from imgcls.audit import duplicates as D

    if args.blur is not None:
        D.BLUR_SIGMA = args.blur
    thresholds = [float(t) for t in args.thresholds.split(",")]
    out = {"blur_sigma": D.BLUR_SIGMA}
    for name, colour in (("fm-planted.jsonl", False), ("catsdogs-planted.jsonl", True)):
        if (args.work / name).exists():
            out[name] = sweep(args.work / name, thresholds, colour)
            print(json.dumps(out[name]), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
