"""Where several models disagree: the ``agreement`` block of the eval document.

Computed on the records every model scored (with ``--ignore-unknown`` models with
different classes may score different subsets), by label name, so models whose class
lists differ in order still compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any


def agreement(evaluations: Sequence[Any], n_examples: int = 10) -> dict[str, Any] | None:
    """Counts of images all/some/no models got right, per pair, and the most confident disagreements.

    ``evaluations`` are :class:`~imgcls.evaluation.evaluate.ModelEvaluation` objects of one
    selection (their ``records`` are the selection's own record objects). None for one model.
    """
    if len(evaluations) < 2:
        return None
    where = [{id(r): i for i, r in enumerate(ev.records)} for ev in evaluations]
    common = [(id(r), r) for r in evaluations[0].records if all(id(r) in w for w in where[1:])]
    names = [ev.report["model"]["name"] for ev in evaluations]
    # per model, per common record: (predicted label, its probability, right?)
    answers: list[list[tuple[str, float, bool]]] = []
    for ev, w in zip(evaluations, where):
        classes = ev.info.classes
        rows = []
        for key, record in common:
            p = ev.probs[w[key]]
            k = int(p.argmax())
            rows.append((classes[k], float(p[k]), classes[k] == record["label"]))
        answers.append(rows)
    n = len(common)
    right = [[a[j][2] for a in answers] for j in range(n)]
    same = [len({a[j][0] for a in answers}) == 1 for j in range(n)]
    pairs = []
    for a, b in combinations(range(len(evaluations)), 2):
        ra, rb = [x[2] for x in answers[a]], [x[2] for x in answers[b]]
        pairs.append({
            "a": names[a], "b": names[b],
            "both_right": sum(x and y for x, y in zip(ra, rb)),
            "only_a_right": sum(x and not y for x, y in zip(ra, rb)),
            "only_b_right": sum(y and not x for x, y in zip(ra, rb)),
            "both_wrong": sum(not x and not y for x, y in zip(ra, rb)),
            "same_prediction": sum(pa[0] == pb[0] for pa, pb in zip(answers[a], answers[b])),
        })
    split = [j for j in range(n) if any(right[j]) and not all(right[j])]
    # the most confident wrong answer among the models first: the disagreements most worth a look
    split.sort(key=lambda j: -max(a[j][1] for a in answers if not a[j][2]))
    examples = [{
        "path": str(evaluations[0].paths[where[0][common[j][0]]]),
        "true": common[j][1]["label"],
        "predictions": [{"model": names[m], "pred": answers[m][j][0], "prob": answers[m][j][1],
                         "correct": answers[m][j][2]} for m in range(len(evaluations))],
    } for j in split[:n_examples]]
    return {
        "models": names,
        "n_images": n,
        "all_right": sum(all(r) for r in right),
        "all_wrong": sum(not any(r) for r in right),
        "some_right": len(split),
        "same_prediction": sum(same),
        "pairs": pairs,
        "examples": examples,
    }
