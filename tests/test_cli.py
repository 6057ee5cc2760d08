"""Conventions every command shares: help, version, errors, no torch on the fast path."""

from __future__ import annotations

import os
import subprocess
import sys

import imgcls


def run_imgcls(*args, input=None, env=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "imgcls", *args], input=input, capture_output=True,
                          text=True, env=full_env, timeout=120)


def test_cli_version(invoke):
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert imgcls.__version__ in result.stdout


def test_cli_help_lists_commands_in_pipeline_order(invoke):
    result = invoke(["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    order = ["prepare", "augment", "train", "finetune", "eval", "perturb", "predict"]
    present = [c for c in order if c in listed]
    assert present == [c for c in listed if c in order]


def test_cli_unknown_command_is_usage_error(invoke):
    result = invoke(["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.stderr


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom imgcls.cli import cli\n"
            "try:\n    cli.main(['--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'torchvision' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False False False"


def test_cli_python_dash_m_works():
    result = run_imgcls("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("imgcls, version")


def test_cli_domain_error_is_one_line_without_traceback(tmp_path):
    from click.testing import CliRunner

    from imgcls.cli import ImgclsGroup
    from imgcls.errors import DataError, UsageProblem

    import click

    group = ImgclsGroup(name="t", commands={})

    @group.command("bad")
    def bad():
        raise DataError(f"{tmp_path}/m.jsonl:3: broken")

    @group.command("usage")
    def usage():
        raise UsageProblem("--val must be below 1")

    @group.command("crash")
    def crash():
        raise ZeroDivisionError("division by zero")

    @group.command("nofolder")
    def nofolder():
        (tmp_path / "file").write_text("x")
        (tmp_path / "file" / "sub").mkdir()

    # these test commands are added to a fresh group, so list/get must see them
    group.list_commands = lambda ctx: ["bad", "usage", "crash", "nofolder"]
    group.get_command = lambda ctx, name: click.Group.get_command(group, ctx, name)
    runner = CliRunner()
    res = runner.invoke(group, ["bad"])
    assert res.exit_code == 1
    assert res.stderr.strip() == f"Error: {tmp_path}/m.jsonl:3: broken"
    res = runner.invoke(group, ["usage"])
    assert res.exit_code == 2
    assert "--val must be below 1" in res.stderr
    res = runner.invoke(group, ["crash"])
    assert res.exit_code == 1
    assert "Traceback" not in res.stderr
    assert "internal error: ZeroDivisionError" in res.stderr
    assert "--debug" in res.stderr
    res = runner.invoke(group, ["nofolder"])
    assert res.exit_code == 1
    assert res.stderr.strip() == f"Error: {tmp_path}/file/sub: Not a directory"


def test_cli_output_folder_not_empty_is_one_error_everywhere(invoke, tmp_path):
    """prepare DEST, augment/perturb/train --out: the same error type, exit status 2, the user's file kept."""
    from conftest import make_class_folder

    from imgcls.errors import OutputNotEmpty, UsageProblem

    assert issubclass(OutputNotEmpty, UsageProblem)
    manifest = tmp_path / "m.jsonl"
    made = invoke(["prepare", make_class_folder(tmp_path / "data", per_class=2, size=8), "--test", "0.5",
                   "-o", manifest])
    assert made.exit_code == 0, made.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    for args in (["prepare", "--sample", "digits", full], ["augment", manifest, "--out", full],
                 ["perturb", manifest, "--out", full], ["train", manifest, "--out", full]):
        result = invoke(args)
        assert result.exit_code == 2 and "not empty" in result.stderr, (args, result.stderr)
        assert [p.name for p in full.iterdir()] == ["mine.txt"]
