"""``imgcls audit --html FILE``: the findings as one self-contained page, built like eval's report.

The same page skeleton, stylesheet, Content-Security-Policy, table sorting script and
escaping builder as ``eval --html`` (:mod:`imgcls.evaluation.html`), so the two pages look
and behave alike; thumbnails come from :mod:`imgcls.evaluation.htmlassets`. Every number
is the ``--json`` document's, which the page embeds (``script#imgcls-audit-data``). Only the
images shown are read: the --top suspects and the members of the listed duplicate groups.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgcls.evaluation.html import (CSP, CSS, DASH, SCRIPT, Markup, _img, _script_hash, el, join, note, num,
                                    numcell, raw_value, script_json, section, table)


class _Thumbs:
    def __init__(self) -> None:
        self.cache: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self.cache:
            from imgcls.evaluation.htmlassets import _open, thumbnail_uri

            img = _open(path)
            self.cache[path] = thumbnail_uri(img) if img is not None else None
        return self.cache[path]


def _figure(thumb: str | None, alt: str, lines: list[Any], path: str) -> Markup:
    return el("figure", el("div", el("div", _img(thumb, alt)), class_="pics"),
              el("figcaption", [[line, el("br")] for line in lines], el("code", path)), class_="mistake")


def _summary(doc: dict[str, Any]) -> Markup:
    c = doc["counts"]
    rows = [["images audited", numcell(c["records"])], ["labelled", numcell(c["labelled"])],
            ["flagged (records with \"audit\")", numcell(c["flagged"])],
            ["suspected label errors", numcell(c["label"])],
            ["near-duplicate copies (groups)", numcell(c["duplicate"], f"{num(c['duplicate'])} ({num(c['duplicate_groups'])})")],
            ["of them leaking across splits (groups)", numcell(c["leak"], f"{num(c['leak'])} ({num(c['leak_groups'])})")],
            ["outliers", numcell(c["outlier"])], ["ambiguous", numcell(c["ambiguous"])]]
    s = doc["settings"]
    emb = s.get("embedding") or {}
    labels = doc.get("labels") or {}
    facts = [("manifest", doc.get("manifest")), ("features", f"{emb.get('weights')}, {emb.get('image_size')} px"),
             ("checks", ", ".join(s.get("checks") or [])),
             ("label check", f"{labels.get('folds')}-fold probe ({labels.get('fold_source')}), out-of-fold accuracy "
                             f"{num(labels.get('probe_accuracy'))}; cleanlab flagged {labels.get('cleanlab_issues')}, "
                             f"kept those with score < {labels.get('max_score')}" if labels else DASH),
             ("near-duplicates", f"{(doc.get('duplicates') or {}).get('candidates', DASH)} candidate pairs registered; "
                                 f"copies: grey residual <= {s.get('duplicate_residual')}"),
             ("time", f"{doc['timing'].get('total_s')} s"), ("imgcls", doc.get("imgcls_version"))]
    return section("summary", "Summary", table(["", "count"], rows, sortable=False, id="summary-table",
                                                caption="Findings"),
                   el("dl", [[el("dt", k), el("dd", DASH if v is None else str(v))] for k, v in facts], class_="facts"),
                   note("Flagged records carry an \"audit\" object in the manifest audit writes; "
                        "jq -c 'select(.audit == null)' keeps the others (and the header)."))


def _groups(groups: list[dict[str, Any]], thumbs: _Thumbs, top: int, anchor: str) -> Markup:
    if not groups:
        return note("None found.")
    figures = []
    for g in groups[:top]:
        cells = []
        for m in g["members"]:
            role = "kept" if m["kept"] else f"copy: residual {num(m['residual'])}, similarity {num(m['similarity'])}"
            cells.append(el("div", _img(thumbs(m["path"]), f"{m['split']} image of {m['label']}"),
                            el("span", f"{m['split'] or DASH} \u00b7 {m['label'] or DASH}", class_="cap"),
                            el("span", role, class_="cap"), el("code", m["path"])))
        figures.append(el("figure", el("div", cells, class_="pics"), class_="mistake"))
    more = [note(f"... and {len(groups) - top} more groups (see the JSON document).")] if len(groups) > top else []
    return join([el("div", figures, class_="gallery", id=anchor), *more])


def render_page(result: Any, top: int, generated: datetime | None = None) -> str:
    doc = result.document
    thumbs = _Thumbs()
    body = [_summary(doc)]
    body.append(section("leakage", "Leakage across splits", note(
        "Groups of near-identical images in more than one of train, val and test: held-out scores count them as "
        "new images. The kept copy is the most held-out one; the others are flagged."),
        _groups(doc.get("leakage") or [], thumbs, top, "leakage-gallery")))
    labels = doc.get("labels")
    if labels is not None:
        figs = [_figure(thumbs(it["path"]), f"image labelled {it['given']}, perhaps {it['suggested']}",
                        [el("span", "given ", el("b", it["given"])),
                         el("span", "suggested ", el("b", it["suggested"]), " p=",
                            el("span", num(it["p_suggested"]), data_value=raw_value(it["p_suggested"]))),
                         el("span", "score ", el("span", num(it["score"]), data_value=raw_value(it["score"])),
                            f" \u00b7 {it['split'] or DASH}")], it["path"]) for it in labels["issues"][:top]]
        rows = [[it["path"], el("td", it["split"]), el("td", it["given"]), el("td", it["suggested"]),
                 numcell(it["score"]), numcell(it["p_given"]), numcell(it["p_suggested"])] for it in labels["issues"]]
        body.append(section("labels", "Suspected label errors", note(
            f"{len(labels['issues'])} of {num(labels['checked'])} labels, lowest label-quality score first (the "
            f"out-of-fold probability of the given label); the first {min(top, len(labels['issues']))} as pictures."),
            el("div", figs, class_="gallery", id="labels-gallery") if figs else note("None found."),
            el("details", el("summary", "all as a table"),
               table(["path", "split", "given", "suggested", "score", "p(given)", "p(suggested)"], rows,
                     id="labels-table"))))
    dups = doc.get("duplicates")
    if dups is not None:
        within = [g for g in dups["groups"] if not g["leak"]]
        body.append(section("duplicates", "Near-duplicates within a split", _groups(within, thumbs, top, "dup-gallery")))
    outl = doc.get("outliers")
    if outl is not None:
        figs = [_figure(thumbs(it["path"]), f"outlier labelled {it['label']}",
                        [el("span", "label ", el("b", it["label"] or DASH)),
                         el("span", f"mean distance {num(it['distance'])} (fence {num(it['fence'])})"),
                         el("span", f"nearest class {it['nearest_class'] or DASH}")], it["path"])
                for it in outl["items"][:top]]
        body.append(section("outliers", "Outliers", note("Far from every other image in feature space: the mean "
                                                         "cosine distance to the nearest neighbours is above the "
                                                         "upper fence."),
                            el("div", figs, class_="gallery", id="outliers-gallery") if figs else note("None found.")))
    amb = doc.get("ambiguous")
    if amb is not None:
        figs = [_figure(thumbs(it["path"]), f"ambiguous image labelled {it['label']}",
                        [el("span", "label ", el("b", it["label"] or DASH)),
                         el("span", " / ".join(f"{c} {num(p)}" for c, p in zip(it["between"], it["probs"])))],
                        it["path"]) for it in amb["items"][:top]]
        body.append(section("ambiguous", "Ambiguous images", note("The out-of-fold probabilities split between two "
                                                                  "labels."),
                            el("div", figs, class_="gallery", id="ambiguous-gallery") if figs else note("None found.")))
    nav = [el("li", el("a", title, href=f"#{a}")) for a, title in
           (("summary", "Summary"), ("leakage", "Leakage"), ("labels", "Label errors"), ("duplicates", "Duplicates"),
            ("outliers", "Outliers"), ("ambiguous", "Ambiguous"))]
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    title = f"imgcls audit: {doc.get('manifest')}"
    head = join([Markup('<meta charset="utf-8">'),
                 el("meta", http_equiv="Content-Security-Policy", content=CSP.format(hash=_script_hash(SCRIPT))),
                 el("meta", name="viewport", content="width=device-width, initial-scale=1"),
                 el("meta", name="generator", content=f"imgcls {doc.get('imgcls_version')}"),
                 el("link", rel="icon", href="data:,"), el("title", title), Markup(f"<style>{CSS}</style>")])
    page = join([Markup("<!DOCTYPE html>\n"), Markup('<html lang="en">'), el("head", head), Markup("<body>"),
                 el("header", el("h1", "imgcls audit report"), el("p", str(doc.get("manifest")), class_="meta"),
                    el("nav", el("ul", nav), aria_label="sections")),
                 el("main", body),
                 el("footer", f"Written {when} by imgcls {doc.get('imgcls_version')} from the same document imgcls "
                              f"audit --json writes; it is embedded in this page as JSON (script#imgcls-audit-data)."),
                 Markup('<script type="application/json" id="imgcls-audit-data">'), Markup(script_json(doc)),
                 Markup("</script>"), Markup(f"<script>{SCRIPT}</script>"), Markup("</body></html>\n")])
    return str(page)


def write_page(result: Any, path: Path, top: int) -> Path:
    from imgcls.fsutil import write_text_atomic
    from imgcls.training._console import info

    text = render_page(result, top)
    write_text_atomic(path, text)
    info(f"HTML report written to {path} ({len(text.encode('utf-8')) / 1e6:.1f} MB)")
    return Path(path)
