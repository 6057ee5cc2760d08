"""DDP under torchrun: 2 gloo processes on the CPU (tiny data, one epoch), plus the rank logic in-process.

Each torchrun job is a real ``python -m torch.distributed.run --standalone --nproc_per_node 2
-m imgcls ...`` (standalone: torchrun picks a free port itself), with OMP_NUM_THREADS=1 and a
timeout, so a hang fails the test instead of the suite. The IMGCLS_DEBUG_SHARDS hook makes
each rank write the training indices it saw and a digest of its final weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_class_folder, read_jsonl
from safetensors.torch import load_file

TIMEOUT_S = 180
TINY = ["--arch", "cnn", "--width", "4", "--depth", "2", "--device", "cpu"]


def torchrun(args: list[str], cwd: Path, cache: Path, nproc: int = 2, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    full_env.update(OMP_NUM_THREADS="1", IMGCLS_CACHE=str(cache), NO_COLOR="1", **env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "imgcls", *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 classes x 10 images of 8 px: 24 train (12 per rank), 3 val (2 + 1: uneven shards), 3 test."""
    from click.testing import CliRunner

    from imgcls.cli import cli

    root = tmp_path_factory.mktemp("ddp-data")
    make_class_folder(root / "shapes", per_class=10, size=8)
    result = CliRunner().invoke(cli, ["prepare", str(root / "shapes"), "--val", "3", "--test", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    (root / "data.jsonl").write_text(result.stdout, encoding="utf-8")
    return root / "data.jsonl"


@pytest.fixture(scope="module")
def ddp_train(data, tmp_path_factory):
    """One 2-process training run of a scratch cnn (the whole model under DDP)."""
    work = tmp_path_factory.mktemp("ddp-train")
    t0 = time.perf_counter()
    proc = torchrun(["train", data, *TINY, "--batch-size", "4", "--epochs", "1", "--out", work / "run"],
                    cwd=work, cache=work / "cache", IMGCLS_DEBUG_SHARDS=str(work / "shards"))
    return work, proc, time.perf_counter() - t0


def test_distributed_train_two_ranks_shard_the_data_and_agree(ddp_train, data):
    work, proc, seconds = ddp_train
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((work / f"shards.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen = [set(r["epochs"][0]) for r in ranks]
    assert len(ranks[0]["epochs"][0]) == len(ranks[1]["epochs"][0]) == 12
    assert not seen[0] & seen[1], "both ranks trained on the same images"
    assert seen[0] | seen[1] == set(range(24)), "together the ranks saw every training image once"
    # DDP kept the weights (and BatchNorm buffers) identical on both ranks
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]


def test_distributed_train_only_rank_zero_writes(ddp_train, data):
    work, proc, _ = ddp_train
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = work / "run"
    # one run folder, nothing under runs/ from another rank
    assert sorted(p.name for p in work.iterdir() if p.is_dir() and not p.is_symlink()) == ["cache", "run"]
    assert (work / "latest").resolve() == run.resolve()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.safetensors", "history.jsonl",
                                                      "learning_curves.png", "manifest.jsonl", "model.safetensors"]
    # exactly one manifest on stdout: one header, every record once
    lines = read_jsonl(proc.stdout)
    incoming = read_jsonl(data.read_text())
    assert [line.get("format") for line in lines].count("imgcls-manifest") == 1
    assert lines[1:] == incoming[1:]
    assert lines[0]["model"] == str((run / "model.safetensors").resolve())
    # one progress line per epoch: the other rank is silent
    assert proc.stderr.count("epoch 1/1") == 1, proc.stderr
    assert "2 processes (DDP, gloo)" in proc.stderr
    # the model file is a single-process one: no DDP "module." prefix, loads as usual
    from imgcls.models.io import load_model

    tensors = load_file(str(run / "model.safetensors"))
    assert tensors and not any(k.startswith("module.") for k in tensors)
    model, info = load_model(run / "model.safetensors")
    assert info.classes == ["circle", "square", "stripe"]
    history = read_jsonl((run / "history.jsonl").read_text())
    assert len(history) == 1 and "max_memory_mib" not in history[0]  # GPU memory is reported on CUDA only


def test_distributed_frozen_head_matches_one_process(data, tmp_path, invoke):
    """--freeze: sharded feature extraction + all-gather, DDP on the head, sharded validation.

    2 ranks x batch 4 see exactly the images of one process's batch of 8 at every step (the shard
    takes every other index of the same permutation), so without dropout the weights must agree.
    """
    args = [*TINY, "--freeze", "--head", "linear", "--dropout", "0", "--epochs", "2"]
    proc = torchrun(["train", data, *args, "--batch-size", "4", "--out", tmp_path / "ddp"],
                    cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = invoke(["train", data, *args, "--batch-size", "8", "--out", tmp_path / "one"])
    assert single.exit_code == 0, single.stderr
    a, b = load_file(str(tmp_path / "ddp" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    assert sorted(a) == sorted(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    ha = read_jsonl((tmp_path / "ddp" / "history.jsonl").read_text())
    hb = read_jsonl((tmp_path / "one" / "history.jsonl").read_text())
    for x, y in zip(ha, hb):  # validation reduced over uneven shards (2 + 1 images) = one process's
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-5)
        assert x["val_acc"] == y["val_acc"] and x["train_acc"] == y["train_acc"]


@pytest.mark.slow
def test_distributed_frozen_logreg_head_matches_one_process(data, tmp_path, invoke):
    """A closed-form head under torchrun: gathered features, the same fit on every rank, rank 0 writes."""
    args = [*TINY, "--freeze", "--head", "logreg"]
    proc = torchrun(["train", data, *args, "--out", tmp_path / "ddp"], cwd=tmp_path, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = invoke(["train", data, *args, "--out", tmp_path / "one"])
    assert single.exit_code == 0, single.stderr
    a, b = load_file(str(tmp_path / "ddp" / "model.safetensors")), load_file(str(tmp_path / "one" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    assert len(read_jsonl((tmp_path / "ddp" / "history.jsonl").read_text())) == 1


def test_distributed_failing_rank_ends_the_job_with_its_message(data, tmp_path):
    t0 = time.perf_counter()
    proc = torchrun(["train", data, *TINY, "--batch-size", "4", "--epochs", "1", "--out", tmp_path / "run"],
                    cwd=tmp_path, cache=tmp_path / "cache", IMGCLS_DEBUG_FAIL_RANK="1")
    assert proc.returncode != 0
    assert time.perf_counter() - t0 < 120  # no wait for the collective timeout
    assert "imgcls train: rank 1 failed: RuntimeError: IMGCLS_DEBUG_FAIL_RANK=1" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists()  # rank 0 removed the run folder that never got a model


def test_distributed_finetune_and_eval_under_torchrun(ddp_train, tmp_path):
    work, trained, _ = ddp_train
    assert trained.returncode == 0, trained.stderr[-3000:]
    stream = tmp_path / "trained.jsonl"
    stream.write_text(trained.stdout, encoding="utf-8")
    proc = torchrun(["finetune", stream, "--unfreeze", "1", "--epochs", "1", "--device", "cpu", "--out", tmp_path / "ft"],
                    cwd=tmp_path, cache=tmp_path / "cache", IMGCLS_DEBUG_SHARDS=str(tmp_path / "ft-shards"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"ft-shards.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    lines = read_jsonl(proc.stdout)
    assert lines[0]["model"] == str((tmp_path / "ft" / "model.safetensors").resolve())
    assert len(lines) == len(read_jsonl(trained.stdout))
    history = read_jsonl((tmp_path / "ft" / "history.jsonl").read_text())
    assert [h["phase"] for h in history] == ["train", "finetune"]
    # eval: rank 0 evaluates alone, one JSON document on stdout
    (tmp_path / "ft.jsonl").write_text(proc.stdout, encoding="utf-8")
    ev = torchrun(["eval", tmp_path / "ft.jsonl", "--json", "--device", "cpu"], cwd=tmp_path, cache=tmp_path / "cache")
    assert ev.returncode == 0, ev.stderr[-3000:]
    doc = json.loads(ev.stdout)
    assert doc["models"][0]["metrics"]["accuracy"] is not None and doc["n_selected"] == 3


# -- in-process: the rank logic without launching anything ---------------------------------------

def test_distributed_shard_follows_distributed_sampler(monkeypatch):
    from torch.utils.data import DistributedSampler

    from imgcls.training import distributed

    for world in (2, 3):
        for n in (1, 2, 7, 9, 10):
            order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
            union: list[int] = []
            for rank in range(world):
                monkeypatch.setattr(distributed, "_info", distributed.DistInfo(rank=rank, world_size=world))
                mine = distributed.shard(order)
                sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=False)
                assert mine.tolist() == [int(order[i]) for i in sampler]
                assert len(mine) == distributed.shard_length(n)
                union += distributed.shard(order, pad=False).tolist()
            assert sorted(union) == list(range(n))  # unpadded shards: every index exactly once


def test_distributed_stdin_manifest_refused_under_torchrun(monkeypatch):
    """N processes sharing one stdin pipe would each read a piece of the manifest."""
    from imgcls.commands._ranks import refuse_stdin_manifest
    from imgcls.errors import UsageProblem

    refuse_stdin_manifest("-", "train")  # alone: stdin is fine
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    refuse_stdin_manifest("data.jsonl", "train")
    with pytest.raises(UsageProblem, match="under torchrun every process reads the manifest"):
        refuse_stdin_manifest("-", "train")


def test_distributed_eval_other_ranks_exit_quietly(invoke, data):
    result = invoke(["eval", data, "--json"], env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert result.exit_code == 0 and result.stdout == ""
