#!/usr/bin/env bash
# kfold-sweep.sh: k-fold cross-validation and a small hyper-parameter sweep, as a shell loop.
#
#   imgcls prepare --folds K assigns every training image a fold (stratified; duplicates share
#   one); the test split is set aside. For each setting of the sweep and each fold k, the
#   manifest is rewritten so that fold k is the validation split and the other folds train,
#   a model is trained, and imgcls eval --split val --json scores it on fold k. The setting
#   with the best mean accuracy over the folds is then trained on all training images and
#   evaluated once on the untouched test split.
#
# Usage:
#   examples/kfold-sweep.sh [DATA]
#
#   DATA  your images (a folder with one subfolder per class, or a manifest). Without it, the
#         built-in digits sample (imgcls prepare --sample digits).
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: 2 folds, 20 training images per class, 2 epochs
#   OUT=DIR                 work folder (default example-out/kfold-sweep)
#   FOLDS=K                 number of folds (default 5)
#   SWEEP="A;B;..."         the settings to compare, each a list of imgcls train options,
#                           separated by ";" (default: "--width 16 --depth 3;--width 32 --depth 4")
#   EPOCHS=N                maximum epochs per model (default 30, with early stopping)
#
# Outputs (in OUT): data.jsonl; folds/fold-K.jsonl; runs/setting-S-fold-K/; results/setting-S-
# fold-K.json (imgcls eval --json), results/sweep.tsv (setting, fold, accuracy), results/best/
# (final model) and results/test.json, results/summary.txt.
#
# No jq needed: the two small JSON jobs are python3 one-liners. With jq, the fold rewrite is
#   jq -c --argjson k "$k" 'if .fold != null then .split = (if .fold == $k then "val" else "train" end) else . end'
set -euo pipefail

NAME=kfold-sweep
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
SWEEP=${SWEEP:---width 16 --depth 3;--width 32 --depth 4}
command -v imgcls >/dev/null || { echo "$NAME: imgcls is not on PATH (activate its virtual environment)" >&2; exit 1; }
mkdir -p "$OUT/runs" "$OUT/results" "$OUT/folds"

if [ "$SMALL" = 1 ]; then
    FOLDS=${FOLDS:-2}; EPOCHS=${EPOCHS:-2}; PATIENCE=2; CAP=(--max-per-class 20)
else
    FOLDS=${FOLDS:-5}; EPOCHS=${EPOCHS:-30}; PATIENCE=5; CAP=()
fi
# --val 0: no fixed validation split, the folds take its place; the test split stays apart
PREPARE=(--seed 0 --val 0 --folds "$FOLDS" ${CAP[@]+"${CAP[@]}"})
if [ $# -ge 1 ]; then
    imgcls prepare "$1" "${PREPARE[@]}" -o "$OUT/data.jsonl"
else
    imgcls prepare --sample digits "$OUT/digits" "${PREPARE[@]}" -o "$OUT/data.jsonl"
fi

fold_manifest() {  # fold_manifest K: fold K becomes the val split, the other folds train
    python3 -c '
import json, sys
k = int(sys.argv[1])
for line in sys.stdin:
    if line.strip():
        record = json.loads(line)
        if record.get("fold") is not None:
            record["split"] = "val" if record["fold"] == k else "train"
        print(json.dumps(record))
' "$1" < "$OUT/data.jsonl" > "$OUT/folds/fold-$1.jsonl"
}

accuracy() {  # accuracy FILE.json: the first model's accuracy in an imgcls eval document
    python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["models"][0]["metrics"]["accuracy"], 4))' "$1"
}

for ((k = 0; k < FOLDS; k++)); do fold_manifest "$k"; done

printf 'setting\tfold\taccuracy\toptions\n' > "$OUT/results/sweep.tsv"
IFS=';' read -r -a SETTINGS <<< "$SWEEP"
for s in "${!SETTINGS[@]}"; do
    read -r -a OPTIONS <<< "${SETTINGS[$s]}"
    for ((k = 0; k < FOLDS; k++)); do
        run=$OUT/runs/setting-$s-fold-$k
        rm -rf "$run"
        imgcls train "$OUT/folds/fold-$k.jsonl" --arch cnn ${OPTIONS[@]+"${OPTIONS[@]}"} --epochs "$EPOCHS" \
            --patience "$PATIENCE" --out "$run" -q > /dev/null
        imgcls eval "$OUT/folds/fold-$k.jsonl" -m "$run" --split val -q --json > "$OUT/results/setting-$s-fold-$k.json"
        printf '%s\t%s\t%s\t%s\n' "$s" "$k" "$(accuracy "$OUT/results/setting-$s-fold-$k.json")" "${SETTINGS[$s]}" \
            >> "$OUT/results/sweep.tsv"
    done
done

# mean and spread per setting; the best one (highest mean accuracy)
BEST=$(python3 - "$OUT/results/sweep.tsv" <<'PY'
import collections, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])][1:]
scores = collections.defaultdict(list)
options = {}
for setting, fold, acc, opts in rows:
    scores[int(setting)].append(float(acc))
    options[int(setting)] = opts
for s, accs in sorted(scores.items()):
    spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"setting {s} ({options[s]}): mean accuracy {statistics.mean(accs):.3f} +- {spread:.3f} over {len(accs)} folds",
          file=sys.stderr)
print(max(scores, key=lambda s: statistics.mean(scores[s])))
PY
)
read -r -a OPTIONS <<< "${SETTINGS[$BEST]}"

# the chosen setting on all training images (train holds out a validation fraction for early
# stopping, with a warning), then the one look at the test split
rm -rf "$OUT/results/best"
imgcls train "$OUT/data.jsonl" --arch cnn ${OPTIONS[@]+"${OPTIONS[@]}"} --epochs "$EPOCHS" --patience "$PATIENCE" \
    --out "$OUT/results/best" > /dev/null
imgcls eval "$OUT/data.jsonl" -m "$OUT/results/best" -q --json > "$OUT/results/test.json"
{
    echo "best setting: ${SETTINGS[$BEST]}"
    echo "test accuracy: $(accuracy "$OUT/results/test.json")"
} | tee "$OUT/results/summary.txt"
