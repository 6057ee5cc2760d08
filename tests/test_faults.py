"""Fault injection: hostile input, broken outputs, signals and kills, damaged metadata (issue #21).

Each section is one of the promises imgcls makes (README, "Conventions shared by every
command"), tried the way a hostile user or a bad day would: outputs that are devices,
FIFOs, links or inputs; names full of markup and escape sequences; SIGTERM, SIGHUP and
kill -9 at awkward moments (through subprocesses where a real process must die); full
and read-only disks (a small tmpfs, skipped where it cannot be mounted); manifests,
model files, checkpoints, histories and cache entries that are valid JSON but wrong;
images of every bit depth; sizes that cannot fit. No test touches /dev/null: FIFOs and
private paths stand in for devices.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_class_folder, read_jsonl
from PIL import Image

from imgcls.manifest import make_header, write_manifest

TINY = ["--arch", "cnn", "--width", "4", "--depth", "1", "--batch-size", "8", "--epochs", "1",
        "--save-interval", "0", "--workers", "0", "--no-cache"]
ESC = "\x1b"


# ---------------------------------------------------------------------------- helpers
def _invoke(args, input=None, env=None):
    from imgcls.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


def _proc_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", IMGCLS_CACHE=str(tmp / "proc-cache"))
    env.pop("IMGCLS_DEBUG", None)
    return env


def _spawn(args, tmp: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgcls", *map(str, args)], env=_proc_env(tmp),
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for(predicate, timeout: float = 30.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def _children(pid: int) -> set[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(result) -> str:
    """The error of a failed command: one line, no traceback, no internal error."""
    text = result.stderr
    assert "Traceback" not in text and "internal error" not in text, text
    return text.strip().splitlines()[-1]


def _manifest_over(folder: Path, path: Path, val: int = 2, test: int = 2, labels: dict | None = None) -> Path:
    """A manifest over SRC/<class>/*.png without prepare; ``labels`` renames classes (hostile names)."""
    labels = labels or {}
    records = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for i, image in enumerate(sorted(class_dir.glob("*.png"))):
            split = "val" if i < val else "test" if i < val + test else "train"
            records.append({"path": str(image), "label": labels.get(class_dir.name, class_dir.name), "split": split})
    classes = sorted({r["label"] for r in records}, key=lambda c: [r["label"] for r in records].index(c))
    write_manifest(path, make_header(classes), records)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, manifest): 3 classes x 8 images of 8 px, 2 val and 2 test per class."""
    root = tmp_path_factory.mktemp("tiny")
    make_class_folder(root / "img", per_class=8, size=8)
    return root / "img", _manifest_over(root / "img", root / "m.jsonl")


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory) -> Path:
    """A trained run folder of one epoch (model, checkpoint, history, manifest copy)."""
    out = tmp_path_factory.mktemp("run") / "run"
    result = _invoke(["train", tiny[1], *TINY, "--out", out, "-o", out.parent / "passed.jsonl"])
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, manifest) of scikit-learn's 1,797 digits (8 px): enough images for worker processes."""
    from imgcls.importers import import_sample
    from imgcls.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("digits")
    import_sample("digits", root / "d", jobs=1)
    result = prepare([root / "d"], PrepareOptions(jobs=2))
    write_manifest(root / "d.jsonl", result.header, result.records)
    return root / "d", root / "d.jsonl"


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "256k", read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): full and read-only disks untested")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs filled to the last byte."""
    with _tmpfs(tmp_path / "full", "64k") as mount:
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        yield mount


@pytest.fixture
def read_only(tmp_path):
    with _tmpfs(tmp_path / "ro", "64k", read_only=True) as mount:
        yield mount


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in Path(folder).rglob(".*") if p.name.endswith(".tmp") or ".partial-" in p.name]


# ============================================================================ 1. outputs
# Atomic rename is for regular files; everything else is written through, links are kept,
# inputs and folders refused, and the target (never a temporary file) is named.

@pytest.mark.parametrize("option", ["-o", "--rejects"])
def test_faults_output_to_a_fifo_is_written_through(tmp_path, option):
    src = make_class_folder(tmp_path / "src", per_class=3, size=8)
    (src / "circle" / "bad.png").write_bytes(b"not an image")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: received.setdefault("data", fifo.read_bytes()), daemon=True)
    reader.start()
    other = ["--rejects", tmp_path / "r.jsonl"] if option == "-o" else ["-o", tmp_path / "m.jsonl"]
    result = _invoke(["prepare", src, option, fifo, *other])
    reader.join(20)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO, not replaced by a file
    lines = read_jsonl(received["data"].decode())
    assert (lines[0]["format"] == "imgcls-manifest") if option == "-o" else (lines[0]["reason"] == "not-an-image")


def test_faults_output_to_dev_fd_writes_that_descriptor(tiny, tmp_path):
    r, w = os.pipe()
    try:
        result = _invoke(["prepare", tiny[0], "-o", f"/dev/fd/{w}"])
        os.close(w)
        data = os.read(r, 1 << 20)
    finally:
        os.close(r)
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(data.decode())[0]["format"] == "imgcls-manifest"


def test_faults_output_to_a_stdout_link_reaches_stdout_and_keeps_the_link(tiny, tmp_path):
    # /dev/stdout itself is never touched (as root, a regression would replace it for the whole
    # machine): a private link of the same kind, into /proc/self/fd/1, stands in for it.
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    proc = subprocess.run([sys.executable, "-m", "imgcls", "-q", "prepare", str(tiny[0]), "-o", str(link)],
                          capture_output=True, text=True, env=_proc_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(proc.stdout)[0]["format"] == "imgcls-manifest"
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


@pytest.mark.parametrize("dangling", [False, True])
def test_faults_output_to_a_symlink_writes_its_target(tiny, tmp_path, dangling):
    target = tmp_path / "real.jsonl"
    if not dangling:
        target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    result = _invoke(["prepare", tiny[0], "-o", link])
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert read_jsonl(target.read_text())[0]["format"] == "imgcls-manifest"


@pytest.mark.parametrize("command,option,victim", [
    ("prepare", "-o", "manifest"), ("prepare", "-o", "image"), ("prepare", "--rejects", "image"),
    ("train", "-o", "manifest"), ("eval", "-o", "manifest"), ("eval", "--predictions", "manifest"),
    ("eval", "--html", "manifest"),
])
def test_faults_output_never_overwrites_an_input(tiny, run, tmp_path, command, option, victim):
    folder = make_class_folder(tmp_path / "src", per_class=6, size=8)
    manifest = _manifest_over(folder, tmp_path / "in.jsonl")
    target = manifest if victim == "manifest" else folder / "circle" / "circle_000.png"
    before = _sha(target)
    source = manifest if victim == "manifest" or command != "prepare" else folder
    extra = {"prepare": [], "train": [*TINY, "--out", tmp_path / "r"], "eval": ["-m", run]}[command]
    result = _invoke([command, source, *extra, option, target])
    assert result.exit_code == 1
    assert f"{option} {target}: is an input of this command" in _one_line_error(result)
    assert _sha(target) == before and not (tmp_path / "r").exists()


def test_faults_predictions_into_a_folder_names_the_folder(tiny, run, tmp_path):
    (tmp_path / "dir").mkdir()
    result = _invoke(["eval", tiny[1], "-m", run, "--predictions", tmp_path / "dir"])
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert f"--predictions {tmp_path / 'dir'}: is a folder" in line and ".tmp" not in line


@pytest.mark.parametrize("command", ["prepare", "train", "eval"])
def test_faults_unwritable_output_is_refused_before_any_work(tiny, run, read_only, tmp_path, monkeypatch, command):
    import imgcls.prepare
    import imgcls.training.data

    def no_work(*args, **kwargs):
        raise AssertionError("the data was decoded before the output was checked")

    monkeypatch.setattr(imgcls.prepare, "check_files", no_work)
    monkeypatch.setattr(imgcls.training.data, "preload_images", no_work)
    target = read_only / "out.jsonl"
    args = {"prepare": ["prepare", tiny[0], "-o", target],
            "train": ["train", tiny[1], *TINY, "--out", tmp_path / "r", "-o", target],
            "eval": ["eval", tiny[1], "-m", run, "-o", target]}[command]
    result = _invoke(args)
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert str(target) in line and ".tmp" not in line and "Read-only file system" in line
    assert not (tmp_path / "r").exists()


def test_faults_train_out_not_empty_is_refused_before_the_data_is_read(tiny, tmp_path, monkeypatch):
    import imgcls.manifest

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    monkeypatch.setattr(imgcls.manifest, "read_all", lambda *a, **k: pytest.fail("read the data first"))
    result = _invoke(["train", tiny[1], *TINY, "--out", tmp_path / "r"])
    assert result.exit_code == 2 and "folder is not empty" in result.stderr
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_faults_full_disk_output_names_the_file_and_leaves_no_temp(tiny, full_disk):
    result = _invoke(["prepare", tiny[0], "-o", full_disk / "m.jsonl"])
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert f"{full_disk / 'm.jsonl'}: No space left on device" in line
    assert not (full_disk / "m.jsonl").exists() and _no_temp_files(full_disk)


def test_faults_full_disk_model_and_checkpoint_writes_name_the_file(full_disk):
    import torch

    from imgcls.models.io import save_model
    from imgcls.training.checkpoint import write_checkpoint
    from _eval_helpers import info_for, tiny_model

    model = tiny_model()
    with pytest.raises(OSError) as caught:
        save_model(full_disk / "model.safetensors", model, info_for())
    assert caught.value.filename == str(full_disk / "model.safetensors") and caught.value.errno == 28
    with pytest.raises(OSError) as caught:
        write_checkpoint(full_disk / "checkpoint.safetensors", ({"w": torch.zeros(4096)}, {"format": "x"}))
    assert caught.value.filename == str(full_disk / "checkpoint.safetensors")
    assert _no_temp_files(full_disk)


def test_faults_train_on_a_full_disk_names_the_file_and_leaves_no_run(tiny, full_disk):
    result = _invoke(["train", tiny[1], *TINY, "--out", full_disk / "r", "-o", full_disk.parent / "o.jsonl"])
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert f"{full_disk / 'r'}/" in line and "No space left on device" in line and "Safetensor" not in line
    assert not (full_disk / "r").exists() and _no_temp_files(full_disk)


def test_faults_atomic_writer_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    from imgcls import fsutil

    target = tmp_path / "out.jsonl"
    target.write_text("previous\n")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(fsutil.os, "replace", refuse)
    from imgcls.errors import OutputError

    with pytest.raises(OutputError) as caught:
        fsutil.write_output(target, "new\n", option="-o")
    assert str(caught.value) == f"-o {target}: Permission denied"
    assert target.read_text() == "previous\n" and _no_temp_files(tmp_path)


def test_faults_augment_output_absent_when_stdout_is_a_full_disk(tiny, full_disk, tmp_path):
    with open(full_disk / "aug.jsonl", "w") as stdout:
        proc = _spawn(["augment", tiny[1], "--out", tmp_path / "A", "--copies", "2"], tmp_path, stdout=stdout)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "A").exists()  # complete or absent: absent


def test_faults_augment_output_absent_when_the_reader_goes_away(tiny, tmp_path):
    proc = _spawn(["augment", tiny[1], "--out", tmp_path / "A", "--copies", "2"], tmp_path, stdout=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the manifest is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "Traceback" not in err and not (tmp_path / "A").exists()


@pytest.mark.parametrize("command", ["augment", "perturb"])
def test_faults_derived_images_absent_when_the_manifest_write_fails(tiny, tmp_path, command):
    from imgcls.augment import AugmentConfig, augment_manifest, pipeline_for
    from imgcls.manifest import read_all
    from imgcls.perturb import PerturbConfig, perturb_manifest

    header, records, reader = read_all(tiny[1])

    def failing_write(h, r):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        if command == "augment":
            augment_manifest(header, records, reader.resolve, tmp_path / "out",
                             AugmentConfig(pipeline_for("light", None), copies=1, jobs=1), emit=failing_write)
        else:
            perturb_manifest(header, records, reader.resolve, tmp_path / "out", PerturbConfig(["blur"], [1], jobs=1),
                             emit=failing_write)
    assert not (tmp_path / "out").exists()


# ============================================================================ 2-3. terminal safety
HOSTILE_NAMES = ["[/oops]", "[blink]x", "\x1b]0;TITLE\x07\x1b[2Jx", "two\nlines", "\u202eevil", "[red]r[/red]",
                 "tab\there", "bell\x07", "c1\x9bcsi"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_faults_console_prints_names_as_plain_visible_text(name, monkeypatch):
    from imgcls import console

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(console.settings, "verbosity", 0)  # not the -q of a CLI test run before in this process
    console.info(f"class {name} done")
    console.warn(name)
    table = console.table("class", "n")
    table.add_row(name, "1")
    console.print_renderable(table)
    out = stream.getvalue()
    visible = console.visible(name)
    assert f"class {visible} done" in out and f"warning: {visible}" in out
    assert not any(ch in out for ch in "\x1b\x07\x9b\u202e\t")
    assert out.count("\n") == 7 and len([line for line in out.splitlines() if visible in line]) == 3  # one row


@pytest.mark.parametrize("name", ["[blink]x", "\x1b]0;TITLE\x07\x1b[2Jx", "two\nlines", "\u202eevil", "[bold red]x"])
def test_faults_prepare_table_and_warnings_escape_class_names(tmp_path, name):
    from imgcls.console import visible

    root = make_class_folder(tmp_path / "src", per_class=3, size=8, classes=("circle", "square"))
    os.rename(root / "square", root / name)
    (root / name / "junk.png").write_bytes(b"junk")  # a reject line names the path too
    result = _invoke(["prepare", root, "-o", tmp_path / "m.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert ESC not in result.stderr and "\u202e" not in result.stderr and "\x07" not in result.stderr
    assert visible(name) in result.stderr and f"{visible(name)}/junk.png" in result.stderr
    assert name in read_jsonl((tmp_path / "m.jsonl").read_text())[0]["classes"]  # data stays exact


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A tiny model whose classes are hostile names, and its manifest."""
    root = tmp_path_factory.mktemp("hostile")
    folder = make_class_folder(root / "img", per_class=8, size=8)
    names = {"circle": "[/oops]", "square": "\x1b]0;TITLE\x07\x1b[2Jx", "stripe": "two\nlines"}
    manifest = _manifest_over(folder, root / "m.jsonl", labels=names)
    result = _invoke(["train", manifest, *TINY, "--out", root / "run", "-o", root / "passed.jsonl"])
    assert result.exit_code == 0, result.stderr
    return root / "run", manifest, names


def test_faults_eval_with_hostile_labels_writes_reports_and_escapes_tables(hostile_run, tmp_path):
    run_dir, manifest, names = hostile_run
    result = _invoke(["eval", manifest, "-m", run_dir, "-o", tmp_path / "e[/b].json",
                      "--predictions", tmp_path / "p.jsonl", "--errors", "5"])
    assert result.exit_code == 0, result.stderr
    assert ESC not in result.stderr and "\\x1b]0;TITLE" in result.stderr and "MarkupError" not in result.stderr
    report = json.loads((tmp_path / "e[/b].json").read_text())
    assert set(report["models"][0]["model"]["classes"]) == set(names.values())
    assert {r["label"] for r in read_jsonl((tmp_path / "p.jsonl").read_text())[1:]} == set(names.values())


def test_faults_predict_table_with_hostile_labels_and_paths(hostile_run, tmp_path):
    from imgcls.console import visible

    run_dir, _, names = hostile_run
    image = tmp_path / "b" / "q[" / "z]1.png"
    image.parent.mkdir(parents=True)
    make_class_folder(tmp_path / "x", per_class=1, size=8)
    os.rename(next((tmp_path / "x").rglob("*.png")), image)
    result = _invoke(["predict", image, "-m", run_dir, "--table", "--top-k", "3"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.stderr
    assert str(image) in result.stdout and ESC not in result.stdout
    assert all(visible(name) in result.stdout for name in names.values())
    assert len([line for line in result.stdout.splitlines() if str(image) in line]) == 1  # one row, not split


def test_faults_error_lines_escape_names(tmp_path):
    folder = make_class_folder(tmp_path / "src", per_class=2, size=8, classes=("circle",))
    records = [{"path": str(p), "label": "\x1b]0;TITLE\x07\x1b[2Jx", "split": "train"} for p in folder.rglob("*.png")]
    write_manifest(tmp_path / "m.jsonl", make_header(["circle"]), records)
    result = _invoke(["train", tmp_path / "m.jsonl", *TINY, "--out", tmp_path / "r"])
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert "labels not in the header's classes: \\x1b]0;TITLE\\x07\\x1b[2Jx" in line and ESC not in result.stderr


@pytest.mark.parametrize("command", ["augment", "perturb"])
def test_faults_out_folder_with_markup_in_its_name(tiny, tmp_path, command):
    out = tmp_path / "o[/b]"
    extra = ["--copies", "1", "--preset", "light"] if command == "augment" else ["--kinds", "blur", "--severity", "1"]
    result = _invoke([command, tiny[1], "--out", out, *extra])
    assert result.exit_code == 0, result.stderr
    assert str(out) in result.stderr and any(out.rglob("*.png"))


# ============================================================================ 4-5. signals and workers
# One policy for every command: SIGINT, SIGTERM and SIGHUP clean up and exit 128 + n.

def _kill_self_on(monkeypatch, module, name, signum, after: int = 2):
    """Make module.name send ``signum`` to this process on its ``after``-th call (in-process CLI runs)."""
    real = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_faults_augment_stopped_by_a_signal_leaves_nothing(tiny, tmp_path, monkeypatch, signum, code):
    import imgcls.derived

    _kill_self_on(monkeypatch, imgcls.derived, "save_derived", signum, after=3)
    result = _invoke(["augment", tiny[1], "--out", tmp_path / "A", "--copies", "2", "--jobs", "1"])
    assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "A").exists() and result.stdout == ""
    assert signal.getsignal(signum) is not imgcls.signals._handler  # the policy lives only while a command runs


def test_faults_perturb_stopped_by_sigterm_leaves_nothing(tiny, tmp_path, monkeypatch):
    import imgcls.derived

    (tmp_path / "P").mkdir()
    (tmp_path / "P" / "mine.txt").write_text("kept")
    _kill_self_on(monkeypatch, imgcls.derived, "save_derived", signal.SIGTERM, after=3)
    result = _invoke(["perturb", tiny[1], "--out", tmp_path / "P", "--force", "--kinds", "blur,shift", "--jobs", "1"])
    assert result.exit_code == 143
    assert sorted(p.name for p in (tmp_path / "P").iterdir()) == ["mine.txt"]


def test_faults_prepare_stopped_by_sigterm_writes_nothing(tiny, tmp_path, monkeypatch):
    import imgcls.prepare

    _kill_self_on(monkeypatch, imgcls.prepare, "_check_one", signal.SIGTERM, after=5)
    result = _invoke(["prepare", tiny[0], "-o", tmp_path / "m.jsonl", "--jobs", "1"])
    assert result.exit_code == 143 and "stopped by SIGTERM" in result.stderr
    assert not (tmp_path / "m.jsonl").exists() and _no_temp_files(tmp_path)


def test_faults_prepare_sample_stopped_by_sigterm_removes_its_staging_folder(tmp_path, monkeypatch):
    import imgcls.importers

    _kill_self_on(monkeypatch, imgcls.importers, "_write_chunk", signal.SIGTERM, after=1)
    result = _invoke(["prepare", "--sample", "digits", tmp_path / "dest", "--jobs", "1"])
    assert result.exit_code == 143
    assert list(tmp_path.iterdir()) == []  # neither DEST nor a hidden staging folder beside it


def test_faults_eval_stopped_by_sigterm_writes_no_report(tiny, run, tmp_path, monkeypatch):
    import imgcls.evaluation.inference

    _kill_self_on(monkeypatch, imgcls.evaluation.inference, "_load_one", signal.SIGTERM, after=2)
    result = _invoke(["eval", tiny[1], "-m", run, "-o", tmp_path / "r.json", "--workers", "0", "--no-cache"])
    assert result.exit_code == 143 and not (tmp_path / "r.json").exists()


def test_faults_train_stopped_by_sighup_is_resumable_with_exit_129(tiny, tmp_path, monkeypatch):
    from imgcls.training.loop import Trainer

    _kill_self_on(monkeypatch, Trainer, "train_epoch", signal.SIGHUP, after=2)
    result = _invoke(["train", tiny[1], *TINY, "--epochs", "4", "--out", tmp_path / "r", "-o", tmp_path / "o.jsonl"])
    assert result.exit_code == 129, result.stderr
    assert "stopped by signal 1" in result.stderr and "--resume" in result.stderr
    assert (tmp_path / "r" / "checkpoint.safetensors").exists() and not (tmp_path / "o.jsonl").exists()


def test_faults_sigterm_to_augment_with_workers_stops_them_and_leaves_nothing(digits, tmp_path):
    out = tmp_path / "A"
    proc = _spawn(["augment", digits[1], "--out", out, "--copies", "3", "--jobs", "2"], tmp_path,
                  stdout=subprocess.DEVNULL)
    assert _wait_for(lambda: any(out.glob(".partial-*/*/*.png")), 60), proc.stderr.read() if proc.poll() else ""
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and not out.exists()
    assert workers and _wait_for(lambda: not any(_alive(w) for w in workers), 10)


@pytest.mark.parametrize("command", ["augment", "prepare"])
def test_faults_kill_9_of_the_parent_kills_its_workers(digits, tmp_path, command):
    out = tmp_path / "A"
    if command == "augment":
        args, started = ["augment", digits[1], "--out", out, "--copies", "3", "--jobs", "2"], \
            lambda: any(out.glob(".partial-*/*/*.png"))
    else:
        args, started = ["prepare", digits[0], "--jobs", "2"], lambda: len(_children(proc.pid)) >= 2
    proc = _spawn(args, tmp_path, stdout=subprocess.DEVNULL)
    assert _wait_for(started, 60)
    workers = _children(proc.pid)
    assert workers
    proc.kill()
    proc.wait(timeout=30)
    assert _wait_for(lambda: not any(_alive(w) for w in workers), 10), "workers outlived their parent"
    if command == "augment":  # the next run removes the dead run's staging folder instead of refusing
        result = _invoke(["augment", digits[1], "--out", out, "--copies", "1", "--jobs", "1", "-q"])
        assert result.exit_code == 0, result.stderr
        assert not list(out.glob(".partial-*"))


def test_faults_worker_pool_dies_with_a_killed_parent(tmp_path):
    script = (
        "import os, signal, sys, time\n"
        "from imgcls.signals import worker_pool\n"
        "with worker_pool(2) as pool:\n"
        "    futures = [pool.submit(time.sleep, 60) for _ in range(2)]\n"
        "    time.sleep(0.5)\n"
        "    print(' '.join(str(p) for p in pool._processes), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=_proc_env(tmp_path))
    assert proc.returncode == -signal.SIGKILL
    workers = [int(p) for p in proc.stdout.split()]
    assert len(workers) == 2 and _wait_for(lambda: not any(_alive(w) for w in workers), 10)


def test_faults_sigterm_during_prepare_sample_in_a_real_process(tmp_path):
    proc = _spawn(["prepare", "--sample", "digits", tmp_path / "dest", "--jobs", "1"], tmp_path,
                  stdout=subprocess.DEVNULL)
    assert _wait_for(lambda: any(tmp_path.glob(".dest.imgcls-import-*/*/*.png")), 60)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert not (tmp_path / "dest").exists() and not list(tmp_path.glob(".dest.*"))


def test_faults_ctrl_c_before_the_cli_is_imported_prints_no_traceback(tmp_path):
    # The signal lands right after the handlers are installed, before click and the commands are imported.
    script = (
        "import os, signal, sys\n"
        "sys.argv = ['imgcls', '--help']\n"
        "import imgcls.signals as s\n"
        "real = s.install\n"
        "def install():\n"
        "    done = real()\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return done\n"
        "s.install = install\n"
        "from imgcls.__main__ import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=_proc_env(tmp_path))
    assert proc.returncode == 130 and proc.stderr.strip() == "imgcls: interrupted", proc.stderr


# ============================================================================ 7. hostile manifests
# Every hostile value is one line naming FILE:LINE, the same in every command (one reader).
HEADER_LINE = json.dumps(make_header(["circle", "square", "stripe"])).encode() + b"\n"
HOSTILE_LINES = {
    "deep-nesting": b'{"path": "a.png", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nul-in-path": b'{"path": "a\\u0000b.png", "label": "circle", "split": "train"}',
    "lone-surrogate": b'{"path": "a.png", "label": "\\ud800", "split": "train"}',
    "nan": b'{"path": "a.png", "label": "circle", "severity": NaN}',
    "infinity": b'{"path": "a.png", "label": "circle", "severity": Infinity}',
    "minus-infinity": b'{"path": "a.png", "label": "circle", "severity": -Infinity}',
    "overflow": b'{"path": "a.png", "label": "circle", "severity": 1e999}',
    "huge-integer": b'{"path": "a.png", "label": "circle", "fold": 1' + b"0" * 5000 + b"}",
    "invalid-utf8": b'{"path": "\xff\xfe.png", "label": "circle"}',
}
COMMANDS = {
    "prepare": lambda tmp, run: ["prepare"],
    "augment": lambda tmp, run: ["augment", "--out", tmp / "A"],
    "train": lambda tmp, run: ["train", *TINY, "--out", tmp / "r"],
    "eval": lambda tmp, run: ["eval", "-m", run],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", list(HOSTILE_LINES))
def test_faults_hostile_manifest_value_is_one_line_naming_file_and_line(run, tmp_path, case, command):
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(HEADER_LINE + HOSTILE_LINES[case] + b"\n")
    args = COMMANDS[command](tmp_path, run)
    result = _invoke([args[0], manifest, *args[1:]])
    assert result.exit_code == 1, result.stderr
    assert _one_line_error(result).startswith(f"Error: {manifest}:2: ")  # line 2 exactly, not line 1
    assert not (tmp_path / "A").exists() and not (tmp_path / "r").exists()


def test_faults_manifest_with_a_byte_order_mark_is_read(tiny, tmp_path):
    manifest = tmp_path / "bom.jsonl"
    manifest.write_bytes(b"\xef\xbb\xbf" + tiny[1].read_bytes())
    result = _invoke(["prepare", manifest, "-o", tmp_path / "out.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert read_jsonl((tmp_path / "out.jsonl").read_text())[0]["classes"] == ["circle", "square", "stripe"]


def test_faults_outputs_are_always_standard_json():
    from imgcls.manifest import dumps

    line = dumps({"path": "a.png", "prob": float("nan"), "probs": {"x": float("inf")}, "ok": 0.5})
    assert json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} written")) == \
        {"path": "a.png", "prob": None, "probs": {"x": None}, "ok": 0.5}


# ============================================================================ 8. cache sidecars
@pytest.mark.parametrize("sidecar", ["null", "[]", '"x"', "1e999", "42", '{"shape": "x", "dtype": 1, "crc32": []}',
                                     "{", '{"shape": [1], "dtype": "uint8", "crc32": 0}', "[" * 5000])
def test_faults_damaged_cache_sidecar_is_rebuilt_not_trusted(tmp_path, sidecar):
    from imgcls.cache import cached_array, load_entry, store_entry

    store_entry(tmp_path / "decoded", "k", np.arange(12, dtype=np.uint8).reshape(3, 4))
    (tmp_path / "decoded" / "k.json").write_text(sidecar)
    assert load_entry(tmp_path / "decoded", "k") is None
    rebuilt = cached_array(tmp_path, "decoded", "k", lambda: np.ones((2, 2), dtype=np.uint8))
    assert rebuilt.shape == (2, 2) and load_entry(tmp_path / "decoded", "k").shape == (2, 2)


def test_faults_eval_rebuilds_a_cache_entry_whose_sidecar_is_null(tiny, run, tmp_path):
    cache = tmp_path / "cache"
    first = _invoke(["eval", tiny[1], "-m", run, "--cache-dir", cache, "--json"])
    assert first.exit_code == 0, first.stderr
    for sidecar in (cache / "decoded").glob("*.json"):
        sidecar.write_text("null")
    second = _invoke(["eval", tiny[1], "-m", run, "--cache-dir", cache, "--json"])
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["models"][0]["metrics"] == json.loads(first.stdout)["models"][0]["metrics"]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_faults_imgcls_cache_that_is_a_file_is_refused_like_cache_dir(tiny, run, tmp_path, command):
    (tmp_path / "afile").write_text("x")
    args = ["train", tiny[1], "--arch", "cnn", "--width", "4", "--depth", "1", "--out", tmp_path / "r"] \
        if command == "train" else ["eval", tiny[1], "-m", run]
    result = _invoke(args, env={"IMGCLS_CACHE": str(tmp_path / "afile")})
    assert result.exit_code == 2
    assert f"$IMGCLS_CACHE={tmp_path / 'afile'}: is not a folder" in _one_line_error(result)


# ============================================================================ 9. model metadata
def _damaged_model(run: Path, tmp_path: Path, field: str | None = None, value=None, tensor=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = run / "model.safetensors"
    with safe_open(str(source), framework="pt") as fh:
        metadata = dict(fh.metadata())
    tensors = load_file(str(source))
    if field is not None:
        meta = json.loads(metadata["imgcls"])
        meta[field] = value
        metadata["imgcls"] = json.dumps(meta)
    if tensor is not None:
        name = next(k for k, t in tensors.items() if t.is_floating_point())
        tensors[name] = tensors[name].clone().fill_(tensor)
    path = tmp_path / "damaged.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


MODEL_DAMAGE = [
    ("classes", {"a": 1}), ("classes", [1, 2, 3]), ("classes", "abc"), ("classes", ["a", "a", "b"]), ("classes", []),
    ("image_size", 0), ("image_size", -5), ("image_size", 8.5), ("image_size", "big"), ("image_size", 1e9),
    ("std", [0, 0, 0]), ("std", [float("nan")] * 3), ("mean", [0.5]), ("channels", 2), ("trainable_blocks", "all"),
    ("trainable_blocks", 99), ("dropout", 2), ("arch", "nope"), ("arch_options", {"width": "big"}),
    ("config", {"epochs": "x"}), ("config", []),
]


@pytest.mark.parametrize("field,value", MODEL_DAMAGE, ids=[f"{f}={v!r}"[:40] for f, v in MODEL_DAMAGE])
def test_faults_damaged_model_metadata_is_one_line_naming_file_and_field(tiny, run, tmp_path, field, value):
    model = _damaged_model(run, tmp_path, field, value)
    image = next(tiny[0].rglob("*.png"))
    result = _invoke(["predict", image, "-m", model, "--json"])
    assert result.exit_code == 1, result.stderr
    line = _one_line_error(result)
    assert line.startswith(f"Error: {model}: model metadata \"{field}") and result.stdout == ""


def test_faults_model_with_nan_weights_is_refused_not_predicted_as_nan(tiny, run, tmp_path):
    model = _damaged_model(run, tmp_path, tensor=float("nan"))
    result = _invoke(["predict", next(tiny[0].rglob("*.png")), "-m", model, "--json"])
    assert result.exit_code == 1 and "NaN" not in result.stdout
    assert "the weights hold NaN or infinite values" in _one_line_error(result)


def test_faults_model_format_from_the_future_is_named(run, tmp_path):
    from imgcls.errors import ModelError
    from imgcls.models.io import read_model_info

    with pytest.raises(ModelError, match="model format 99 is newer"):
        read_model_info(_damaged_model(run, tmp_path, "format_version", 99))


# ---------------------------------------------------------------------------- checkpoints
def _damaged_checkpoint(run: Path, tmp_path: Path, edit) -> Path:
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata())
    tensors = load_file(str(path))
    state = json.loads(metadata["state"])
    edit(state, tensors)
    metadata["state"] = json.dumps(state)
    save_file(tensors, str(path), metadata=metadata)
    return copy


def _first(tensors, prefix):
    return next(k for k in tensors if k.startswith(prefix))


CHECKPOINT_DAMAGE = {
    "no-config": (lambda s, t: s.pop("config"), 'checkpoint field "config": is missing'),
    "no-rng": (lambda s, t: t.pop("rng.torch"), "'rng.torch' is missing or damaged"),
    "string-epoch": (lambda s, t: s.update(epoch="1"), 'checkpoint field "epoch"'),
    "other-classes": (lambda s, t: s.update(classes=["x", "y", "z"]), "classes (x, y, z) differ from the manifest's"),
    "wrong-shape": (lambda s, t: t.update({_first(t, "model."): t[_first(t, "model.")].reshape(-1)[:1].clone()}),
                    "has shape (1,), the configured model needs"),
    "history": (lambda s, t: s.update(history="x"), 'checkpoint field "history"'),
    "optimizer-shape": (lambda s, t: t.update({_first(t, "optim."): t[_first(t, "optim.")].reshape(-1)[:1].clone()}),
                        "optimizer state"),
    "config-type": (lambda s, t: s["config"].update(batch_size="x"), 'checkpoint field "config.batch_size"'),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_faults_damaged_checkpoint_on_resume_is_one_line_naming_file_and_field(run, tmp_path, case):
    edit, expected = CHECKPOINT_DAMAGE[case]
    copy = _damaged_checkpoint(run, tmp_path, edit)
    result = _invoke(["train", "--resume", copy, "--epochs", "3", "-o", tmp_path / "o.jsonl"])
    assert result.exit_code == 1, result.stderr
    line = _one_line_error(result)
    assert f"{copy / 'checkpoint.safetensors'}: " in line and expected in line


# ---------------------------------------------------------------------------- 10. histories
DAMAGED_HISTORY = {"not-utf8": b"\xff\xfe\n", "a-list": b"[1, 2]\n", "string-epoch": b'{"epoch": "x"}\n'}


@pytest.mark.parametrize("case", list(DAMAGED_HISTORY))
def test_faults_damaged_history_lines_are_skipped_with_a_warning(run, tmp_path, case):
    from imgcls.metadata import read_history

    path = tmp_path / "history.jsonl"
    good = (run / "history.jsonl").read_bytes()
    path.write_bytes(good + DAMAGED_HISTORY[case] + good)
    said = []
    rows = read_history(path, said.append)
    assert len(rows) == 2 and all(isinstance(r["epoch"], int) for r in rows)
    assert len(said) == 1 and said[0].startswith(f"{path}: damaged line skipped: line 2")


@pytest.fixture
def run_with_damaged_history(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    good = (run / "history.jsonl").read_bytes()
    (copy / "history.jsonl").write_bytes(good + b"".join(DAMAGED_HISTORY.values()))
    return copy


def test_faults_eval_report_survives_a_damaged_history(tiny, run_with_damaged_history, tmp_path):
    pytest.importorskip("matplotlib")
    result = _invoke(["eval", tiny[1], "-m", run_with_damaged_history, "--report", tmp_path / "rep"])
    assert result.exit_code == 0, result.stderr
    assert "damaged lines skipped" in result.stderr
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {"confusion_matrix.png", "reliability.png",
                                                               "learning_curves.png"}


def test_faults_finetune_survives_a_damaged_history(tiny, run_with_damaged_history, tmp_path):
    result = _invoke(["finetune", tiny[1], "-m", run_with_damaged_history, "--epochs", "1", "--workers", "0",
                      "--no-cache", "--out", tmp_path / "ft", "-o", tmp_path / "o.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert "damaged lines skipped" in result.stderr
    epochs = [h["epoch"] for h in read_jsonl((tmp_path / "ft" / "history.jsonl").read_text())]
    assert epochs == [1, 2]  # the parent's valid epoch, then the fine-tuning one


# ============================================================================ 11. imports
class _Evil:
    def __reduce__(self):
        return (os.mkdir, ("PWNED_BY_PICKLE",))


def _cifar_folder(folder: Path, names: list[bytes], data=None) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8) if data is None else data,
             b"labels": [0, 1, 0, 1]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    return folder


def test_faults_cifar_class_names_that_make_one_folder_are_refused(tmp_path):
    src = _cifar_folder(tmp_path / "cifar", [b"cat", b"cat "])
    result = _invoke(["prepare", "--import", "cifar", src, tmp_path / "out"])
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert "class names 'cat' (label 0) and 'cat ' (label 1) both make the folder name 'cat'" in line
    assert "--class-names" in line and not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_faults_cifar_pickle_never_runs_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = _cifar_folder(tmp_path / "evil", [b"a", b"b"], data=_Evil())
    result = _invoke(["prepare", "--import", "cifar", src, tmp_path / "out"])
    assert result.exit_code == 1 and "refusing to load posix.mkdir" in _one_line_error(result)
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def _idx_header(dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_faults_gzipped_idx_bomb_is_refused_without_inflating_it(tmp_path):
    import resource

    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as gz:
        gz.write(_idx_header((2, 28, 28)))
        for _ in range(400):  # 400 MiB of zeros after a header announcing 1,568 bytes
            gz.write(b"\0" * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    from imgcls.errors import DataError
    from imgcls.importers import read_idx

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(DataError, match="has trailing bytes"):
        read_idx(bomb)
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing inflated


def test_faults_idx_header_announcing_more_than_memory_is_refused(tmp_path):
    from imgcls.errors import DataError
    from imgcls.importers import read_idx

    path = tmp_path / "huge-idx3-ubyte"
    path.write_bytes(_idx_header((4_000_000_000, 1000, 1000)) + b"\0" * 64)
    with pytest.raises(DataError, match="more than the .* this machine can hold"):
        read_idx(path)


# ============================================================================ 12. bit depths
def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_faults_16_bit_png_is_scaled_to_8_bits(tmp_path):
    from imgcls.images import load_uint8

    values = np.linspace(0, 65535, 64, dtype=np.float64).round().astype(np.uint16).reshape(8, 8)
    path = _save(tmp_path / "deep.png", values)
    assert Image.open(path).mode.startswith("I")
    decoded = load_uint8(path, 8, 1)[:, :, 0]
    assert np.array_equal(decoded, ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    assert len(np.unique(decoded)) > 50  # a gradient, not 0/127/255


def test_faults_16_bit_tiff_and_int32_within_16_bits_are_scaled(tmp_path):
    from imgcls.images import load_uint8

    values = np.full((4, 4), 30000, dtype=np.uint16)
    assert load_uint8(_save(tmp_path / "a.tiff", values), 4, 1).max() == 117  # 30000 / 65535 * 255
    assert load_uint8(_save(tmp_path / "b.tiff", values.astype(np.int32)), 4, 1).max() == 117


def test_faults_float_tiff_0_to_1_is_scaled(tmp_path):
    from imgcls.images import load_uint8

    values = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    decoded = load_uint8(_save(tmp_path / "f.tiff", values), 4, 1)[:, :, 0]
    assert np.array_equal(decoded, np.rint(values * 255).astype(np.uint8))


@pytest.mark.parametrize("case", ["float-out-of-range", "float-nan", "int32-beyond-16-bits"])
def test_faults_images_without_an_8_bit_meaning_are_rejected_by_name(tmp_path, case):
    root = make_class_folder(tmp_path / "src", per_class=3, size=8)
    array = {"float-out-of-range": np.full((8, 8), 840.0, dtype=np.float32),
             "float-nan": np.full((8, 8), np.nan, dtype=np.float32),
             "int32-beyond-16-bits": np.full((8, 8), 409500, dtype=np.int32)}[case]
    _save(root / "circle" / "odd.tiff", array)
    result = _invoke(["prepare", root, "-o", tmp_path / "m.jsonl", "--rejects", tmp_path / "r.jsonl"])
    assert result.exit_code == 0, result.stderr
    rejects = read_jsonl((tmp_path / "r.jsonl").read_text())
    assert [r["path"] for r in rejects] == [str(root / "circle" / "odd.tiff")]
    assert rejects[0]["reason"] in ("unsupported-range", "bad-pixels")


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBA", "P-transparency", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGBa",
                                  "La", "I;16B"])
def test_faults_every_pillow_mode_decodes_for_both_channel_counts(tmp_path, mode):
    from imgcls.images import image_to_uint8

    if mode == "P-transparency":
        img = Image.new("P", (6, 6), 0)
        img.putpalette([10, 20, 30] * 256)
        img.info["transparency"] = 0
    elif mode == "I;16B":
        img = Image.new(mode, (6, 6), 65535)
    else:
        img = Image.new(mode, (6, 6))
    for channels in (1, 3):
        array = image_to_uint8(img, 4, channels)
        assert array.shape == (4, 4, channels) and array.dtype == np.uint8
    if mode in ("LA", "PA", "RGBA", "P-transparency", "RGBa", "La"):
        assert image_to_uint8(img, 4, 3).min() == 255  # fully transparent: flattened on white
    if mode == "I;16B":
        assert image_to_uint8(img, 4, 1).min() == 255


def test_faults_prepare_records_16_bit_images_and_train_reads_them_as_gray(tmp_path):
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c in ("dark", "light"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            base = 10000 if c == "dark" else 50000
            _save(root / c / f"{i}.png", (base + rng.integers(0, 5000, (8, 8))).astype(np.uint16))
    result = _invoke(["prepare", root, "-o", tmp_path / "m.jsonl", "--val", "2", "--test", "2"])
    assert result.exit_code == 0, result.stderr
    records = read_jsonl((tmp_path / "m.jsonl").read_text())[1:]
    assert {r["mode"] for r in records} == {"I;16"}
    trained = _invoke(["train", tmp_path / "m.jsonl", *TINY, "--out", tmp_path / "r", "-o", tmp_path / "o.jsonl"])
    assert trained.exit_code == 0, trained.stderr
    from imgcls.models.io import read_model_info

    assert read_model_info(tmp_path / "r").channels == 1


# ============================================================================ 13. sizes
@pytest.mark.parametrize("option,expected", [(["--depth", "50"], "too large to build"),
                                             (["--width", "100000"], "training needs about"),
                                             (["--image-size", "100000"], "training needs about")])
def test_faults_impossible_sizes_are_refused_with_a_figure_before_allocating(tiny, tmp_path, option, expected):
    args = ["train", tiny[1], "--arch", "cnn", "--epochs", "1", "--no-cache", "--out", tmp_path / "r", *option]
    result = _invoke(args)
    assert result.exit_code == 2
    line = _one_line_error(result)
    assert expected in line and option[0] in line and not (tmp_path / "r").exists()
    if "needs about" in line:
        assert "iB of memory" in line and "more than the" in line


def test_faults_memory_errors_give_no_batch_size_advice_out_of_context():
    from imgcls.errors import describe_error

    description = describe_error(MemoryError())
    assert description.code == 1 and "batch-size" not in description.message and "out of memory" in description.message


# ============================================================================ 14. FIFOs as model files
@contextlib.contextmanager
def _fifo_guard(fifo: Path):
    """A regression that blocks on the FIFO must fail, not hang the suite.

    A pure-Python reader is unblocked by a writer thread after 20 s (the test then fails on
    time); a reader inside native code that holds the GIL (safetensors) freezes every Python
    thread, so faulthandler's C watchdog ends the run after 90 s with a traceback instead.
    """
    import faulthandler

    done = threading.Event()

    def unblock():
        if done.wait(20):
            return
        while not done.wait(0.2):
            with contextlib.suppress(OSError):
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    faulthandler.dump_traceback_later(90, exit=True)
    started = time.monotonic()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        done.set()
    assert time.monotonic() - started < 15, "blocked on the FIFO"


@pytest.mark.parametrize("command", ["predict", "eval", "train --weights"])
def test_faults_model_file_that_is_a_fifo_is_refused_not_waited_on(tiny, tmp_path, command):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    args = {"predict": ["predict", next(tiny[0].rglob("*.png")), "-m", fifo],
            "eval": ["eval", tiny[1], "-m", fifo],
            "train --weights": ["train", tiny[1], *TINY, "--weights", fifo, "--out", tmp_path / "r"]}[command]
    with _fifo_guard(fifo):
        result = _invoke(args)
    assert result.exit_code == 1
    assert f"{fifo}: is a named pipe (FIFO)" in _one_line_error(result)


# ============================================================================ 15. usability
def test_faults_out_of_a_run_killed_in_its_first_epoch_is_reused(tiny, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "manifest.jsonl").write_text(tiny[1].read_text())
    stale = out / ".checkpoint.safetensors.999999999.0badcafe.tmp"  # a dead process's half-written checkpoint
    stale.write_bytes(b"\0" * 1000)
    resume = _invoke(["train", "--resume", out, "-o", tmp_path / "o.jsonl"])
    assert resume.exit_code == 1 and "start it again with the same command" in _one_line_error(resume)
    assert not stale.exists()
    stale.write_bytes(b"\0" * 1000)
    again = _invoke(["train", tiny[1], *TINY, "--out", out, "-o", tmp_path / "o.jsonl"])
    assert again.exit_code == 0, again.stderr
    assert "reusing the folder" in again.stderr and not stale.exists() and (out / "model.safetensors").exists()


def test_faults_resume_removes_a_killed_checkpoint_write(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    stale = copy / ".checkpoint.safetensors.999999999.0badcafe.tmp"
    stale.write_bytes(b"\0" * 1000)
    result = _invoke(["train", "--resume", copy, "--epochs", "2", "-o", tmp_path / "o.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert not stale.exists()


def test_faults_second_augment_on_a_live_partial_is_told_to_wait(tiny, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "A"
        (out / f".partial-{sleeper.pid}-0badcafe").mkdir(parents=True)
        result = _invoke(["augment", tiny[1], "--out", out])
        assert result.exit_code == 1
        line = _one_line_error(result)
        assert f"another imgcls process (pid {sleeper.pid}) is writing into this folder" in line
        assert "delete" not in line and (out / f".partial-{sleeper.pid}-0badcafe").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_faults_symlink_loop_is_reported_as_a_loop(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=3, size=8)
    (root / "circle" / "a.png").symlink_to(root / "circle" / "b.png")
    (root / "circle" / "b.png").symlink_to(root / "circle" / "a.png")
    result = _invoke(["prepare", root, "-o", tmp_path / "m.jsonl", "--rejects", tmp_path / "r.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert {r["reason"] for r in read_jsonl((tmp_path / "r.jsonl").read_text())} == {"symlink-loop"}


def test_faults_predict_reads_nul_separated_paths(tiny, run):
    images = sorted(tiny[0].rglob("*.png"))[:3]
    result = _invoke(["predict", "-", "-m", run, "--json"], input=b"\0".join(os.fsencode(p) for p in images) + b"\0")
    assert result.exit_code == 0, result.stderr
    assert [row["path"] for row in read_jsonl(result.stdout)] == [str(p) for p in images]


def test_faults_messages_are_cut_between_words():
    from imgcls.errors import brief

    text = "Weights only load failed. " + "This file can still be loaded if you trust its source. " * 10
    cut = brief(text, 120)
    assert len(cut) <= 124 and cut.endswith(" ...") and text.startswith(cut[:-4])
    assert cut[:-4].split()[-1] in text.split()  # the last word is whole


def test_faults_weights_file_with_pickled_code_is_refused_and_never_run(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(pickle.dumps({"x": _Evil()}, protocol=2))
    result = _invoke(["train", tiny[1], *TINY, "--weights", tmp_path / "w.pth", "--out", tmp_path / "r"])
    assert result.exit_code == 1
    line = _one_line_error(result)
    assert "refused: not a plain state dict" in line and "mkdir" in line  # what was refused, in whole words
    assert line.endswith("or convert it to .safetensors") and not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_faults_cache_entries_are_never_unpickled(tmp_path):
    from imgcls.cache import load_entry

    folder = tmp_path / "decoded"
    folder.mkdir()
    np.save(folder / "k.npy", np.array([_Evil()], dtype=object), allow_pickle=True)
    (folder / "k.json").write_text(json.dumps({"shape": [1], "dtype": "object", "crc32": 0}))
    os.chdir(tmp_path)
    assert load_entry(folder, "k") is None and not (tmp_path / "PWNED_BY_PICKLE").exists()


# ============================================================================ held: promises that held, kept
def test_faults_held_no_torn_model_file_when_a_write_fails(run, tmp_path, monkeypatch):
    import shutil

    import safetensors.torch

    from imgcls.models.io import load_model, read_model_info, save_model

    model_path = tmp_path / "model.safetensors"
    shutil.copy(run / "model.safetensors", model_path)
    model, info = load_model(model_path)
    before = _sha(model_path)
    real = safetensors.torch.save_file

    def torn(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:  # half the file, then the process "dies"
            fh.truncate(os.path.getsize(filename) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", torn)
    with pytest.raises(OSError) as caught:
        save_model(model_path, model, info)
    assert caught.value.filename == str(model_path)
    assert _sha(model_path) == before and read_model_info(model_path).classes == info.classes
    assert _no_temp_files(tmp_path)


def test_faults_held_prepare_never_hangs_on_fifos_devices_bombs_and_loops(tmp_path):
    root = make_class_folder(tmp_path / "src", per_class=3, size=8)
    os.mkfifo(root / "circle" / "fifo.png")
    (root / "circle" / "zero.png").symlink_to("/dev/zero")
    (root / "circle" / "gone.png").symlink_to(root / "missing.png")
    (root / "square" / "loop.png").symlink_to(root / "square" / "loop.png")
    Image.new("1", (9500, 9500)).save(root / "square" / "bomb.png")
    (root / "stripe" / "sub").symlink_to(root / "stripe")  # a folder loop
    started = time.monotonic()
    result = _invoke(["prepare", root, "-o", tmp_path / "m.jsonl", "--rejects", tmp_path / "r.jsonl"])
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - started < 30
    reasons = {Path(r["path"]).name: r["reason"] for r in read_jsonl((tmp_path / "r.jsonl").read_text())}
    assert reasons == {"fifo.png": "not-a-file", "zero.png": "not-a-file", "gone.png": "dangling-symlink",
                       "loop.png": "symlink-loop", "bomb.png": "decompression-bomb"}


@pytest.mark.slow
def test_faults_held_resume_after_kill_9_gives_bit_identical_weights(tiny, tmp_path):
    """kill -9 in the middle of a run; --resume ends with the weights of a run never killed (slow: ~10 s)."""
    import torch
    from safetensors.torch import load_file

    args = [*TINY, "--epochs", "24", "--patience", "0", "--augment", "light"]
    proc = _spawn(["train", tiny[1], *args, "--out", tmp_path / "cut", "-o", tmp_path / "b.jsonl"], tmp_path,
                  stdout=subprocess.DEVNULL)
    history = tmp_path / "cut" / "history.jsonl"
    assert _wait_for(lambda: history.exists() and history.read_text().count("\n") >= 3, 120)
    proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not finished
    resumed = _invoke(["train", "--resume", tmp_path / "cut", "-o", tmp_path / "c.jsonl"])
    assert resumed.exit_code == 0, resumed.stderr
    full = _invoke(["train", tiny[1], *args, "--out", tmp_path / "full", "-o", tmp_path / "a.jsonl"])
    assert full.exit_code == 0, full.stderr
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _no_temp_files(tmp_path / "cut")


@pytest.mark.slow
def test_faults_held_model_files_read_while_training_are_never_torn(tiny, tmp_path):
    """A reader polling model.safetensors while a run rewrites it every epoch always finds a whole file."""
    from imgcls.models.io import read_model_info

    proc = _spawn(["train", tiny[1], *TINY, "--epochs", "20", "--out", tmp_path / "r", "-o", tmp_path / "o.jsonl"],
                  tmp_path, stdout=subprocess.DEVNULL)
    model = tmp_path / "r" / "model.safetensors"
    loads = 0
    while proc.poll() is None:
        if model.exists():
            read_model_info(model)  # raises on a torn file
            loads += 1
        time.sleep(0.01)
    assert proc.returncode == 0, proc.stderr.read()
    assert loads > 0


BAD_OPTIONS = [
    ["prepare", "SRC", "--val", "1.5"], ["prepare", "SRC", "--val", "nan"], ["prepare", "SRC", "--test", "-1"],
    ["prepare", "SRC", "--val", "0.6", "--test", "0.6"], ["prepare", "SRC", "--folds", "1"],
    ["prepare", "SRC", "--classes", "a,,b"], ["prepare", "SRC", "--classes", "nope"], ["prepare", "SRC", "--top", "0"],
    ["prepare", "SRC", "--jobs", "-1"], ["prepare", "SRC", "--sample", "mnist"],
    ["augment", "M", "--out", "OUT", "--ops", "rotate:500"], ["augment", "M", "--out", "OUT", "--ops", "nope"],
    ["augment", "M", "--out", "OUT", "--ops", "flip@2"], ["augment", "M", "--out", "OUT", "--copies", "-1"],
    ["augment", "M"], ["augment", "M", "--out", "OUT", "--ops", "rotate", "--preset", "light"],
    ["perturb", "M", "--out", "OUT", "--kinds", "nope"], ["perturb", "M", "--out", "OUT", "--severity", "9"],
    ["perturb", "M", "--out", "OUT", "--severity", "3-1"], ["perturb", "M"],
    ["train", "M", "--epochs", "0"], ["train", "M", "--lr", "0"], ["train", "M", "--arch", "resnet9000"],
    ["train", "M", "--batch-size", "0"], ["train", "M", "--dropout", "1.5"], ["train", "M", "--workers", "many"],
    ["train", "M", "--device", "tpu"], ["train", "M", "--arch", "mobilenet_v2", "--width", "8"],
    ["eval", "M", "--split", "holdout"], ["eval", "M", "--bins", "0"], ["eval", "M", "--top-k", "0"],
    ["eval", "M", "--cache-dir", "C", "--no-cache"], ["predict", "IMG", "--top-k", "0"],
    ["predict", "IMG", "--json", "--table"], ["finetune", "M", "--unfreeze", "some"],
]


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=[" ".join(a[0:1] + a[2:]) for a in BAD_OPTIONS])
def test_faults_held_bad_option_values_are_precise_usage_errors(tiny, run, tmp_path, args):
    names = {"SRC": str(tiny[0]), "M": str(tiny[1]), "OUT": str(tmp_path / "out"), "C": str(tmp_path / "c"),
             "IMG": str(next(tiny[0].rglob("*.png")))}
    args = [names.get(a, a) for a in args]
    if args[0] in ("eval", "predict"):
        args += ["-m", str(run)]
    result = _invoke(args)
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert not (tmp_path / "out").exists()
