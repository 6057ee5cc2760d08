"""imgcls eval: metrics, reports, schema, robustness grouping, comparison, label matching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _eval_helpers import CLASSES, save_constant_model, save_trained_model, schema_errors, write_manifest_file
from conftest import make_class_folder, read_jsonl

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "eval-json-schema.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """18 images (3 classes x 6), a model that gets them all right, and a constant one."""
    root = tmp_path_factory.mktemp("evalworld")
    make_class_folder(root / "shapes", per_class=6)
    images = sorted((root / "shapes").rglob("*.png"))
    labels = [p.parent.name for p in images]
    run = root / "runs" / "perfect"
    run.mkdir(parents=True)
    perfect = save_trained_model(run / "model.safetensors", images, labels)
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10, "val_loss": 1.2 / e,
                "val_acc": 0.4 + e / 10, "lr": 0.01, "seconds": 0.1} for e in (1, 2, 3)]
    (run / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    constant = save_constant_model(root / "constant.safetensors", winner=1)
    records = [{"path": str(p), "label": label, "split": "test"} for p, label in zip(images, labels)]
    return {"root": root, "images": images, "labels": labels, "perfect": perfect, "constant": constant,
            "records": records}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own decoded-image cache, never the user's."""
    monkeypatch.setenv("IMGCLS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def eval_json(invoke, args, **kwargs):
    result = invoke(["eval", *args, "--json"], **kwargs)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result


def test_eval_perfect_model_from_header(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"], model=str(world["perfect"]))
    doc, result = eval_json(invoke, [manifest])
    report = doc["models"][0]
    assert report["model"]["path"] == str(world["perfect"])
    assert report["model"]["name"] == "perfect"
    assert report["n_images"] == 18
    m = report["metrics"]
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["top_k"] == 2 and m["top_k_accuracy"] == 1.0
    assert report["confusion_matrix"]["counts"] == [[6, 0, 0], [0, 6, 0], [0, 0, 6]]
    assert report["errors"] == {"n_errors": 0, "most_confident": [], "confused_pairs": [], "never_predicted": []}
    assert report["robustness"] is None
    assert "accuracy" in result.stderr and "100.0%" in result.stderr and "never predicted" not in result.stderr


def test_eval_constant_model_calls_out_never_predicted(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    doc, result = eval_json(invoke, [manifest, "--model", world["constant"]])
    report = doc["models"][0]
    assert report["metrics"]["accuracy"] == pytest.approx(1 / 3)
    assert report["errors"]["never_predicted"] == ["circle", "stripe"]
    assert [c["predicted"] for c in report["per_class"]] == [0, 18, 0]
    assert report["confusion_matrix"]["counts"] == [[0, 6, 0], [0, 6, 0], [0, 6, 0]]
    pairs = {(p["true"], p["pred"]): p["count"] for p in report["errors"]["confused_pairs"]}
    assert pairs == {("circle", "square"): 6, ("stripe", "square"): 6}
    worst = report["errors"]["most_confident"]
    assert len(worst) == 10 and all(w["pred"] == "square" and w["true"] != "square" for w in worst)
    assert worst[0]["prob"] == pytest.approx(np.exp(3) / (np.exp(3) + 2), rel=1e-5)
    assert "never predicted 2 of 3 classes: circle, stripe" in result.stderr
    assert "most confident mistakes" in result.stderr and "confusion matrix" in result.stderr


def _mixed_records(world):
    """Perfect model, but every third record mislabelled: predictions disagree with labels in a known way."""
    records = []
    for i, r in enumerate(world["records"]):
        label = r["label"]
        if i % 3 == 0:
            label = CLASSES[(CLASSES.index(label) + 1 + i % 2) % 3]
        records.append({**r, "label": label})
    return records


@pytest.mark.parametrize("cache", ["--no-cache", "cache"])
def test_eval_metrics_agree_with_sklearn(invoke, world, tmp_path, cache):
    from sklearn import metrics as skm

    manifest = write_manifest_file(tmp_path / "m.jsonl", _mixed_records(world))
    preds_file = tmp_path / "preds.jsonl"
    options = [cache] if cache.startswith("--") else []
    doc, _ = eval_json(invoke, [manifest, "-m", world["perfect"], "--predictions", preds_file, "--bins", "10",
                                *options])
    assert doc["settings"]["cache"] is (cache == "cache")
    lines = read_jsonl(preds_file.read_text())
    header, preds = lines[0], lines[1:]
    assert header["format"] == "imgcls-manifest" and header["classes"] == CLASSES
    assert header["predictions"]["model"] == str(world["perfect"])
    assert len(preds) == 18 and all(set(p) >= {"path", "label", "split", "pred", "prob", "probs"} for p in preds)
    y_true = [p["label"] for p in preds]
    y_pred = [p["pred"] for p in preds]
    probs = np.array([[p["probs"][c] for c in CLASSES] for p in preds])
    assert all(p["prob"] == max(p["probs"].values()) for p in preds)

    m = doc["models"][0]["metrics"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert 0.5 < m["accuracy"] < 0.9
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y_true, probs, labels=CLASSES), rel=1e-6)
    assert m["top_k_accuracy"] == pytest.approx(skm.top_k_accuracy_score(y_true, probs, k=2, labels=CLASSES))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=CLASSES)
    per_class = doc["models"][0]["per_class"]
    assert [c["class"] for c in per_class] == CLASSES
    assert [c["precision"] for c in per_class] == pytest.approx(list(p))
    assert [c["recall"] for c in per_class] == pytest.approx(list(r))
    assert [c["f1"] for c in per_class] == pytest.approx(list(f))
    assert [c["support"] for c in per_class] == list(s)
    cm = skm.confusion_matrix(y_true, y_pred, labels=CLASSES)
    assert doc["models"][0]["confusion_matrix"]["counts"] == cm.tolist()
    np.testing.assert_allclose(doc["models"][0]["confusion_matrix"]["normalized"], cm / cm.sum(1, keepdims=True))

    # ECE, independently: 10 bins (lo, hi], |acc - conf| weighted by bin share
    conf = probs.max(1)
    correct = np.array(y_true) == np.array(y_pred)
    ece = 0.0
    for lo in np.arange(10) / 10:
        inside = (conf > lo) & (conf <= lo + 0.1) if lo > 0 else conf <= 0.1
        if inside.any():
            ece += abs(correct[inside].mean() - conf[inside].mean()) * inside.mean()
    cal = doc["models"][0]["calibration"]
    assert cal["n_bins"] == 10 and len(cal["bins"]) == 10 and sum(b["count"] for b in cal["bins"]) == 18
    assert m["ece"] == pytest.approx(ece) == pytest.approx(cal["ece"])
    worst = doc["models"][0]["errors"]["most_confident"]
    assert len(worst) == doc["models"][0]["errors"]["n_errors"] == int((~correct).sum())
    assert [w["prob"] for w in worst] == sorted((w["prob"] for w in worst), reverse=True)


def test_eval_json_validates_against_schema(invoke, world, tmp_path):
    schema = json.loads(SCHEMA.read_text())
    records = _mixed_records(world) + [{**r, "perturbation": "noise", "severity": 1} for r in world["records"][:6]]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records + [{"path": "x.png", "label": "triangle"}],
                                   classes=CLASSES + ["triangle"])
    out = tmp_path / "report.json"
    doc, result = eval_json(invoke, [manifest, "-m", world["perfect"], "-m", world["constant"], "-o", out,
                                     "--ignore-unknown"])
    assert json.loads(out.read_text()) == doc
    assert schema_errors(doc, schema) == []
    assert doc["models"][0]["robustness"] is not None and doc["models"][0]["unknown"]["count"] == 1
    # the checker is not a rubber stamp
    broken = json.loads(json.dumps(doc))
    broken["models"][0]["metrics"]["accuracy"] = "high"
    del broken["models"][1]["per_class"][0]["f1"]
    broken["models"][0]["undocumented"] = 1
    assert len(schema_errors(broken, schema)) == 3
    try:
        import jsonschema
    except ImportError:
        return
    jsonschema.validate(doc, schema)


def test_eval_stdout_empty_without_json_and_output_file_written(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    out = tmp_path / "sub" / "report.json"
    result = invoke(["eval", manifest, "-m", world["perfect"], "-o", out])
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert json.loads(out.read_text())["models"][0]["metrics"]["accuracy"] == 1.0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_eval_reads_stdin(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"], model=str(world["constant"]))
    doc, _ = eval_json(invoke, [], input=manifest.read_text())
    assert doc["manifest"] == "<stdin>" and doc["models"][0]["n_images"] == 18


def test_eval_groups_by_perturbation_and_severity(invoke, world, tmp_path):
    recs = world["records"]
    wrong = lambda r: {**r, "label": CLASSES[(CLASSES.index(r["label"]) + 1) % 3]}  # noqa: E731
    records = list(recs[:6])  # clean: all right
    records += [{**r, "perturbation": "noise", "severity": 1} for r in recs[6:10]]  # 4/4 right
    records += [{**(wrong(r) if i < 2 else r), "perturbation": "noise", "severity": 2}
                for i, r in enumerate(recs[10:14])]  # 2/4 right
    records += [{**wrong(r), "perturbation": "blur", "severity": 3} for r in recs[14:18]]  # 0/4
    manifest = write_manifest_file(tmp_path / "m.jsonl", records)
    doc, result = eval_json(invoke, [manifest, "-m", world["perfect"]])
    rob = doc["models"][0]["robustness"]
    assert rob["clean"] == {"n": 6, "accuracy": 1.0}
    by_name = {p["perturbation"]: p for p in rob["perturbations"]}
    assert list(by_name) == ["blur", "noise"]
    noise = by_name["noise"]
    assert noise["n"] == 8 and noise["accuracy"] == pytest.approx(0.75) and noise["relative_drop"] == pytest.approx(0.25)
    assert [(s["severity"], s["n"], s["accuracy"]) for s in noise["severities"]] == [(1, 4, 1.0), (2, 4, 0.5)]
    assert by_name["blur"]["accuracy"] == 0.0 and by_name["blur"]["relative_drop"] == 1.0
    assert rob["mean_accuracy"] == pytest.approx(0.375)
    assert rob["mean_error"] == pytest.approx(0.625)
    assert rob["mean_relative_drop"] == pytest.approx(0.625)
    assert doc["models"][0]["metrics"]["accuracy"] == pytest.approx(12 / 18)  # summary covers every image
    assert "robustness" in result.stderr and "mean over perturbations" in result.stderr


def test_eval_robustness_without_clean_records():
    from imgcls.evaluation.metrics import robustness

    assert robustness([{"path": "a"}, {"path": "b", "perturbation": "none"}], np.array([True, False])) is None
    rob = robustness([{"path": "a", "perturbation": "fog", "severity": 1}], np.array([True]))
    assert rob["clean"] == {"n": 0, "accuracy": None} and rob["perturbations"][0]["relative_drop"] is None


def test_eval_compares_models_side_by_side(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    doc, result = eval_json(invoke, [manifest, "-m", world["perfect"], "--model", world["constant"]])
    rows = doc["comparison"]
    assert [r["model"] for r in rows] == ["perfect", "constant"]
    assert [r["accuracy"] for r in rows] == pytest.approx([1.0, 1 / 3])
    assert rows[1]["per_class_f1"] == {"circle": 0.0, "square": pytest.approx(0.5), "stripe": 0.0}
    assert all(r["parameters"] > 0 and r["images_per_second"] > 0 and r["ece"] is not None for r in rows)
    assert len(doc["models"]) == 2
    assert "model comparison" in result.stderr and "F1 stripe" in result.stderr
    assert "constant never predicted: circle, stripe" in result.stderr


def test_eval_matches_classes_by_name_not_position(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"], classes=["stripe", "circle", "square"])
    doc, _ = eval_json(invoke, [manifest, "-m", world["perfect"]])
    assert doc["models"][0]["metrics"]["accuracy"] == 1.0
    assert doc["models"][0]["confusion_matrix"]["classes"] == CLASSES


def test_eval_unknown_label_is_an_error_unless_ignored(invoke, world, tmp_path):
    extra = [{"path": str(world["images"][0]), "label": "triangle", "split": "test"}] * 2
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"] + extra, classes=CLASSES + ["triangle"])
    result = invoke(["eval", manifest, "-m", world["perfect"]])
    assert result.exit_code == 1
    assert "'triangle' (2)" in result.stderr and "--ignore-unknown" in result.stderr
    assert "Traceback" not in result.stderr
    doc, result = eval_json(invoke, [manifest, "-m", world["perfect"], "--ignore-unknown"])
    report = doc["models"][0]
    assert report["unknown"] == {"count": 2, "labels": {"triangle": 2}}
    assert report["n_images"] == 18 and report["metrics"]["accuracy"] == 1.0
    assert "2 images with labels the model does not know were left out: triangle (2)" in result.stderr


def test_eval_split_selection_and_empty_split(invoke, world, tmp_path):
    records = [{**r, "split": "train"} for r in world["records"][:9]] + [
        {k: v for k, v in r.items() if k != "split"} for r in world["records"][9:]]
    unlabelled = {"path": str(world["images"][0]), "split": "test"}
    manifest = write_manifest_file(tmp_path / "m.jsonl", records + [unlabelled])
    doc, result = eval_json(invoke, [manifest, "-m", world["perfect"]])
    assert doc["n_unsplit_as_test"] == 9 and doc["models"][0]["n_images"] == 9
    assert doc["n_selected"] == 10 and doc["n_unlabelled"] == 1
    assert "9 records without a split were counted as test" in result.stderr
    assert "1 selected records have no label and were left out" in result.stderr
    doc, _ = eval_json(invoke, [manifest, "-m", world["perfect"], "--split", "all"])
    assert doc["models"][0]["n_images"] == 18 and doc["n_selected"] == 19
    result = invoke(["eval", manifest, "-m", world["perfect"], "--split", "val"])
    assert result.exit_code == 1
    assert "no records in split 'val'" in result.stderr and "--split" in result.stderr


def test_eval_without_model_says_what_to_pass(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    result = invoke(["eval", manifest])
    assert result.exit_code == 1
    assert "--model FILE" in result.stderr and "header" in result.stderr
    gone = write_manifest_file(tmp_path / "g.jsonl", world["records"], model=str(tmp_path / "gone.safetensors"))
    result = invoke(["eval", gone])
    assert result.exit_code == 1 and "gone.safetensors" in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize("cache", [[], ["--no-cache"]])
def test_eval_unreadable_image_is_an_error(invoke, world, tmp_path, cache, private_cache):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"] + [{"path": str(bad), "label": "circle"}])
    result = invoke(["eval", manifest, "-m", world["perfect"], "--predictions", tmp_path / "p.jsonl", *cache])
    assert result.exit_code == 1
    assert str(bad) in result.stderr and "eval needs every selected image" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.jsonl").exists()
    assert not list(private_cache.rglob("*.npy"))


def test_eval_reuses_the_decoded_image_cache(invoke, world, tmp_path, private_cache):
    manifest = write_manifest_file(tmp_path / "m.jsonl", _mixed_records(world))
    first, _ = eval_json(invoke, [manifest, "-m", world["perfect"], "-m", world["constant"]])
    entries = list(private_cache.rglob("*.npy"))
    assert len(entries) == 1  # both models take 16 px RGB: one entry
    second, result = eval_json(invoke, [manifest, "-m", world["perfect"], "-v"])
    assert "cache hit" in result.stderr and list(private_cache.rglob("*.npy")) == entries
    assert second["models"][0]["metrics"] == first["models"][0]["metrics"]
    result = invoke(["eval", manifest, "-m", world["perfect"], "--no-cache", "--cache-dir", tmp_path])
    assert result.exit_code == 2


def test_eval_report_writes_pictures(invoke, world, tmp_path):
    pytest.importorskip("matplotlib")
    manifest = write_manifest_file(tmp_path / "m.jsonl", _mixed_records(world))
    out = tmp_path / "pics"
    result = invoke(["eval", manifest, "-m", world["perfect"].parent, "--report", out])
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["confusion_matrix.png", "index.html", "learning_curves.png", "reliability.png",
                     "worst_errors.png"]
    assert "Most confident mistakes" in (out / "index.html").read_text(encoding="utf-8")
    from PIL import Image

    for name in [n for n in names if n.endswith(".png")]:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 100


def test_eval_report_without_matplotlib_still_makes_contact_sheet(invoke, world, tmp_path, monkeypatch):
    import imgcls.evaluation.plots as plots

    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    out = tmp_path / "pics"
    result = invoke(["eval", manifest, "-m", world["constant"], "--report", out, "--json"])
    assert result.exit_code == 1
    assert "imgcls[plots]" in result.stderr and "worst_errors.png" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "worst_errors.png"]  # the page needs no plots
    assert json.loads(result.stdout)["models"][0]["metrics"]["accuracy"] == pytest.approx(1 / 3)


def test_eval_option_conflicts_are_usage_errors(invoke, world, tmp_path):
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    result = invoke(["eval", manifest, "-m", world["perfect"], "--json", "--predictions", "-"])
    assert result.exit_code == 2 and "stdout" in result.stderr
    result = invoke(["eval", manifest, "-m", world["perfect"], "-m", world["constant"], "--predictions", "p.jsonl"])
    assert result.exit_code == 2 and "one model" in result.stderr


def test_eval_predictions_to_stdout_is_a_manifest(invoke, world, tmp_path):
    from imgcls.manifest import iter_text

    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    result = invoke(["eval", manifest, "-m", world["constant"], "--predictions", "-", "-q"])
    assert result.exit_code == 0 and result.stderr == ""
    reader = iter_text(result.stdout)
    records = list(reader)
    assert reader.classes == CLASSES and len(records) == 18 and {r["pred"] for r in records} == {"square"}


def test_eval_many_classes_truncates_matrix(invoke, tmp_path):
    classes = [f"c{i:02d}" for i in range(22)]
    make_class_folder(tmp_path / "img", per_class=1, classes=("circle",), size=8)
    image = next((tmp_path / "img").rglob("*.png"))
    model = save_constant_model(tmp_path / "many.safetensors", winner=0, classes=classes, size=8)
    records = [{"path": str(image), "label": c} for c in classes]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records, classes=classes)
    doc, result = eval_json(invoke, [manifest, "-m", model])
    assert "22 classes is too many to print" in result.stderr
    assert doc["models"][0]["metrics"]["top_k"] == 5
    assert len(doc["models"][0]["confusion_matrix"]["counts"]) == 22


# --- the HTML report -----------------------------------------------------------------------------------

def _html_world_records(world):
    records = _mixed_records(world)
    return records + [{**r, "perturbation": "noise", "severity": s} for s in (1, 2) for r in records[:6]]


@pytest.fixture(scope="module")
def html_page(world, tmp_path_factory):
    """One eval run of two models over mislabelled and perturbed records, with --json and --html."""
    from click.testing import CliRunner

    from imgcls.cli import cli

    folder = tmp_path_factory.mktemp("html")
    manifest = write_manifest_file(folder / "m.jsonl", _html_world_records(world))
    page = folder / "report.html"
    result = CliRunner().invoke(cli, ["eval", str(manifest), "-m", str(world["perfect"].parent), "-m",
                                      str(world["constant"]), "--json", "--html", str(page), "--no-cache"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert f"HTML report written to {page}" in result.stderr
    return json.loads(result.stdout), page


def _value(cell) -> float | None:
    raw = cell[1].get("data-value")
    return None if raw in (None, "") else float(raw)


def test_eval_html_numbers_agree_with_json(html_page):
    from _eval_helpers import PageParser

    from imgcls.evaluation.html import num, pct

    doc, page = html_page
    parsed = PageParser(page.read_text(encoding="utf-8"))
    assert parsed.document() == doc  # the page carries the very document --json printed
    for m, report in enumerate(doc["models"]):
        rows = parsed.rows(f"m{m}-per-class")
        body = [r for r in rows if r[0][0] not in ("macro average", "weighted average")]
        assert [r[0][0] for r in body] == report["model"]["classes"]
        for row, expected in zip(body, report["per_class"]):
            for cell, key in zip(row[1:6], ("precision", "recall", "f1", "support", "predicted")):
                assert _value(cell) == expected[key]  # exactly, not approximately
                assert cell[0] == num(expected[key])
        macro = [r for r in rows if r[0][0] == "macro average"][0]
        assert [_value(c) for c in macro[1:4]] == [report["metrics"][k] for k in
                                                   ("macro_precision", "macro_recall", "macro_f1")]
        cm = parsed.rows(f"m{m}-cm")
        counts = [[int(_value(c)) for c in row[1:]] for row in cm]
        assert counts == report["confusion_matrix"]["counts"]  # 3 classes: the model's order
        bins = parsed.rows(f"m{m}-bins")
        assert [int(_value(r[1])) for r in bins] == [b["count"] for b in report["calibration"]["bins"]]
        rob = parsed.rows(f"m{m}-robustness-t")
        assert rob[0][0][0] == "clean" and _value(rob[0][3]) == report["robustness"]["clean"]["accuracy"]
        severities = [(r[1][0], _value(r[3])) for r in rob if r[0][0] == "noise" and r[1][0] != "mean"]
        assert severities == [(str(s["severity"]), s["accuracy"])
                              for s in report["robustness"]["perturbations"][0]["severities"]]
        pairs = parsed.rows(f"m{m}-pairs-t")
        assert [(r[0][0], r[1][0], int(_value(r[2]))) for r in pairs] == [
            (p["true"], p["pred"], p["count"]) for p in report["errors"]["confused_pairs"]]
    summary = {r[0][0]: r[1:] for r in parsed.rows("summary-table")}
    for m, report in enumerate(doc["models"]):
        assert _value(summary["accuracy"][m]) == report["metrics"]["accuracy"]
        assert summary["accuracy"][m][0] == pct(report["metrics"]["accuracy"])
        assert _value(summary["ECE (expected calibration error)"][m]) == report["metrics"]["ece"]
    f1 = {r[0][0]: [_value(c) for c in r[1:]] for r in parsed.rows("cmp-f1")}
    for name, values in f1.items():
        a, b = (row["per_class_f1"][name] for row in doc["comparison"])
        assert values == [a, b, b - a]
    agree = doc["agreement"]
    assert agree["models"] == ["perfect", "constant"] and agree["n_images"] == 30
    assert agree["all_right"] + agree["all_wrong"] + agree["some_right"] == 30
    counts = {r[0][0]: int(_value(r[1])) for r in parsed.rows("cmp-agreement")}
    assert counts["every model right"] == agree["all_right"] and counts["every model wrong"] == agree["all_wrong"]
    assert len(agree["examples"]) == min(10, agree["some_right"])
    # learning curves from the run's history.jsonl (3 epochs), a chart per metric
    history = parsed.rows("m0-history")
    assert [r[0][0] for r in history] == ["1", "2", "3"]
    assert "no history.jsonl" in parsed.text  # the constant model has no run folder
    # self-contained: every picture inline, nothing fetched
    srcs = [a.get("src") for t, a in parsed.tags if "src" in a] + [a.get("href") for t, a in parsed.tags
                                                                   if a.get("href") and not a["href"].startswith("#")]
    assert srcs and all(s.startswith("data:") for s in srcs)
    imgs = [a for t, a in parsed.tags if t == "img"]
    assert imgs and all(a.get("alt") for a in imgs)
    csp = [a["content"] for t, a in parsed.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


def test_eval_html_escapes_hostile_names_and_labels(invoke, tmp_path):
    from _eval_helpers import PageParser

    hostile = ['<script>alert("x")</script>', "</style><marquee>moving</marquee>", "quote\"'&amp;", "new\nline",
               "javascript:alert(1)", "\u2028sep</script><img src=x onerror=alert(1)>"]
    images = []
    for k, label in enumerate(hostile):
        name = f"{label.replace('/', '_')}-{k}.png"
        images.append(make_class_folder(tmp_path / "img", per_class=1, classes=("circle",), size=8)
                      / "circle" / "circle_000.png")
        target = tmp_path / "img" / name
        images[-1].rename(target)
        images[-1] = target
    model = save_constant_model(tmp_path / "m.safetensors", winner=0, classes=hostile, size=8)
    records = [{"path": str(p), "label": label} for p, label in zip(images, hostile)]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records, classes=hostile)
    page = tmp_path / "r.html"
    doc, result = eval_json(invoke, [manifest, "-m", model, "--html", page])
    text = page.read_text(encoding="utf-8")
    parsed = PageParser(text)
    assert parsed.document() == doc
    tags = [t for t, _ in parsed.tags]
    assert tags.count("script") == 2 and tags.count("style") == 1 and "marquee" not in tags
    assert [a.get("id") for t, a in parsed.tags if t == "script"] == ["imgcls-eval-data", None]
    assert not [a for _, a in parsed.tags if any(k.startswith("on") for k in a)]
    urls = [v for _, a in parsed.tags for k, v in a.items() if k in ("href", "src", "action", "formaction", "xlink:href")]
    assert urls and not [u for u in urls if not u.startswith(("data:", "#"))]
    assert all(a["src"].startswith("data:") for t, a in parsed.tags if t == "img")
    classes = [r[0][0] for r in parsed.rows("m0-per-class") if r[0][0] not in ("macro average", "weighted average")]
    assert classes == [h.strip() for h in hostile]  # shown as text, verbatim (the parser strips cells)
    assert str(images[1]) in parsed.text and str(images[-1]) in parsed.text  # mistakes show their paths
    assert "\u2028" not in text.split('id="imgcls-eval-data">')[1].split("</script>")[0]


def test_eval_html_many_classes_cluster_and_stay_small(invoke, tmp_path):
    from _eval_helpers import PageParser

    classes = [f"class{i:03d}" for i in range(100)]
    make_class_folder(tmp_path / "img", per_class=1, classes=("circle",), size=8)
    image = next((tmp_path / "img").rglob("*.png"))
    model = save_constant_model(tmp_path / "many.safetensors", winner=7, classes=classes, size=8)
    records = [{"path": str(image), "label": c} for c in classes for _ in range(2)]
    manifest = write_manifest_file(tmp_path / "m.jsonl", records, classes=classes)
    page = tmp_path / "r.html"
    doc, _ = eval_json(invoke, [manifest, "-m", model, "--html", page])
    parsed = PageParser(page.read_text(encoding="utf-8"))
    assert "ordered so that classes the model confuses sit next to each other" in parsed.text
    cm = parsed.rows("m0-cm")
    order = [r[0][0] for r in cm]
    assert sorted(order) == classes
    index = {c: i for i, c in enumerate(classes)}
    counts = doc["models"][0]["confusion_matrix"]["counts"]
    for row in cm:  # every cell still says what the document says, in the shown order
        i = index[row[0][0]]
        assert [int(_value(c)) for c in row[1:]] == [counts[i][index[c]] for c in order]
    assert page.stat().st_size < 1_500_000


def test_eval_html_in_headless_chromium(html_page, tmp_path):
    """The page as a browser loads it from file://: no console error, no request but itself, sortable tables."""
    from _browser import find_chromium, visit

    if find_chromium() is None:
        pytest.skip("no chromium (Debian: apt-get install chromium)")
    doc, page = html_page
    f1 = ("(function () { var t = document.getElementById('m0-per-class');"
          " t.tHead.rows[0].cells[3].querySelector('button').click();"
          " return Array.prototype.map.call(t.tBodies[0].rows, function (r) {"
          " return parseFloat(r.cells[3].getAttribute('data-value')); }); })()")
    result = visit(page.as_uri(), evaluate={
        "f1_sorted": f1,
        "images_loaded": "Array.prototype.every.call(document.images, function (i) {"
                         " return i.complete && i.naturalWidth > 0; })",
        "images": "document.images.length",
        "svgs": "document.querySelectorAll('svg.chart').length",
        "embedded": "JSON.parse(document.getElementById('imgcls-eval-data').textContent).models.length",
    })
    assert result.problems() == []
    assert result.requests and result.requests[0] == page.as_uri()
    assert all(u == page.as_uri() or u.startswith("data:") for u in result.requests), result.requests
    assert result.evaluated["f1_sorted"] == sorted(c["f1"] for c in doc["models"][0]["per_class"])
    assert result.evaluated["images_loaded"] is True and result.evaluated["images"] > 10
    assert result.evaluated["svgs"] >= 6 and result.evaluated["embedded"] == 2
    shot = tmp_path / "report.png"
    shot.write_bytes(result.screenshot)
    from PIL import Image

    with Image.open(shot) as img:
        assert img.format == "PNG" and img.width == 1280 and img.height > 3000  # the whole page
        assert len(img.convert("L").getcolors(1 << 16) or []) > 50  # not a blank page


def test_eval_html_renders_unknown_and_missing_blocks(html_page):
    """A document from another version (a "tta" block, no robustness, no history) still renders."""
    from _eval_helpers import PageParser

    from imgcls.evaluation.html import render_html

    doc, _ = html_page
    newer = json.loads(json.dumps(doc))
    report = newer["models"][0]
    report["tta"] = {"accuracy": 0.5, "accuracy_without": 0.25, "views": ["identity", "hflip"]}
    report["metrics"]["accuracy_tta"] = 0.5
    report["robustness"] = None
    del report["calibration"]
    newer["future_block"] = {"note": "<b>x</b>"}
    parsed = PageParser(render_html({**newer, "models": newer["models"][:1], "comparison": [], "agreement": None}))
    cells = {r[0][0]: r[1][0] for r in parsed.rows("m0-extra-0-t")}
    assert cells == {"accuracy": "0.500", "accuracy_without": "0.250", "views[0]": "identity", "views[1]": "hflip"}
    summary = {r[0][0]: _value(r[1]) for r in parsed.rows("summary-table")}
    assert summary["accuracy_tta"] == 0.5
    assert "No perturbed records" in parsed.text and "No calibration bins" in parsed.text
    assert [[c[0] for c in r] for r in parsed.rows("extra-0-t")] == [["note", "<b>x</b>"]]  # text, not markup
    assert "Comparison" not in [a.get("id") for _, a in parsed.tags]
    bare = PageParser(render_html({"models": [{}]}))  # nothing at all: still a page
    assert "imgcls eval report" in bare.text

def test_eval_tta_reports_accuracy_with_and_without_side_by_side(invoke, world, tmp_path):
    """--tta: views the model was trained to see (no mirror without a record of flips), both accuracies reported."""
    schema = json.loads(SCHEMA.read_text())
    manifest = write_manifest_file(tmp_path / "m.jsonl", world["records"])
    plain, _ = eval_json(invoke, [manifest, "-m", world["perfect"], "-m", world["constant"]])
    doc, result = eval_json(invoke, [manifest, "-m", world["perfect"], "-m", world["constant"], "--tta", "-v"])
    assert schema_errors(doc, schema) == []
    report = doc["models"][0]
    tta = report["tta"]
    assert tta["views"] == ["identity", "right 1px", "left 1px", "down 1px", "up 1px"]  # 16 px: 1/32 -> 1 px
    assert "no mirror" in tta["reason"] and "safe default" in tta["reason"]
    # "without" is exactly what eval gives without --tta; "with" is the report's own metrics
    assert tta["without"] == {k: plain["models"][0]["metrics"][k] for k in tta["without"]}
    assert tta["with"]["accuracy"] == report["metrics"]["accuracy"]
    assert tta["accuracy_gain"] == pytest.approx(tta["with"]["accuracy"] - tta["without"]["accuracy"])
    assert report["metrics"]["log_loss"] != plain["models"][0]["metrics"]["log_loss"]  # the views changed the probabilities
    assert doc["comparison"][0]["accuracy_without_tta"] == tta["without"]["accuracy"]
    assert "accuracy without TTA" in result.stderr and "TTA with 5 views" in result.stderr
    assert "tta" not in plain["models"][0] and plain["comparison"][0]["accuracy_without_tta"] is None


def test_eval_tta_policy_from_the_model_record_or_its_config():
    from imgcls.evaluation.tta import View, apply_view, policy_for
    from imgcls.models.io import ModelInfo

    def info(extra=None, config=None, size=28):
        return ModelInfo(arch="cnn", classes=["a", "b"], image_size=size, channels=1, mean=[0.5], std=[0.5],
                         extra=extra or {}, config=config or {})

    flips = policy_for(info({"augmentation": {"flip": True, "shift": 0.1}}, size=32))
    assert [v.name for v in flips.views] == ["identity", "mirror", "right 2px", "left 2px", "down 2px", "up 2px"]
    assert "trained with flips" in flips.reason and "half the trained 10%" in flips.reason
    # an older file: its training config says what it was trained with
    light = policy_for(info(config={"augment": "light", "flip": True}))
    assert light.views[1].mirror and "--augment light" in light.reason
    digits = policy_for(info(config={"augment": "standard", "flip": False}))
    assert not any(v.mirror for v in digits.views) and "trained without flips" in digits.reason
    assert not any(v.mirror for v in policy_for(info()).views)  # nothing recorded: no mirror
    import torch

    x = torch.arange(16.0).view(1, 1, 4, 4)
    right, up = apply_view(x, View("r", dx=1)), apply_view(x, View("u", dy=-1))
    assert torch.equal(right[0, 0, :, 1:], x[0, 0, :, :3]) and torch.equal(right[0, 0, :, 0], x[0, 0, :, 0])
    assert torch.equal(up[0, 0, :3], x[0, 0, 1:]) and torch.equal(up[0, 0, 3], x[0, 0, 3])
    mirrored = apply_view(x, flips.views[1])
    assert torch.equal(mirrored, x.flip(3))


def test_eval_option_defaults_are_the_librarys():
    """--batch-size, --workers, --device and --no-cache take imgcls.evaluation.config.EVAL's values."""
    from imgcls.commands.eval import command
    from imgcls.evaluation.config import EVAL, PREDICT

    options = {p.name: p for p in command.params}
    assert options["batch_size"].default == EVAL.batch_size
    assert options["workers"].default == EVAL.workers
    assert options["device"].default == EVAL.device
    assert options["no_cache"].default is (not EVAL.cache)
    assert options["models"].multiple
    # The two batch sizes differ on purpose, and the help says why.
    assert EVAL.batch_size != PREDICT.batch_size
    assert "predict's default" in options["batch_size"].help
