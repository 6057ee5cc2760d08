#!/usr/bin/env python
"""What `imgcls eval --html` costs on 10,000 test images, and the README's screenshots from a real run.

Fashion-MNIST (benchmarks/_fmnist.py): --per-class training images per class, 100 validation
images per class, the official 10,000 test images. Three models, all through the command line:

    imgcls prepare DATA > base.jsonl
    imgcls train base.jsonl --arch cnn --epochs E --out runs/cnn
    imgcls finetune base.jsonl --model runs/cnn --epochs 2 --out runs/cnn-finetune   # history: train + finetune
    imgcls train base.jsonl --arch cnn-classic --epochs E --out runs/cnn-classic

Cost: `imgcls eval base.jsonl -m ... -o eval.json` against the same command with `--html
report.html` (10,000 images, warm decoded-image cache, for 1 and for 3 models), repeated --repeat
times interleaved; the best and the median of each, their difference, and the page's size. And
the HTML step alone inside one process (`in_process`): gathering the pictures (thumbnails,
Grad-CAM) cold (the first page: importing grad-cam) and warm, and rendering the page.

Gallery: the --test-per-class first test images per class and their perturbed copies
(`imgcls perturb --kinds K --severity 1,3,5`), evaluated with the three models into one page,
opened in headless Chromium (tests/_browser.py: no console errors, no requests allowed) and
cut into docs/gallery/html_report_*.png.

    .venv/bin/python benchmarks/html_report.py                 # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/html_report.py --quick         # smoke test
Prints one JSON object (also results.json in --work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import _fmnist as fm  # noqa: E402

GALLERY = HERE.parent / "docs" / "gallery"


def imgcls(*args: object) -> list[str]:
    return [*fm.IMGCLS, *map(str, args)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--test-per-class", type=int, default=100, help="clean images per class in the gallery run")
    parser.add_argument("--kinds", default="rotation,shift,gaussian_noise,blur,occlusion")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "imgcls-html-report")
    parser.add_argument("--no-gallery", action="store_true", help="do not write docs/gallery/html_report_*.png")
    parser.add_argument("--quick", action="store_true", help="50 per class, 1 epoch, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.per_class, args.epochs, args.repeat, args.test_per_class = 50, 1, 1, 20
    return args


def timed_eval(manifest: Path, models: list[Path], cache: Path, html: Path | None) -> tuple[float, dict]:
    out = manifest.parent / "eval.json"
    cmd = imgcls("eval", manifest, *[a for m in models for a in ("-m", m)], "-q", "--cache-dir", cache,
                 "-o", out)
    if html is not None:
        cmd += ["--html", html]
    seconds = fm.run(cmd)
    return seconds, json.loads(out.read_text())


def subset(base: Path, dest: Path, per_class: int) -> Path:
    """The first per_class test records of each class (train and val records left out)."""
    lines = base.read_text(encoding="utf-8").splitlines()
    header, kept, seen = lines[0], [], {}
    for line in lines[1:]:
        r = json.loads(line)
        if r.get("split") == "test" and seen.get(r["label"], 0) < per_class:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            kept.append(line)
    dest.write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return dest


def cost(args, base: Path, models: list[Path], cache: Path) -> dict:
    timed_eval(base, models, cache, None)  # fill the decoded-image cache
    plain, with_html = [], []
    page = args.work / f"cost-{len(models)}.html"
    for _ in range(args.repeat):
        plain.append(timed_eval(base, models, cache, None)[0])
        seconds, doc = timed_eval(base, models, cache, page)
        with_html.append(seconds)
    return {"models": len(models), "images": doc["models"][0]["n_images"],
            "eval_s_best": round(min(plain), 2), "eval_s_median": round(statistics.median(plain), 2),
            "eval_html_s_best": round(min(with_html), 2), "eval_html_s_median": round(statistics.median(with_html), 2),
            "html_cost_s_best": round(min(with_html) - min(plain), 2),
            "html_cost_s_median": round(statistics.median(with_html) - statistics.median(plain), 2),
            "page_bytes": page.stat().st_size}


def inprocess(base: Path, models: list[Path], cache: Path, repeat: int) -> dict:
    """The HTML step alone, inside one eval process: cold (the first page, importing grad-cam and its
    dependencies) and warm (the next ones), against the evaluation itself."""
    from imgcls.evaluation.evaluate import build_document, evaluate_model, select_records
    from imgcls.evaluation.html import render_html
    from imgcls.evaluation.htmlassets import collect_assets
    from imgcls.manifest import read_all

    _, records, reader = read_all(str(base))
    selection = select_records(records, reader.resolve, "test", reader.name)
    t0 = time.perf_counter()
    evaluations = [evaluate_model(m, selection, cache_dir=cache) for m in models]
    document = build_document(evaluations, selection, manifest=reader.name, settings={"errors": 10})
    evaluate_s = time.perf_counter() - t0
    runs = []
    for _ in range(1 + repeat):
        t0 = time.perf_counter()
        assets = collect_assets(evaluations, document)
        t1 = time.perf_counter()
        text = render_html(document, assets)
        t2 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1))
    warm = runs[1:]
    return {"models": len(models), "images": len(selection.records), "evaluate_s": round(evaluate_s, 2),
            "pictures_s_cold": round(runs[0][0], 2), "render_s_cold": round(runs[0][1], 3),
            "pictures_s_warm_best": round(min(a for a, _ in warm), 2),
            "render_s_warm_best": round(min(b for _, b in warm), 3), "page_bytes": len(text.encode())}


def screenshots(page: Path, write: bool) -> dict:
    from _browser import find_chromium, visit

    if find_chromium() is None:
        return {"skipped": "no chromium"}
    boxes = ("JSON.stringify(['summary','comparison','m0-mistakes','m1-learning','m1-confusion']"
             ".map(function (id) { var e = document.getElementById(id);"
             " if (!e) return null; var r = e.getBoundingClientRect();"
             " return [id, r.top + window.scrollY, r.height]; }))")
    result = visit(page.as_uri(), width=1280, evaluate={"boxes": boxes})
    out = {"problems": result.problems(), "requests_other_than_data": [
        u for u in result.requests if not u.startswith("data:") and u != page.as_uri()]}
    if not write:
        return out
    import io

    from PIL import Image

    shot = Image.open(io.BytesIO(result.screenshot))
    out["page_height_px"] = shot.height
    where = {b[0]: (int(b[1]), int(b[2])) for b in json.loads(result.evaluated["boxes"]) if b}
    GALLERY.mkdir(parents=True, exist_ok=True)
    crops = {"html_report_summary.png": (0, where["comparison"][0] + 1350),
             # the fine-tuned model: its learning curves show both phases
             "html_report_model.png": (where["m1-confusion"][0] - 10, where["m1-learning"][0] + where["m1-learning"][1]),
             "html_report_mistakes.png": (where["m0-mistakes"][0] - 10,
                                          where["m0-mistakes"][0] + min(1100, where["m0-mistakes"][1]))}
    for name, (top, bottom) in crops.items():
        part = shot.crop((0, max(0, top), 1280, min(shot.height, bottom)))
        part = part.convert("P", palette=Image.ADAPTIVE, colors=128)
        part.save(GALLERY / name, optimize=True)
        out[name] = part.size
    return out


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, runs, cache = args.work / "data", args.work / "runs", args.work / "cache"
    t0 = time.perf_counter()
    fm.materialise(data, args.per_class, 100, None)
    base = args.work / "base.jsonl"
    if not base.exists():
        fm.run(imgcls("prepare", data, "-q"), stdout=base)
    steps = [("cnn", imgcls("train", base, "--arch", "cnn", "--epochs", args.epochs, "--out", runs / "cnn", "-q")),
             ("cnn-finetune", imgcls("finetune", base, "--model", runs / "cnn", "--epochs", 2, "--out",
                                     runs / "cnn-finetune", "-q")),
             ("cnn-classic", imgcls("train", base, "--arch", "cnn-classic", "--epochs", args.epochs, "--out",
                                    runs / "cnn-classic", "-q"))]
    train_s = {}
    for name, cmd in steps:
        if not (runs / name / "model.safetensors").exists():
            train_s[name] = round(fm.run(cmd), 1)
    models = [runs / name / "model.safetensors" for name, _ in steps]
    results = {"machine": fm.machine(), "args": {k: str(v) for k, v in vars(args).items()}, "train_s": train_s,
               "cost": [cost(args, base, models[:1], cache), cost(args, base, models, cache)],
               "in_process": inprocess(base, models, cache, args.repeat)}
    # the gallery: a perturbed test subset, the three models, one page
    small = subset(base, args.work / "test-subset.jsonl", args.test_per_class)
    perturbed = args.work / "perturbed.jsonl"
    if not perturbed.exists():
        fm.run(imgcls("perturb", small, "--out", args.work / "perturbed", "--kinds", args.kinds, "--severity",
                      "1,3,5", "--force", "-q"), stdout=perturbed)
    page = args.work / "gallery.html"
    seconds, doc = timed_eval(perturbed, models, cache, page)
    results["gallery"] = {"images": doc["models"][0]["n_images"], "eval_html_s": round(seconds, 2),
                          "page_bytes": page.stat().st_size,
                          "accuracy": {m["model"]["name"]: m["metrics"]["accuracy"] for m in doc["models"]},
                          "browser": screenshots(page, not args.no_gallery)}
    results["total_s"] = round(time.perf_counter() - t0, 1)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
