#!/usr/bin/env bash
# flowers-style.sh: the classic "flowers" small-data study.
#
#   A CNN trained from scratch with early stopping, against a DenseNet121 used as a frozen
#   feature extractor; then the scratch CNN with reduced capacity and with stronger
#   regularisation. All four compared on the test split: metrics, confusion matrices,
#   learning curves, calibration, and an error analysis of the scratch model's mistakes.
#
# Usage:
#   examples/flowers-style.sh [DATA]
#
#   DATA  your images: a folder with one subfolder per class (flowers/daisy/*.jpg, ...), a
#         pre-split folder (train/ val/ test/), or an imgcls manifest. Without it, the built-in
#         digits sample (imgcls prepare --sample digits: 1,797 8x8 digits, no download).
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: 20 training images per class, 2 epochs, 32 px
#                           backbone input, backbone without pretrained weights (unless WEIGHTS)
#   OUT=DIR                 work folder (default example-out/flowers-style); rerunning replaces
#                           the results of the previous run there
#   BACKBONE=ARCH           the pretrained backbone (default densenet121)
#   WEIGHTS=FILE            a state dict for BACKBONE, passed as --weights (for machines that
#                           cannot download torchvision's weights)
#   IMAGE_SIZE=PX           backbone input size (default: 224 for your data, 64 for digits)
#   EPOCHS=N                maximum epochs of the scratch models (default 40; early stopping)
#   REPORT=0                no --report pictures (they need matplotlib: pip install 'imgcls[plots]')
#
# Outputs (in OUT): data.jsonl; runs/{scratch,smaller,regularised,BACKBONE-frozen}/ (model,
# history.jsonl, learning_curves.png); results/comparison.json (imgcls eval --json),
# results/report/<model>/*.png, results/predictions-scratch.jsonl, results/errors.tsv,
# results/summary.txt.
set -euo pipefail

NAME=flowers-style
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
BACKBONE=${BACKBONE:-densenet121}
command -v imgcls >/dev/null || { echo "$NAME: imgcls is not on PATH (activate its virtual environment)" >&2; exit 1; }
mkdir -p "$OUT/runs" "$OUT/results"

# ---- data
PREPARE=(--seed 0)
if [ "$SMALL" = 1 ]; then PREPARE+=(--max-per-class 20); fi
if [ $# -ge 1 ]; then
    imgcls prepare "$1" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    FLIP=(--flip); DEFAULT_SIZE=
else
    imgcls prepare --sample digits "$OUT/digits" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    FLIP=(--no-flip); DEFAULT_SIZE=64          # digits: mirror images are other symbols; 8 px images
fi

# ---- settings: small mode or real use
if [ "$SMALL" = 1 ]; then
    EPOCHS=${EPOCHS:-2}; HEAD_EPOCHS=2; PATIENCE=2; DEFAULT_SIZE=32
else
    EPOCHS=${EPOCHS:-40}; HEAD_EPOCHS=15; PATIENCE=6
fi
SIZE=${IMAGE_SIZE:-$DEFAULT_SIZE}
BACKBONE_OPTS=(--freeze --epochs "$HEAD_EPOCHS" --patience "$PATIENCE")
if [ -n "$SIZE" ]; then BACKBONE_OPTS+=(--image-size "$SIZE"); fi
if [ -n "${WEIGHTS:-}" ]; then
    BACKBONE_OPTS+=(--weights "$WEIGHTS")
elif [ "$SMALL" = 1 ]; then
    BACKBONE_OPTS+=(--no-pretrained)           # no download in a quick run: the pipeline, not the numbers
fi

train() {  # train NAME OPTIONS...: a fresh run folder OUT/runs/NAME
    local run=$OUT/runs/$1; shift
    rm -rf "$run"
    imgcls train "$OUT/data.jsonl" --out "$run" "$@" > /dev/null
}

# ---- the four models
train scratch     --arch cnn --epochs "$EPOCHS" --patience "$PATIENCE"
# capacity reduction: half the width, one block less (about 1/10 of the parameters)
train smaller     --arch cnn --width 16 --depth 3 --epochs "$EPOCHS" --patience "$PATIENCE"
# stronger regularisation: more dropout, more weight decay, on-the-fly augmentation
train regularised --arch cnn --dropout 0.5 --block-dropout 0.3 --weight-decay 0.05 \
                  --augment standard "${FLIP[@]}" --epochs "$EPOCHS" --patience "$PATIENCE"
train "$BACKBONE-frozen" --arch "$BACKBONE" "${BACKBONE_OPTS[@]}"

# ---- side by side on the test split: one JSON document, pictures per model
EVAL=(-m "$OUT/runs/scratch" -m "$OUT/runs/smaller" -m "$OUT/runs/regularised" -m "$OUT/runs/$BACKBONE-frozen")
if [ "${REPORT:-1}" != 0 ]; then
    rm -rf "$OUT/results/report"
    EVAL+=(--report "$OUT/results/report")
fi
imgcls eval "$OUT/data.jsonl" "${EVAL[@]}" -o "$OUT/results/comparison.json"

# ---- error analysis of the scratch model: every test mistake, most confident first
imgcls eval "$OUT/data.jsonl" -m "$OUT/runs/scratch" -q --predictions "$OUT/results/predictions-scratch.jsonl"
python3 - "$OUT/results/predictions-scratch.jsonl" "$OUT/results/errors.tsv" <<'PY'
import collections, json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
errors = sorted((r for r in rows if "pred" in r and r["pred"] != r.get("label")), key=lambda r: -r["prob"])
with open(sys.argv[2], "w") as out:
    out.write("prob\tlabel\tpred\tpath\n")
    for r in errors:
        out.write(f'{r["prob"]:.3f}\t{r["label"]}\t{r["pred"]}\t{r["path"]}\n')
pairs = collections.Counter((r["label"], r["pred"]) for r in errors)
print(f"scratch model: {len(errors)} mistakes; most confused (true -> predicted):",
      ", ".join(f"{a} -> {b} ({n})" for (a, b), n in pairs.most_common(5)) or "none")
PY

# ---- summary
python3 - "$OUT/results/comparison.json" <<'PY' | tee "$OUT/results/summary.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
print(f'{"model":<24} {"accuracy":>8} {"macro F1":>8} {"ECE":>6} {"params":>10}')
for row in doc["comparison"]:
    print(f'{row["model"]:<24} {row["accuracy"]:>8.3f} {row["macro_f1"]:>8.3f} {row["ece"]:>6.3f} {row["parameters"]:>10,}')
PY
echo "results in $OUT/results (comparison.json, errors.tsv, report/)"
