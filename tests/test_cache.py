"""The decoded-image cache: hits, invalidation, damage detection, location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
