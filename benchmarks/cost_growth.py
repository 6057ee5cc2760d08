"""Cost growth (issue 6): does time per image stay flat, and memory bounded, as the data doubles?

For each size N (default 1k, 2k, 4k, 8k, 16k, 32k images) the real CLI runs as a user would,
each command in its own process:

    imgcls prepare DATA-N > data.jsonl                       (default split 70/15/15, all cores)
    imgcls train data.jsonl --arch cnn --width 8 --depth 2 --epochs 1 --threads 1 \\
        --cache-dir FRESH --out RUN > trained.jsonl           (train + val images)
    imgcls eval trained.jsonl --cache-dir FRESH --json > eval.json   (test images)

Data: Fashion-MNIST PNGs (28x28 gray) from the official 60k training set, N/10 per class
from a seeded permutation, so every smaller set is a subset of the larger ones
(benchmarks/_fmnist.py). The model and every option are the same for all sizes.

The decoded-image cache starts empty for every size, so train and eval include decoding;
``--warm`` reruns train and eval on the filled cache (decoding skipped).

Measured per stage: wall seconds, CPU seconds (user + sys of the process and the workers it
reaped), peak RSS (ru_maxrss from ``os.wait4``: the largest single process of the stage's
tree, workers included, not their sum; taken through a small fork-and-exec launcher, because
on Linux a child's ru_maxrss starts at its parent's peak RSS), and the images the stage handled
(prepare: N; train: train + val; eval: test). Time per image is reported three ways:
raw (wall / images: includes the fixed start-up, so it FALLS with N), marginal (extra time
per extra image between consecutive sizes) and a least-squares line wall = fixed + slope x
images per stage (fixed = start-up, imports, model build, files written once), for wall
and for CPU seconds. On a CPU shared with other jobs read the CPU figures: neighbours
stretch wall time (waiting for a core), hardly the CPU time a stage uses.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cost_growth.py --warm --repeat 2 --markdown
    .venv/bin/python benchmarks/cost_growth.py --sizes 1000,2000,4000      # a quick check

Prints one JSON object on stdout (per size and stage: wall_s, cpu_s, max_rss_mib, images,
s_per_1k_images; per stage a summary with the fitted lines and marginal costs);
--markdown also prints tables on stderr. Wall times are the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _fmnist  # noqa: E402

REPO = HERE.parent
MODEL_ARGS = ["--arch", "cnn", "--width", "8", "--depth", "2"]


def imgcls_cmd() -> list[str]:
    """The console script next to this Python (as a user types it), else python -m imgcls."""
    script = Path(sys.executable).parent / "imgcls"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgcls"]


def materialise_flat(dest: Path, per_class: int, seed: int = 0) -> int:
    """dest/<class>/<index>.png: the first ``per_class`` images of each class's seeded permutation."""
    import numpy as np

    marker = dest.parent / f"{dest.name}.done.json"  # outside the folder prepare scans
    key = {"per_class": per_class, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == key:
        return per_class * len(_fmnist.CLASSES)
    images, labels = _fmnist.load_arrays()["train"]
    order = _fmnist.pools(labels, seed)
    idx = np.concatenate([p[:per_class] for p in order])
    n = _fmnist.write_pngs(dest, images, labels, idx)
    marker.write_text(json.dumps(key))
    return n


# Linux gotcha: a child's ru_maxrss starts at its PARENT's peak RSS (exec records the high-water
# mark of the address space it replaces, which a spawned child shares or copies from the parent),
# so measuring from this script would report max(this script's peak, the command's). A small
# launcher, started fresh by exec, forks the command instead: the floor is the launcher's ~10 MiB.
LAUNCHER = r"""
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write("%d %r %r" % (ru.ru_maxrss, ru.ru_utime + ru.ru_stime, 0))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], env: dict, stdin, stdout, stderr) -> tuple[int, float, float, float]:
    """(exit code, wall s, CPU s, peak RSS MiB) of ``cmd`` and the descendants it reaped.

    CPU and RSS come from the command's own rusage (os.wait4 in the launcher); RSS is the
    largest single process of the tree (e.g. decoding workers), not their sum.
    """
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"cost-growth-{os.getpid()}.rusage"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(report), *cmd], stdin=stdin, stdout=stdout,
                          stderr=stderr, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    try:
        maxrss_kb, cpu, _ = report.read_text().split()
        report.unlink()
    except (OSError, ValueError):
        return proc.returncode or 1, wall, float("nan"), float("nan")
    return proc.returncode, wall, float(cpu), int(maxrss_kb) / 1024


def timed(cmd: list[str], stdout: Path, log: Path, env: dict) -> dict:
    """Run one command (stdin empty, stdout to a file, stderr to a log): wall, CPU, peak RSS."""
    load = os.getloadavg()[0]
    with open(os.devnull, "rb") as fin, open(stdout, "wb") as fout, open(log, "wb") as ferr:
        code, wall, cpu, rss = run_measured(cmd, env, fin, fout, ferr)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n" + "\n".join(tail))
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "max_rss_mib": round(rss, 1),
            "load_1min_before": round(load, 2)}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def split_counts(manifest: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with open(manifest) as fh:
        next(fh)
        for line in fh:
            if line.strip():
                split = json.loads(line).get("split")
                counts[split] = counts.get(split, 0) + 1
    return counts


def best(runs: list[dict]) -> dict:
    """The fastest repeat (least disturbed by other jobs on a shared CPU); peak RSS over all repeats."""
    out = dict(min(runs, key=lambda r: r["wall_s"]))
    if len(runs) > 1:
        out["wall_s_all"] = [r["wall_s"] for r in runs]
        out["max_rss_mib"] = max(r["max_rss_mib"] for r in runs)
    return out


def run_size(n_per_class: int, work: Path, args: argparse.Namespace, env: dict) -> dict:
    data = work / "data" / f"{n_per_class * len(_fmnist.CLASSES)}"
    n = materialise_flat(data, n_per_class, args.seed)
    out = work / f"n{n}"
    cmd = imgcls_cmd()
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        if out.exists():
            shutil.rmtree(out)  # fresh cache and run folders: every repeat measures decoding
        out.mkdir(parents=True)
        cache = out / "cache"
        timings = {"prepare": timed([*cmd, "prepare", str(data)], out / "data.jsonl", out / "prepare.log", env)}
        train_cmd = [*cmd, "train", str(out / "data.jsonl"), *MODEL_ARGS, "--epochs", str(args.epochs),
                     "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--cache-dir", str(cache)]
        timings["train"] = timed([*train_cmd, "--out", str(out / "run")], out / "trained.jsonl", out / "train.log", env)
        eval_cmd = [*cmd, "eval", str(out / "trained.jsonl"), "--cache-dir", str(cache), "--json"]
        timings["eval"] = timed(eval_cmd, out / "eval.json", out / "eval.log", env)
        if args.warm:
            timings["train_warm"] = timed([*train_cmd, "--out", str(out / "run-warm")], out / "trained-warm.jsonl",
                                          out / "train-warm.log", env)
            timings["eval_warm"] = timed(eval_cmd, out / "eval-warm.json", out / "eval-warm.log", env)
        for stage, t in timings.items():
            runs.setdefault(stage, []).append(t)
    counts = split_counts(out / "data.jsonl")
    n_train = counts.get("train", 0) + counts.get("val", 0)
    n_test = counts.get("test", 0)
    handled = {"prepare": n, "train": n_train * args.epochs, "eval": n_test,
               "train_warm": n_train * args.epochs, "eval_warm": n_test}
    stages = {}
    for stage, reps in runs.items():
        st = stages[stage] = best(reps)
        st["images"] = handled[stage]
        st["s_per_1k_images"] = round(st["wall_s"] / st["images"] * 1000, 3)
    cache_bytes = folder_bytes(out / "cache" / "decoded")
    report = json.loads((out / "eval.json").read_text())
    acc = report["models"][0]["metrics"].get("accuracy") if report.get("models") else None
    result = {"images": n, "splits": counts, "stages": stages,
              "decoded_cache_bytes": cache_bytes,
              "decoded_cache_bytes_per_image": round(cache_bytes / max(1, n_train + n_test), 1),
              "png_bytes_per_image": round(folder_bytes(data) / n, 1),
              "test_accuracy": acc}
    if not args.keep:
        shutil.rmtree(out / "run", ignore_errors=True)
        shutil.rmtree(out / "run-warm", ignore_errors=True)
    return result


def import_rss(env: dict) -> dict:
    """References: a process that only imports torch (the floor of every torch stage's RSS), and
    the launcher alone (the floor of every measurement)."""
    out = {}
    for name, code in (("import_torch", "import torch, imgcls.cli"), ("launcher_only", "pass")):
        _, wall, _, rss = run_measured([sys.executable, "-c", code], env, subprocess.DEVNULL, subprocess.DEVNULL,
                                       subprocess.DEVNULL)
        out[name] = {"wall_s": round(wall, 2), "max_rss_mib": round(rss, 1)}
    return out


def fit(points: list[tuple[int, float]]) -> dict:
    """Least squares y = fixed + slope x images; marginal cost between consecutive sizes."""
    import numpy as np

    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    if len(points) < 2:
        return {}
    slope, fixed = np.polyfit(x, y, 1)
    return {"fixed_s": round(float(fixed), 2), "slope_s_per_1k": round(float(slope) * 1000, 3),
            "marginal_s_per_1k": [round((y[i] - y[i - 1]) / (x[i] - x[i - 1]) * 1000, 3) for i in range(1, len(x))],
            "after_fixed_s_per_1k": [round((y[i] - fixed) / x[i] * 1000, 3) for i in range(len(x))]}


def summarise(rows: list[dict]) -> dict:
    """Per stage: wall and CPU lines (fixed + per image), marginal costs per doubling, RSS range.

    CPU seconds are the steadier measure on a shared machine: other jobs stretch wall time
    (waiting for a core) but hardly the CPU time the stage itself used.
    """
    summary = {}
    for stage in rows[0]["stages"]:
        wall = fit([(r["stages"][stage]["images"], r["stages"][stage]["wall_s"]) for r in rows])
        cpu = fit([(r["stages"][stage]["images"], r["stages"][stage]["cpu_s"]) for r in rows])
        rss = [r["stages"][stage]["max_rss_mib"] for r in rows]
        summary[stage] = {"wall": wall, "cpu": cpu, "max_rss_mib_smallest": rss[0], "max_rss_mib_largest": rss[-1],
                          "rss_growth_mib": round(rss[-1] - rss[0], 1)}
    return summary


HANDLES = {"prepare": "N", "train": "train + val (0.85 N) x epochs", "eval": "test (0.15 N)",
           "train_warm": "train + val, cache warm", "eval_warm": "test, cache warm"}


def markdown(result: dict) -> str:
    stages = [s for s in HANDLES if s in result["sizes"][0]["stages"]]
    lines = ["| images | " + " | ".join(f"{s}: wall s / CPU s / MiB" for s in stages) + " | cache B/image |",
             "|" + "---|" * (len(stages) + 2)]
    for r in result["sizes"]:
        cells = [f"{r['stages'][s]['wall_s']:.1f} / {r['stages'][s]['cpu_s']:.1f} / {r['stages'][s]['max_rss_mib']:.0f}"
                 for s in stages]
        lines.append(f"| {r['images']:,} | " + " | ".join(cells) + f" | {r['decoded_cache_bytes_per_image']:.0f} |")
    lines += ["", "| stage | images it handles | CPU s fixed + per 1k images (fit) | CPU s per 1k, marginal "
              "per doubling | wall s fixed + per 1k (fit) | peak RSS MiB, smallest -> largest |",
              "|---|---|---|---|---|---|"]
    for s in stages:
        f = result["summary"][s]
        lines.append(f"| {s} | {HANDLES[s]} | {f['cpu'].get('fixed_s', '')} + {f['cpu'].get('slope_s_per_1k', '')} | "
                     f"{', '.join(f'{v:.2f}' for v in f['cpu'].get('marginal_s_per_1k', []))} | "
                     f"{f['wall'].get('fixed_s', '')} + {f['wall'].get('slope_s_per_1k', '')} | "
                     f"{f['max_rss_mib_smallest']:.0f} -> {f['max_rss_mib_largest']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,2000,4000,8000,16000,32000",
                        help="comma-separated image counts (multiples of 10; at most 60000)")
    parser.add_argument("--epochs", type=int, default=1, help="train epochs (the same for every size)")
    parser.add_argument("--batch-size", type=int, default=64, help="train batch size")
    parser.add_argument("--threads", type=int, default=1, help="--threads of train and OMP_NUM_THREADS of every stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class permutation")
    parser.add_argument("--warm", action="store_true", help="also rerun train and eval on the filled decoded cache")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every size this many times (fresh cache each) and keep the fastest of each stage")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--work", type=Path, default=REPO / "bench-data" / "cost-growth",
                        help="work folder: PNG sets (kept for reuse), manifests, fresh caches, logs")
    parser.add_argument("--markdown", action="store_true", help="also print markdown tables on stderr")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="run nothing: recompute the summary (and --markdown) of a saved result")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        result["summary"] = summarise(result["sizes"])
        print(json.dumps(result, indent=2))
        if args.markdown:
            print(markdown(result), file=sys.stderr)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % len(_fmnist.CLASSES) or s <= 0 or s > 60000 for s in sizes):
        parser.error("--sizes: positive multiples of 10, at most 60000")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "IMGCLS_CACHE": str(args.work / "unused-cache")}
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_start = os.getloadavg()
    reference = import_rss(env)
    rows = []
    for n in sizes:
        rows.append(run_size(n // len(_fmnist.CLASSES), args.work, args, env))
        print(f"{n} images: " + ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in rows[-1]["stages"].items()),
              file=sys.stderr, flush=True)
    import platform

    result = {
        "benchmark": "cost_growth",
        "command": " ".join(sys.argv),
        "config": {"model": " ".join(MODEL_ARGS), "epochs": args.epochs, "batch_size": args.batch_size,
                   "threads": args.threads, "repeat": args.repeat,
                   "prepare": "default split (val 0.15, test 0.15), -j 0 (all cores)",
                   "data": "Fashion-MNIST 28x28 PNG, N/10 per class, nested subsets"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "reference": reference,
        "total_s": round(time.perf_counter() - started, 1),
        "sizes": rows,
        "summary": summarise(rows),
    }
    print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(result), file=sys.stderr)


if __name__ == "__main__":
    main()
