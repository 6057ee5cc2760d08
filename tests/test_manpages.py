"""Man pages: the committed pages are current, they render without warnings, and their
EXAMPLES run (documentation that cannot lie).

The ``$ `` lines of every ``man/src/<page>.md`` EXAMPLES section run with bash, in order, in a
sandbox folder, with the venv's bin folder first on PATH. The sandbox holds the names the
examples are written around:

* ``digits/``: the first 10 images of each class of ``imgcls prepare --sample digits``
  (same file names, so ``digits/3/00003.png`` exists), small enough that training on it takes
  a second or two;
* ``digits.jsonl``: ``imgcls prepare digits/``;
* ``runs/small`` and ``runs/cnn`` (tiny scratch CNNs trained on digits.jsonl); ``runs/latest``
  points at ``runs/cnn``; ``trained.jsonl`` is what train printed for runs/cnn;
* ``OMP_NUM_THREADS=1`` (a shared CPU; see example_env);
* a torch hub cache (``TORCH_HOME``) holding *randomly initialised* mobilenet_v2 weights under
  the file name torchvision's download would have. There is no network here; the examples that
  start from pretrained weights run the real code path (cache look-up, loading, freezing), only
  the numbers are meaningless.

A page whose examples make ``digits/`` themselves (``--sample digits digits/``) starts from an
empty folder instead. Pages whose examples use jq are skipped when jq is not installed.
Examples keep their own settings small where it is honest for 8x8 digits (``--epochs 5``,
``--image-size 32``); the sandbox's small data set does the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls import manpage

REPO = Path(__file__).resolve().parent.parent
MAN_DIR = REPO / "man"
SRC_DIR = MAN_DIR / "src"
VENV_BIN = Path(sys.executable).parent
PAGES = sorted(p.name for p in MAN_DIR.iterdir() if re.fullmatch(r"imgcls(-[a-z]+)?\.[15]", p.name))
SOURCES_WITH_EXAMPLES = sorted(p.stem for p in SRC_DIR.glob("*.md") if manpage.examples_of(p.read_text(encoding="utf-8")))
PER_CLASS = 10
LINE_TIMEOUT_S = 180


# ---------------------------------------------------------------- generated pages are current


def test_manpages_committed_pages_are_current():
    pages = manpage.generate(SRC_DIR)
    stale = [name for name, text in pages.items()
             if not (MAN_DIR / name).exists() or (MAN_DIR / name).read_text(encoding="utf-8") != text]
    assert not stale, f"stale man pages {stale}: regenerate with `make man` (python -m imgcls.manpage --write man)"
    assert manpage.main(["--check", str(MAN_DIR)]) == 0


def test_manpages_check_detects_a_stale_page(tmp_path, capsys):
    assert manpage.main(["--write", str(tmp_path), "--src", str(SRC_DIR)]) == 0
    assert manpage.main(["--check", str(tmp_path), "--src", str(SRC_DIR)]) == 0
    page = tmp_path / "imgcls-train.1"
    page.write_text(page.read_text(encoding="utf-8").replace("imgcls train", "imgcls trian", 1), encoding="utf-8")
    assert manpage.main(["--check", str(tmp_path), "--src", str(SRC_DIR)]) == 1
    assert "stale: " in capsys.readouterr().err


def test_manpages_every_command_has_a_page_with_examples():
    from imgcls.cli import cli
    import click

    ctx = click.Context(cli, info_name="imgcls")
    expected = {f"imgcls-{name}.1" for name in cli.list_commands(ctx)} | {"imgcls.1", "imgcls-manifest.5"}
    assert expected <= set(PAGES), f"missing pages: {sorted(expected - set(PAGES))}"
    for name in cli.list_commands(ctx):
        source = SRC_DIR / f"imgcls-{name}.md"
        assert source.exists(), f"{source} is missing"
        text = source.read_text(encoding="utf-8")
        runs_it = [line for line in manpage.examples_of(text) if f"imgcls {name}" in line]
        assert len(runs_it) >= 2, f"{source}: EXAMPLES should run imgcls {name} at least twice"
        sections = manpage.parse_source(text)
        for section in ("DESCRIPTION", "EXAMPLES", "EXIT STATUS", "ENVIRONMENT"):
            assert sections.get(section), f"{source}: no {section} section"


def test_manpages_train_page_has_scaling_out_section():
    text = (MAN_DIR / "imgcls-train.1").read_text(encoding="utf-8")
    assert ".SH SCALING OUT" in text
    assert "torchrun" in text
    # the hand-written sections come after the generated DESCRIPTION and before OPTIONS
    assert text.index(".SH DESCRIPTION") < text.index(".SH SCALING OUT") < text.index(".SH OPTIONS")


# ---------------------------------------------------------------- pages render


def _render_command(page: Path) -> list[str] | None:
    if shutil.which("man"):
        return ["man", "-l", "--warnings", str(page)]
    if shutil.which("groff"):
        return ["groff", "-man", "-Tutf8", "-ww", str(page)]
    return None


@pytest.mark.parametrize("page", PAGES)
def test_manpages_render_without_warnings(page):
    command = _render_command(MAN_DIR / page)
    if command is None:
        pytest.skip("neither man nor groff is installed")
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat", "LC_ALL": "C.UTF-8"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"{page}: warnings while rendering:\n{result.stderr}"
    text = result.stdout
    assert "NAME" in text
    if page.endswith(".1"):
        assert "SYNOPSIS" in text and "OPTIONS" in text
    stem = page.rsplit(".", 1)[0]
    assert stem in text
    source = SRC_DIR / f"{stem}.md"
    if source.exists():
        for section in manpage.parse_source(source.read_text(encoding="utf-8")):
            assert section in text, f"{page}: section {section} missing from the rendered page"
    # no roff left unrendered (an unescaped request or font change shows up as text)
    assert "\\f" not in text and "\n.TP" not in text and "\n.PP" not in text


# ---------------------------------------------------------------- EXAMPLES run


def _run(command: list[str] | str, cwd: Path, env: dict[str, str], shell: bool = False) -> subprocess.CompletedProcess:
    args = ["bash", "-o", "pipefail", "-c", str(command)] if shell else command
    return subprocess.run(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=LINE_TIMEOUT_S)


@pytest.fixture(scope="module")
def example_env(tmp_path_factory) -> dict[str, str]:
    """PATH with the venv first; caches inside the test's temporary folders; no colour, no display."""
    base = tmp_path_factory.mktemp("man-env")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGCLS_", "TORCH_HOME"))}
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "IMGCLS_CACHE": str(base / "imgcls-cache"),
        "TORCH_HOME": str(base / "torch"),
        "MPLBACKEND": "Agg",
        "NO_COLOR": "1",
        "COLUMNS": "100",
        # the test machine is shared: one OpenMP thread per process; with two, tiny models spend
        # most of their time with threads waiting on each other (measured: 5 epochs 9.6 s -> 4.1 s)
        "OMP_NUM_THREADS": "1",
    })
    _fake_hub_weights(Path(env["TORCH_HOME"]), "mobilenet_v2")
    return env


def _fake_hub_weights(torch_home: Path, arch: str) -> None:
    """Randomly initialised weights where torchvision's download would put the real ones."""
    import torch
    import torchvision

    from imgcls.models.weights import cache_file_for, torchvision_weights

    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        target = cache_file_for(torchvision_weights(arch))
    finally:
        if old is None:
            os.environ.pop("TORCH_HOME")
        else:
            os.environ["TORCH_HOME"] = old
    assert str(target).startswith(str(torch_home))
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(getattr(torchvision.models, arch)().state_dict(), target)


@pytest.fixture(scope="module")
def example_base(tmp_path_factory, example_env) -> Path:
    """digits/ (10 per class), digits.jsonl, runs/small, runs/cnn (= runs/latest), trained.jsonl."""
    from imgcls.importers import import_sample

    sample = tmp_path_factory.mktemp("sample") / "digits"
    import_sample("digits", sample)
    base = tmp_path_factory.mktemp("man-base")
    for class_dir in sorted(p for p in sample.iterdir() if p.is_dir()):
        (base / "digits" / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:PER_CLASS]:
            shutil.copy2(image, base / "digits" / class_dir.name / image.name)
    assert (base / "digits" / "3" / "00003.png").exists()
    result = _run("imgcls prepare digits/ -q > digits.jsonl", base, example_env, shell=True)
    assert result.returncode == 0, result.stderr
    # in-process: this process has imported torch already (for the hub weights)
    from click.testing import CliRunner

    from imgcls.cli import cli

    for name, options, output in (("small", ["--width", "8", "--depth", "2", "--epochs", "2"], "small.jsonl"),
                                  ("cnn", ["--width", "16", "--depth", "3", "--epochs", "3"], "trained.jsonl")):
        args = ["train", str(base / "digits.jsonl"), "--arch", "cnn", *options, "--out", str(base / "runs" / name),
                "-o", str(base / output), "-q", "--threads", "1"]
        trained = CliRunner().invoke(cli, args, env={"IMGCLS_CACHE": example_env["IMGCLS_CACHE"]})
        assert trained.exit_code == 0, f"sandbox set-up failed: imgcls {' '.join(args)}\n{trained.output}"
    (base / "small.jsonl").unlink()
    assert (base / "runs" / "latest").resolve() == (base / "runs" / "cnn").resolve()
    return base


def _sandbox_for(page_source: str, base: Path, dest: Path) -> Path:
    """A private copy of the base sandbox (manifests rewritten to point into it), or an empty folder."""
    if "--sample digits digits/" in page_source:
        dest.mkdir()
        return dest
    shutil.copytree(base, dest, symlinks=True)
    for manifest in dest.rglob("*.jsonl"):
        text = manifest.read_text(encoding="utf-8")
        if str(base) in text:
            manifest.write_text(text.replace(str(base), str(dest)), encoding="utf-8")
    return dest


@pytest.mark.parametrize("source", SOURCES_WITH_EXAMPLES)
def test_manpages_examples_run(source, example_base, example_env, tmp_path):
    text = (SRC_DIR / f"{source}.md").read_text(encoding="utf-8")
    lines = manpage.examples_of(text)
    if any(re.search(r"(^|[|;&(]\s*)jq\b", line) for line in lines) and shutil.which("jq") is None:
        pytest.skip(f"{source}: its examples use jq, which is not installed")
    sandbox = _sandbox_for(text, example_base, tmp_path / "sandbox")
    for number, line in enumerate(lines, 1):
        result = _run(line, sandbox, example_env, shell=True)
        assert result.returncode == 0, (
            f"{source}.md example {number} failed with status {result.returncode}:\n$ {line}\n"
            f"--- stderr (end) ---\n{result.stderr[-3000:]}"
        )
