"""The decoded-image cache: hits, invalidation, damage detection, location."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_class_folder, make_image
from imgcls import cache
from imgcls.images import ImageRejected


@pytest.fixture
def pngs(tmp_path) -> list[Path]:
    make_class_folder(tmp_path / "src", per_class=4, size=12)
    return sorted((tmp_path / "src").rglob("*.png"))


def test_cache_hit_returns_identical_memory_mapped_array(tmp_path, pngs):
    first = cache.load_decoded(pngs, 10, 3, cache_dir=tmp_path / "c")
    assert first.shape == (12, 10, 10, 3) and first.dtype == np.uint8
    second = cache.load_decoded(pngs, 10, 3, cache_dir=tmp_path / "c")
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(first, second)
    assert len(list((tmp_path / "c" / "decoded").glob("*.npy"))) == 1


def test_cache_key_depends_on_size_channels_and_file_content(tmp_path, pngs):
    c = tmp_path / "c"
    a = cache.load_decoded(pngs, 10, 3, cache_dir=c)
    cache.load_decoded(pngs, 10, 1, cache_dir=c)
    cache.load_decoded(pngs, 8, 3, cache_dir=c)
    assert len(list((c / "decoded").glob("*.npy"))) == 3
    # a file replaced since the cache was written is decoded again, not served stale
    make_image(pngs[0], "stripe", size=12, seed=99)
    os.utime(pngs[0], ns=(1, 1))
    b = cache.load_decoded(pngs, 10, 3, cache_dir=c)
    assert not np.array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1:], b[1:])


def test_cache_damaged_entry_is_rebuilt(tmp_path, pngs):
    c = tmp_path / "c"
    good = np.array(cache.load_decoded(pngs, 10, 3, cache_dir=c))
    entry = next((c / "decoded").glob("*.npy"))
    raw = bytearray(entry.read_bytes())
    raw[-3] ^= 0xFF
    entry.write_bytes(bytes(raw))
    np.testing.assert_array_equal(cache.load_decoded(pngs, 10, 3, cache_dir=c), good)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    np.testing.assert_array_equal(cache.load_decoded(pngs, 10, 3, cache_dir=c), good)


def test_cache_disabled_writes_nothing(tmp_path, pngs):
    cache.load_decoded(pngs, 10, 3, cache_dir=None)
    assert not (tmp_path / "c").exists()


def test_cache_unreadable_image_names_the_file(tmp_path, pngs):
    pngs[2].write_bytes(b"not a png")
    with pytest.raises(ImageRejected, match=str(pngs[2])):
        cache.load_decoded(pngs, 10, 3, cache_dir=tmp_path / "c")


def test_cache_parallel_decode_matches_serial(tmp_path):
    make_class_folder(tmp_path / "src", per_class=100, size=12)
    paths = sorted((tmp_path / "src").rglob("*.png"))
    serial = cache.decode_images(paths, 10, 1, jobs=1)
    parallel = cache.decode_images(paths, 10, 1, jobs=2)
    np.testing.assert_array_equal(serial, parallel)


def test_cache_location_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "x"))
    assert cache.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("IMGCLS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert cache.default_cache_dir() == tmp_path / "xdg" / "imgcls"
    assert cache.resolve_cache_dir("/explicit") == Path("/explicit")
    assert cache.resolve_cache_dir("/explicit", enabled=False) is None


def test_cache_entry_written_by_train_serves_eval(invoke, image_folder, tmp_path):
    c = tmp_path / "c"
    prepared = invoke(["prepare", image_folder, "-q"])
    assert prepared.exit_code == 0, prepared.stderr
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(prepared.stdout)
    trained = invoke(["train", manifest, "--width", "4", "--depth", "2", "--epochs", "1", "--out", tmp_path / "run",
                      "--cache-dir", c, "-q"])
    assert trained.exit_code == 0, trained.stderr
    entries = {e.name: e.stat().st_mtime_ns for e in (c / "decoded").glob("*.npy")}
    assert len(entries) == 2  # train and val images
    evaluated = invoke(["eval", manifest, "--model", tmp_path / "run", "--split", "val", "--cache-dir", c, "--json", "-q"])
    assert evaluated.exit_code == 0, evaluated.stderr
    # the val images come from train's entry: nothing new decoded, nothing rewritten
    assert {e.name: e.stat().st_mtime_ns for e in (c / "decoded").glob("*.npy")} == entries


def test_cache_same_size_rewrite_with_restored_mtime_is_not_served_stale(tmp_path):
    """The key is the file as it is now: not the manifest's (prepare-time) sha256, not just size + mtime."""
    from imgcls.images import load_uint8, sha256_file

    image = tmp_path / "a.bmp"  # BMP: the same size in bytes for any content of the same dimensions
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
    recorded = sha256_file(image)  # what prepare put in the manifest
    c = tmp_path / "c"
    first = np.array(cache.load_decoded([image], 8, 3, cache_dir=c, sha256s=[recorded]))
    before = image.stat()
    time.sleep(0.01)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = image.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if after.st_ctime_ns == before.st_ctime_ns:
        pytest.skip("this file system's change times are too coarse to tell the rewrite apart")
    second = cache.load_decoded([image], 8, 3, cache_dir=c, sha256s=[recorded])  # stale manifest sha256
    np.testing.assert_array_equal(second[0], load_uint8(image, 8, 3))
    assert not np.array_equal(first, second)
    # the manifest's sha256 is not part of the key: a plain path list (predict) finds the same entry
    assert cache.decoded_key([image], 8, 3, [recorded]) == cache.decoded_key([image], 8, 3)
    assert len(list((c / "decoded").glob("*.npy"))) == 2


_CONCURRENT_WRITER = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from imgcls import cache

folder, key, mine, rounds, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
arrays = {s: np.random.default_rng(s).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8) for s in (1, 2)}
while not go.exists():
    time.sleep(0.001)
seen = {"mine": 0, "other": 0, "rejected": 0}
for _ in range(rounds):
    cache.store_entry(folder, key, arrays[mine])
    got = cache.load_entry(folder, key)
    if got is None:
        seen["rejected"] += 1
    elif np.array_equal(got, arrays[mine]):
        seen["mine"] += 1
    elif np.array_equal(got, arrays[3 - mine]):
        seen["other"] += 1
    else:
        sys.exit("a half-written or mixed entry was served")
print(json.dumps(seen))
"""


@pytest.mark.parametrize("contents", ["same", "different"])
def test_cache_two_processes_filling_one_entry_never_serve_a_broken_one(tmp_path, contents):
    """Two real processes store and load the same key at once, many times.

    "same": what really happens (same key, same files): every load must be a hit with the
    right array. "different": two writers disagree (say, two Pillow versions): a reader may
    catch one process's array with the other's sidecar, which must be rejected, never served.
    """
    folder, go = tmp_path / "c" / "decoded", tmp_path / "go"
    seeds = (1, 1) if contents == "same" else (1, 2)
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT_WRITER, str(folder), "k", str(seed), "40", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in seeds]
    time.sleep(0.3)
    go.touch()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    seen = [json.loads(out) for out, _ in outputs]
    assert all(sum(s.values()) == 40 for s in seen)
    assert sorted(p.name for p in folder.iterdir()) == ["k.json", "k.npy"]  # no temporary files left behind
    expected = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    if contents == "same":
        assert all(s == {"mine": 40, "other": 0, "rejected": 0} for s in seen)
        np.testing.assert_array_equal(cache.load_entry(folder, "k"), expected)
    else:
        # whatever the last two renames left, cached_array gives a whole array and leaves a loadable entry
        other = np.random.default_rng(2).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        result = cache.cached_array(tmp_path / "c", "decoded", "k", lambda: expected)
        assert np.array_equal(result, expected) or np.array_equal(result, other)
        final = cache.load_entry(folder, "k")
        assert final is not None and np.array_equal(final, result)


def test_cache_entry_writer_streams_and_cleans_up(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    writer = cache.EntryWriter(tmp_path, "decoded", "k", array.shape)
    writer.append(array[:3])
    writer.append(array[3:])
    writer.commit()
    np.testing.assert_array_equal(cache.load_entry(tmp_path / "decoded", "k"), array)
    partial = cache.EntryWriter(tmp_path, "decoded", "p", array.shape)
    partial.append(array[:3])
    with pytest.raises(ValueError):
        partial.commit()  # an incomplete entry is never published
    with pytest.raises(ValueError):
        cache.EntryWriter(tmp_path, "decoded", "q", array.shape).append(array[:, :2])
    import gc

    gc.collect()
    assert sorted(p.name for p in (tmp_path / "decoded").iterdir()) == ["k.json", "k.npy"]
