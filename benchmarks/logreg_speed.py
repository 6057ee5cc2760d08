"""How long the logreg head takes to fit, against scikit-learn's LogisticRegressionCV on the same features.

    OMP_NUM_THREADS=1 python benchmarks/logreg_speed.py                  # 1,000 and 10,000 feature vectors
    OMP_NUM_THREADS=1 python benchmarks/logreg_speed.py --sizes 2000 --no-reference

Features: mobilenet_v2 (the shipped ImageNet weights) at --image-size 96 of the first N/10 Fashion-MNIST
training images per class of one seeded permutation (1,280 numbers each), computed once through
imgcls' preprocessing. For each N: imgcls' fit (imgcls.models.heads.fit_logreg, what
``imgcls train --freeze --head logreg`` runs on its cached features; 1 thread) and, unless
--no-reference, ``LogisticRegressionCV(cv=5, max_iter=1000)`` with scikit-learn's other defaults
on the raw features, the probe of benchmarks/heads_study.py. Test accuracy on 2,000 t10k images.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fmnist as fm  # noqa: E402

DEFAULT_WEIGHTS = fm.REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"


def features(weights: Path, images: np.ndarray, size: int) -> np.ndarray:
    import torch

    from imgcls.models import get_model
    from imgcls.models.preprocess import normalize
    from imgcls.models.weights import resolve_pretrained
    from PIL import Image

    pre = resolve_pretrained("mobilenet_v2", pretrained=True, weights_file=weights)
    model = get_model("mobilenet_v2", num_classes=10, weights=pre).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 32):
            batch = np.stack([np.asarray(Image.fromarray(im, "L").convert("RGB").resize((size, size), Image.BILINEAR))
                              for im in images[start:start + 32]])
            out.append(model.features(normalize(torch.from_numpy(batch), pre.mean, pre.std)).float())
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="feature vectors to fit on")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--no-reference", action="store_true", help="skip scikit-learn's LogisticRegressionCV")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    arrays = fm.load_arrays()
    images, labels = arrays["train"]
    order = fm.pools(labels, 0)
    per_class = max(args.sizes) // 10
    idx = np.stack([p[:per_class] for p in order], axis=1).reshape(-1)  # interleaved: any prefix is balanced
    t0 = time.perf_counter()
    x_all = features(args.weights, images[idx], args.image_size)
    y_all = labels[idx].astype(np.int64)
    timages, tlabels = arrays["test"]
    tidx = np.concatenate([np.flatnonzero(tlabels == c)[:200] for c in range(10)])
    x_test, y_test = features(args.weights, timages[tidx], args.image_size), tlabels[tidx].astype(np.int64)
    report: dict = {"benchmark": "logreg_speed", "machine": fm.machine(), "image_size": args.image_size,
                    "feature_seconds": round(time.perf_counter() - t0, 1), "rows": []}
    from imgcls.models.heads import fit_logreg

    for n in args.sizes:
        x, y = x_all[:n], y_all[:n]
        t1 = time.perf_counter()
        fit = fit_logreg(x, y, 10, val=None, seed=0)
        own_s = time.perf_counter() - t1
        u = x_test / np.linalg.norm(x_test, axis=1, keepdims=True)
        row = {"n": n, "imgcls_s": round(own_s, 2), "imgcls_test_acc": round(float(((u @ fit.weight.T + fit.bias)
                                                                                      .argmax(1) == y_test).mean()), 4),
               "imgcls_C": fit.info["C"], "imgcls_selection": fit.info["selection"], "C_tried": len(fit.info["C_tried"])}
        if not args.no_reference:
            from sklearn.exceptions import ConvergenceWarning
            from sklearn.linear_model import LogisticRegressionCV

            t1 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                probe = LogisticRegressionCV(cv=5, max_iter=1000).fit(x, y)
            row.update(sklearn_cv_s=round(time.perf_counter() - t1, 2),
                       sklearn_cv_test_acc=round(float(probe.score(x_test, y_test)), 4))
        report["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    report["load_avg_end"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
