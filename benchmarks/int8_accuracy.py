"""What ``imgcls export --int8`` costs in accuracy: float model, float ONNX and int8 ONNX on the same test set.

    OMP_NUM_THREADS=1 python benchmarks/int8_accuracy.py                       # digits cnn + catsdogs mobilenet_v2
    OMP_NUM_THREADS=1 python benchmarks/int8_accuracy.py --only digits

Two real cases, each through the CLI in a temporary folder:

* ``digits``: ``imgcls prepare --sample digits``, ``imgcls train --arch cnn --epochs 15``;
* ``catsdogs``: the 2,000 32 px photos of /work/data/catsdogs, ``imgcls train --arch mobilenet_v2
  --weights W --freeze --image-size 160 --epochs 5`` (W: the real ImageNet weights in
  ../shared/weights, mean = std = 0.5);

then ``imgcls export`` (float ONNX) and ``imgcls export --int8`` fed the stream train printed
(calibration: 64 of its train records), and ONE ``imgcls eval`` of the test split with the
three models side by side (the int8 model's float source is already among them). Prints one
JSON document: accuracy, log loss and images/s per model, and the export lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet.safetensors"


def sh(cmd: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def case(name: str, prepare: str, train: str, tmp: Path, env: dict) -> dict:
    folder = tmp / name
    folder.mkdir()
    sh(f"{prepare} > data.jsonl", folder, env)
    sh(f"imgcls train data.jsonl {train} --out run -q --threads 1 > trained.jsonl", folder, env)
    float_line = sh("imgcls export run -o run/model.onnx", folder, env).stderr.strip().splitlines()
    int8 = sh("imgcls export --int8 -o run/model-int8.onnx < trained.jsonl > /dev/null", folder, env)
    proc = sh("imgcls eval data.jsonl -m run -m run/model.onnx -m run/model-int8.onnx --json -q --no-cache",
              folder, env)
    document = json.loads(proc.stdout)
    labels = {str((folder / "run" / "model.safetensors").resolve()): "torch",
              str((folder / "run" / "model.onnx").resolve()): "onnx",
              str((folder / "run" / "model-int8.onnx").resolve()): "int8"}
    assert len(document["models"]) == 3, [r["model"]["path"] for r in document["models"]]
    models = {}
    for report in document["models"]:
        models[labels[report["model"]["path"]]] = {"accuracy": round(report["metrics"]["accuracy"], 4),
                         "log_loss": round(report["metrics"]["log_loss"], 4),
                         "images_per_second": round(report["speed"]["images_per_second"], 1)}
    return {"case": name, "train": train, "n_test": document["models"][0]["n_images"], "models": models,
            "export_float": [line for line in float_line if line.startswith("check:")],
            "export_int8": [line for line in int8.stderr.splitlines()
                            if line.startswith(("check:", "int8:", "calibrating"))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["digits", "catsdogs"])
    parser.add_argument("--catsdogs", default="/work/data/catsdogs")
    parser.add_argument("--weights", default=str(WEIGHTS))
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "IMGCLS_MODEL": ""}
    results = []
    with tempfile.TemporaryDirectory(prefix="imgcls-int8-") as tmp:
        env["IMGCLS_CACHE"] = str(Path(tmp) / "cache")
        if args.only in (None, "digits"):
            results.append(case("digits", "imgcls prepare --sample digits digits -q",
                                "--arch cnn --epochs 15", Path(tmp), env))
        if args.only in (None, "catsdogs"):
            results.append(case("catsdogs", f"imgcls prepare {args.catsdogs} -q",
                                f"--arch mobilenet_v2 --weights {args.weights} --freeze --image-size 160 --epochs 5",
                                Path(tmp), env))
    print(json.dumps({"benchmark": "int8_accuracy", "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
