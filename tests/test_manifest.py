"""Manifest format v1 through the library: round-trip, streaming and every error path."""

from __future__ import annotations

import io
import json

import pytest

from imgcls import manifest as mf
from imgcls.errors import ManifestError


def records(n, split="train"):
    return [{"path": f"/d/{i}.png", "label": "ab"[i % 2], "split": split, "sha256": f"{i:064x}", "width": 8, "height": 8}
            for i in range(n)]


def test_manifest_round_trip_keeps_unknown_fields(tmp_path):
    header = mf.make_header(["a", "b"], root="/d", seed=3, custom={"x": 1})
    recs = records(4)
    recs[0]["my_field"] = [1, 2]
    dest = tmp_path / "m.jsonl"
    assert mf.write_manifest(dest, header, recs) == 4
    reader = mf.ManifestReader(dest)
    assert reader.header["custom"] == {"x": 1}
    assert reader.classes == ["a", "b"]
    back = list(reader)
    assert back == recs
    assert back[0]["my_field"] == [1, 2]


def test_manifest_without_header_infers_sorted_classes(tmp_path):
    dest = tmp_path / "m.jsonl"
    mf.write_manifest(dest, None, [{"path": "x.png", "label": "zebra"}, {"path": "y.png", "label": "ant"}])
    header, recs, reader = mf.read_all(dest)
    assert header["classes"] == ["ant", "zebra"]
    assert header["_inferred"] is True
    # relative paths resolve against the manifest's folder when there is no header
    assert reader.resolve(recs[0]) == tmp_path / "x.png"


def test_manifest_relative_paths_resolve_against_header_root():
    text = json.dumps(mf.make_header(["a"], root="/data/set")) + "\n" + json.dumps({"path": "a/1.png", "label": "a"}) + "\n"
    reader = mf.iter_text(text)
    rec = next(iter(reader))
    assert str(reader.resolve(rec)) == "/data/set/a/1.png"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"label": "a"}', 'no "path"'),
        ('{"path": "x", "split": "holdout"}', '"split" must be one of'),
        ('{"path": "x", "label": 3}', '"label" must be a non-empty string'),
        ('{"path": "x", "fold": -1}', '"fold" must be a non-negative integer'),
        ('{"path": "x", "width": 0}', '"width" must be a positive integer'),
        ('{"path": "x", "severity": "high"}', '"severity" must be a number'),
        ('{"format": "other-format", "version": "1"}', "not an imgcls manifest header"),
    ],
)
def test_manifest_bad_line_reports_file_and_line(tmp_path, line, message):
    dest = tmp_path / "bad.jsonl"
    good = json.dumps({"path": "ok.png", "label": "a"})
    dest.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ManifestError) as err:
        list(mf.ManifestReader(dest))
    assert str(err.value).startswith(f"{dest}:3: ")
    assert message in str(err.value)


def test_manifest_refuses_newer_major_version():
    text = json.dumps({"format": mf.FORMAT, "version": "2.0", "classes": ["a"]}) + "\n"
    with pytest.raises(ManifestError, match=r"<string>:1: manifest format version 2.0 is newer"):
        mf.iter_text(text)


def test_manifest_reads_newer_minor_version():
    text = json.dumps({"format": mf.FORMAT, "version": "1.7", "classes": ["a"], "future": True}) + "\n"
    reader = mf.iter_text(text)
    assert reader.header["future"] is True


def test_manifest_second_header_is_an_error():
    head = json.dumps(mf.make_header(["a"]))
    text = "\n".join([head, json.dumps({"path": "x", "label": "a"}), head]) + "\n"
    with pytest.raises(ManifestError, match=r"<string>:3: a second header"):
        list(mf.iter_text(text))


def test_manifest_header_checks_classes():
    text = json.dumps({"format": mf.FORMAT, "version": "1.0", "classes": ["a", "a"]}) + "\n"
    with pytest.raises(ManifestError, match="lists a class twice"):
        mf.iter_text(text)


def test_manifest_label_outside_header_classes_is_an_error(tmp_path):
    dest = tmp_path / "m.jsonl"
    mf.write_manifest(dest, mf.make_header(["a"]), [{"path": "x", "label": "b"}])
    with pytest.raises(ManifestError, match="labels not in the header's classes: b"):
        mf.read_all(dest)


def test_manifest_missing_file_and_folder_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file"):
        mf.ManifestReader(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="is a folder, not a manifest"):
        mf.ManifestReader(tmp_path)


def test_manifest_not_utf8_is_an_error(tmp_path):
    dest = tmp_path / "m.jsonl"
    dest.write_bytes(b'{"path": "\xff\xfe"}\n')
    with pytest.raises(ManifestError, match="not UTF-8"):
        list(mf.ManifestReader(dest))


def test_manifest_reader_streams_without_reading_everything():
    class CountingStream(io.StringIO):
        lines_read = 0

        def readline(self, *args):
            CountingStream.lines_read += 1
            return super().readline(*args)

    body = "".join(json.dumps({"path": f"{i}.png", "label": "a"}) + "\n" for i in range(10_000))
    stream = CountingStream(json.dumps(mf.make_header(["a"])) + "\n" + body)
    reader = mf.ManifestReader(stream)
    it = iter(reader)
    for _ in range(5):
        next(it)
    assert CountingStream.lines_read <= 7


def test_manifest_writer_is_atomic_on_error(tmp_path):
    dest = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with mf.ManifestWriter(dest, mf.make_header(["a"])) as writer:
            writer.write({"path": "x", "label": "a"})
            raise RuntimeError("boom")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_manifest_writer_keeps_unicode_and_newlines_in_paths(tmp_path):
    dest = tmp_path / "m.jsonl"
    name = "/d/caf\u00e9 bar\nnew.png"
    mf.write_manifest(dest, mf.make_header(["a"]), [{"path": name, "label": "a"}])
    assert len(dest.read_text(encoding="utf-8").splitlines()) == 2
    assert next(iter(mf.ManifestReader(dest)))["path"] == name


def test_manifest_hash_changes_with_labels():
    header = mf.make_header(["a", "b"])
    recs = records(4)
    h1 = mf.manifest_hash(header, recs)
    recs[0]["label"] = "b"
    assert mf.manifest_hash(header, recs) != h1


def test_manifest_written_file_gets_normal_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        dest = tmp_path / "m.jsonl"
        mf.write_manifest(dest, mf.make_header(["a"]), [{"path": "x", "label": "a"}])
        assert dest.stat().st_mode & 0o777 == 0o644
        os.chmod(dest, 0o600)
        mf.write_manifest(dest, mf.make_header(["a"]), [])
        assert dest.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
    finally:
        os.umask(old)
