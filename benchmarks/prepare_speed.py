#!/usr/bin/env python3
"""How long does ``imgcls prepare`` take on 10,000 small PNG files, end to end?

Generates FILES small PNGs (default 10,000 of 28x28 RGB noise + shapes in 10 classes)
in a temporary folder (or --data DIR, kept and reused), then runs
``python -m imgcls prepare DIR -o OUT -q`` as a subprocess REPEAT times and prints
one JSON object: {files, seconds (best run), seconds_all, files_per_second, cores, jobs, ...}.

    python benchmarks/prepare_speed.py
    python benchmarks/prepare_speed.py --files 2000 --repeat 1 --jobs 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(root: Path, files: int, size: int, classes: int) -> int:
    """Write the images unless ``root`` already holds exactly that many."""
    import numpy as np
    from PIL import Image

    existing = sum(1 for _ in root.rglob("*.png")) if root.exists() else 0
    if existing == files:
        return 0
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(files):
        c = i % classes
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        mask = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / (2 + c / 3)) ** 2
        img[mask] += np.uint8(100 + 15 * c)
        Image.fromarray(img, "RGB").save(folder / f"{i:06d}.png")
    return files


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="number of PNG files (default 10000)")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
    parser.add_argument("--classes", type=int, default=10, help="number of class folders (default 10)")
    parser.add_argument("--data", type=Path, default=None, help="keep the images here (default: a temp folder)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported (default 3)")
    parser.add_argument("--jobs", type=int, default=0, help="imgcls prepare --jobs (default 0 = all cores)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as tmp:
        data = args.data or Path(tmp) / "images"
        start = time.perf_counter()
        written = generate(data, args.files, args.size, args.classes)
        gen_seconds = time.perf_counter() - start
        out = Path(tmp) / "manifest.jsonl"
        cmd = [sys.executable, "-m", "imgcls", "prepare", str(data), "-o", str(out), "-q", "--jobs", str(args.jobs)]
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if run.returncode != 0:
                sys.exit(f"imgcls prepare failed ({run.returncode}): {run.stderr.strip()}")
        records = sum(1 for _ in out.open(encoding="utf-8")) - 1
        best = min(times)
        print(json.dumps({
            "benchmark": "prepare_speed",
            "files": args.files,
            "records": records,
            "image_size": args.size,
            "seconds": round(best, 3),
            "seconds_all": [round(t, 3) for t in times],
            "files_per_second": round(args.files / best, 1),
            "cores": cores(),
            "jobs": args.jobs or cores(),
            "generated_seconds": round(gen_seconds, 2) if written else None,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "command": " ".join(["imgcls", *cmd[3:]]),
        }))


if __name__ == "__main__":
    main()
