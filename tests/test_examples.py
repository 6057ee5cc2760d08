"""The example scripts in examples/ run to the end in their small mode (IMGCLS_EXAMPLE_SMALL=1).

Each script runs in a subprocess in tmp_path, as a user would run it: the venv's bin folder
first on PATH, no terminal (stdin from /dev/null), its work folder in OUT. The decoded-image
cache and the torch hub cache (empty: there is no network here, so the small mode trains the
torchvision backbones with --no-pretrained) live in tmp_path too. OMP_NUM_THREADS=1: the test
machine is shared, and with two OpenMP threads per process tiny models spend most of their time
waiting (see tests/test_manpages.py).

Default run (about 100 s on a loaded 2-core machine): demo (twice, into the same folder),
cron-retrain (twice: the folder grows), mnist-robustness, cifar10-style on a user folder given
as $1, top-n-mobilenet. Marked slow (run with `make test-all` or `pytest -m slow`), 20-75 s each:
flowers-style, dog-breeds-style (with BACKBONE=mobilenet_v2, and once with its default vgg16,
whose model files are 0.5-1 GB), kfold-sweep, top-n-mobilenet with real weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_class_folder

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
VENV_BIN = Path(sys.executable).parent
SHARED_MOBILENET = Path("/work/shared/weights/mobilenet_v2-imagenet.safetensors")
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.sh"))
STUDIES = ["flowers-style.sh", "dog-breeds-style.sh", "cifar10-style.sh", "mnist-robustness.sh",
           "top-n-mobilenet.sh", "kfold-sweep.sh", "cron-retrain.sh"]
TIMEOUT_S = 600


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IMGCLS_", "TORCH_HOME", "OUT", "WEIGHTS", "BACKBONE", "PYTEST_"))}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "IMGCLS_EXAMPLE_SMALL": "1",
        "IMGCLS_CACHE": str(tmp_path / "cache"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "OUT": str(tmp_path / "out"),
    })
    env.update(extra)
    return env


def run_example(script: str, tmp_path: Path, *args: str, shell: str = "bash", **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run([shell, str(EXAMPLES / script), *args], cwd=tmp_path, env=_env(tmp_path, **extra),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{script} exited {result.returncode}\n--- stderr (end) ---\n{result.stderr[-4000:]}"
    return result


def comparison(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    assert doc["schema"] == "imgcls-eval"
    return doc["comparison"]


# ---------------------------------------------------------------- cheap checks of every script


def test_examples_one_script_per_study_plus_demo():
    assert set(STUDIES) | {"demo.sh"} == set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_examples_scripts_are_strict_documented_and_parse(script):
    text = (EXAMPLES / script).read_text()
    shell = "sh" if script == "demo.sh" else "bash"
    assert text.startswith("#!/bin/sh\n" if shell == "sh" else "#!/usr/bin/env bash\n")
    assert "\nset -eu" in text, "scripts stop at the first failing command"
    header = text.split("\nset -eu")[0]
    assert "IMGCLS_EXAMPLE_SMALL=1" in header, "the header documents the small mode"
    if script != "demo.sh":
        assert "Usage:" in header and "[DATA]" in header and "OUT=DIR" in header
        assert 'OUT=${OUT:-example-out/' in text
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if re.search(r"(^|[|;&(]\s*)jq\b", line.strip())], \
            "no jq dependency: python3 reads the JSON"
    assert os.access(EXAMPLES / script, os.X_OK), "executable: the headers say examples/NAME.sh [DATA]"
    result = subprocess.run([shell, "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("dash") and shell == "sh":  # POSIX sh, not bash: make demo runs it with sh
        result = subprocess.run(["dash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- default run


def test_examples_demo_runs_and_reruns_into_the_same_folder(tmp_path):
    demo = tmp_path / "demo"
    first = run_example("demo.sh", tmp_path, str(demo), shell="sh")
    prediction = json.loads(first.stdout.strip().splitlines()[-1])
    assert prediction["path"] == "digits/3/00003.png" and prediction["label"] in [str(d) for d in range(10)]
    assert (demo / "digits.jsonl").exists() and (demo / "runs" / "latest" / "model.safetensors").exists()
    assert (demo / "report" / "confusion_matrix.png").exists()
    run_example("demo.sh", tmp_path, str(demo), shell="sh")
    runs = [p for p in (demo / "runs").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 2, "a rerun adds a run folder next to the first"


def test_examples_cron_retrain_twice_keeps_a_current_model(tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        result = run_example("cron-retrain.sh", tmp_path)
        assert result.stdout == "" and result.stderr == "", "cron output goes to the log only"
    current = out / "current"
    assert current.is_symlink() and os.readlink(current).startswith("runs/")
    assert (current / "model.safetensors").exists() and (current / "eval.json").exists()
    history = [line.split("\t") for line in (out / "history.tsv").read_text().splitlines()]
    assert len(history) == 2
    assert history[0][2] == "none" and history[0][4] == "candidate"
    assert int(history[1][1]) > int(history[0][1]), "the simulated folder grows"
    assert history[1][4] in ("candidate", "current")
    log = (out / "retrain.log").read_text()
    assert log.count("run finished") == 2 and "FAILED" not in log
    # the candidate that lost was removed; the winner is what current points at
    runs = sorted(p.name for p in (out / "runs").iterdir() if p.is_dir() and not p.is_symlink())
    assert os.readlink(current).split("/")[1] in runs
    assert len(runs) == (2 if history[1][4] == "candidate" else 1)


def test_examples_cron_retrain_failure_leaves_current_and_tells_cron(tmp_path):
    run_example("cron-retrain.sh", tmp_path)
    before = os.readlink(tmp_path / "out" / "current")
    result = subprocess.run(["bash", str(EXAMPLES / "cron-retrain.sh"), str(tmp_path / "missing")], cwd=tmp_path,
                            env=_env(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode != 0
    assert "failed" in result.stderr and "retrain.log" in result.stderr  # the one line cron mails
    assert os.readlink(tmp_path / "out" / "current") == before
    assert "run FAILED" in (tmp_path / "out" / "retrain.log").read_text()


def test_examples_mnist_robustness(tmp_path):
    result = run_example("mnist-robustness.sh", tmp_path)
    out = tmp_path / "out"
    for name in ("data.jsonl", "augmented.jsonl", "imperfect.jsonl", "mix.jsonl", "test-perturbed.jsonl"):
        assert (out / name).exists(), name
    doc = json.loads((out / "results" / "robustness.json").read_text())
    assert [m["model"]["name"] for m in doc["models"]] == ["cnn-clean", "cnn-mix", "cnn-gru-mix"]
    for report in doc["models"]:
        kinds = {row["perturbation"] for row in report["robustness"]["perturbations"]}
        assert kinds == {"rotation", "gaussian_noise", "thin", "thick"}
    assert "mean perturbed" in result.stdout
    # the mix holds originals, augmented copies and imperfect copies of the training images
    records = [json.loads(line) for line in (out / "mix.jsonl").read_text().splitlines()[1:]]
    assert any("perturbation" in r for r in records) and any("transform" in r and "perturbation" not in r
                                                             for r in records)


def test_examples_cifar10_style_on_a_user_folder(tmp_path):
    folder = make_class_folder(tmp_path / "mine", per_class=12, size=16)
    result = run_example("cifar10-style.sh", tmp_path, str(folder))
    rows = comparison(tmp_path / "out" / "results" / "comparison.json")
    assert [r["model"] for r in rows] == ["baseline", "efficientnet-frozen", "efficientnet-finetuned"]
    assert {r["arch"] for r in rows} == {"cnn-classic", "efficientnet_b0"}
    header = json.loads((tmp_path / "out" / "data.jsonl").read_text().splitlines()[0])
    assert header["classes"] == ["circle", "square", "stripe"]
    assert (tmp_path / "out" / "results" / "report" / "baseline" / "confusion_matrix.png").exists()
    assert "efficientnet-finetuned" in result.stdout


def test_examples_top_n_mobilenet(tmp_path):
    result = run_example("top-n-mobilenet.sh", tmp_path)
    out = tmp_path / "out"
    header = json.loads((out / "data.jsonl").read_text().splitlines()[0])
    assert len(header["classes"]) == 5, "--top 5 on the digits"
    rows = comparison(out / "results" / "comparison.json")
    assert [r["model"] for r in rows] == ["mobilenet-frozen", "mobilenet-finetuned"]
    predictions = [json.loads(line) for line in (out / "results" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5 and all(p["label"] in header["classes"] for p in predictions)
    assert "accuracy" in result.stdout


# ---------------------------------------------------------------- slow


@pytest.mark.slow
def test_examples_flowers_style(tmp_path):
    run_example("flowers-style.sh", tmp_path)
    results = tmp_path / "out" / "results"
    rows = comparison(results / "comparison.json")
    assert [r["model"] for r in rows] == ["scratch", "smaller", "regularised", "densenet121-frozen"]
    assert rows[1]["parameters"] < rows[0]["parameters"] / 5, "capacity reduction"
    assert (results / "errors.tsv").read_text().startswith("prob\tlabel\tpred\tpath")
    assert (results / "report" / "scratch" / "learning_curves.png").exists()
    assert (results / "summary.txt").read_text().count("\n") == 5


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "vgg16"])
def test_examples_dog_breeds_style(tmp_path, backbone):
    run_example("dog-breeds-style.sh", tmp_path, BACKBONE=backbone)
    rows = comparison(tmp_path / "out" / "results" / "comparison.json")
    assert [r["model"] for r in rows] == ["scratch", "scratch-augment", "scratch-offline",
                                          f"{backbone}-features", f"{backbone}-finetuned"]
    assert (tmp_path / "out" / "augmented.jsonl").exists()


@pytest.mark.slow
def test_examples_kfold_sweep(tmp_path):
    run_example("kfold-sweep.sh", tmp_path)
    results = tmp_path / "out" / "results"
    rows = [line.split("\t") for line in (results / "sweep.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert all(0 <= float(r[2]) <= 1 for r in rows)
    for k in (0, 1):
        records = [json.loads(line) for line in (tmp_path / "out" / "folds" / f"fold-{k}.jsonl").read_text().splitlines()]
        val = [r for r in records[1:] if r.get("split") == "val"]
        assert val and all(r["fold"] == k for r in val)
    summary = (results / "summary.txt").read_text()
    assert "best setting: --width" in summary and "test accuracy:" in summary


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MOBILENET.exists(), reason=f"{SHARED_MOBILENET} is not on this machine")
def test_examples_top_n_mobilenet_with_weights(tmp_path):
    result = run_example("top-n-mobilenet.sh", tmp_path, WEIGHTS=str(SHARED_MOBILENET))
    assert f"pretrained weights: {SHARED_MOBILENET}" in result.stderr
