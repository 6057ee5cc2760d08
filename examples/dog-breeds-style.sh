#!/usr/bin/env bash
# dog-breeds-style.sh: the classic "dog breeds" transfer-learning study.
#
#   1. a CNN from scratch without augmentation, and the same with on-the-fly augmentation
#      (and, for comparison, trained on offline augmented copies from imgcls augment);
#   2. VGG16 as a frozen feature extractor with a new head;
#   3. then its last blocks fine-tuned at a low learning rate (imgcls finetune).
#   All compared on the test split.
#
# Usage:
#   examples/dog-breeds-style.sh [DATA]
#
#   DATA  your images: a folder with one subfolder per class, a pre-split folder
#         (train/ val/ test/), or an imgcls manifest. Without it, the built-in digits sample
#         (imgcls prepare --sample digits: 1,797 8x8 digits, no download).
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: 20 training images per class, 2 epochs, 32 px backbone
#                           input, backbone without pretrained weights (unless WEIGHTS), no
#                           checkpoints for the backbone runs
#   OUT=DIR                 work folder (default example-out/dog-breeds-style); rerunning
#                           replaces the results of the previous run there
#   BACKBONE=ARCH           the pretrained backbone (default vgg16: 138 M parameters, a 530 MB
#                           model file per run; mobilenet_v2 is the light alternative)
#   UNFREEZE=N              backbone blocks to fine-tune (default 2: vgg16's last conv stage
#                           and its fully connected pair; imgcls train --list-archs)
#   WEIGHTS=FILE            a state dict for BACKBONE, passed as --weights
#   IMAGE_SIZE=PX           backbone input size (default: 224 for your data, 64 for digits)
#   REPORT=0                no --report pictures (they need matplotlib)
#
# Outputs (in OUT): data.jsonl, augmented.jsonl (+ augmented/), runs/{scratch,
# scratch-augment,scratch-offline,BACKBONE-features,BACKBONE-finetuned}/,
# results/comparison.json, results/report/, results/summary.txt.
set -euo pipefail

NAME=dog-breeds-style
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
BACKBONE=${BACKBONE:-vgg16}
UNFREEZE=${UNFREEZE:-2}
command -v imgcls >/dev/null || { echo "$NAME: imgcls is not on PATH (activate its virtual environment)" >&2; exit 1; }
mkdir -p "$OUT/runs" "$OUT/results"

PREPARE=(--seed 0)
if [ "$SMALL" = 1 ]; then PREPARE+=(--max-per-class 20); fi
if [ $# -ge 1 ]; then
    imgcls prepare "$1" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    FLIP=(--flip); DEFAULT_SIZE=
else
    imgcls prepare --sample digits "$OUT/digits" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    FLIP=(--no-flip); DEFAULT_SIZE=64
fi

if [ "$SMALL" = 1 ]; then
    EPOCHS=2; HEAD_EPOCHS=2; TUNE_EPOCHS=1; PATIENCE=2; DEFAULT_SIZE=32; COPIES=1
else
    EPOCHS=40; HEAD_EPOCHS=15; TUNE_EPOCHS=10; PATIENCE=6; COPIES=4
fi
SIZE=${IMAGE_SIZE:-$DEFAULT_SIZE}
BACKBONE_OPTS=(--freeze --epochs "$HEAD_EPOCHS" --patience "$PATIENCE")
if [ -n "$SIZE" ]; then BACKBONE_OPTS+=(--image-size "$SIZE"); fi
if [ -n "${WEIGHTS:-}" ]; then
    BACKBONE_OPTS+=(--weights "$WEIGHTS")
elif [ "$SMALL" = 1 ]; then
    BACKBONE_OPTS+=(--no-pretrained)
fi
TUNE_OPTS=()
if [ "$SMALL" = 1 ]; then
    # vgg16's model file is 530 MB; its checkpoint (for --resume) another 0.5-1.5 GB: skip it
    BACKBONE_OPTS+=(--no-checkpoint); TUNE_OPTS+=(--no-checkpoint)
fi

fresh() { rm -rf "$OUT/runs/$1"; echo "$OUT/runs/$1"; }

# ---- 1. scratch, without and with augmentation
imgcls train "$OUT/data.jsonl" --arch cnn --epochs "$EPOCHS" --patience "$PATIENCE" \
    --out "$(fresh scratch)" > /dev/null
imgcls train "$OUT/data.jsonl" --arch cnn --epochs "$EPOCHS" --patience "$PATIENCE" \
    --augment standard "${FLIP[@]}" --out "$(fresh scratch-augment)" > /dev/null
# offline: COPIES stored augmented copies of every training image (val and test untouched)
rm -rf "$OUT/augmented"
imgcls augment "$OUT/data.jsonl" --out "$OUT/augmented" --copies "$COPIES" --preset standard "${FLIP[@]}" \
    > "$OUT/augmented.jsonl"
imgcls train "$OUT/augmented.jsonl" --arch cnn --epochs "$EPOCHS" --patience "$PATIENCE" \
    --out "$(fresh scratch-offline)" > /dev/null

# ---- 2. frozen backbone as a feature extractor (its features are computed once)
imgcls train "$OUT/data.jsonl" --arch "$BACKBONE" "${BACKBONE_OPTS[@]}" --out "$(fresh "$BACKBONE-features")" \
    > /dev/null

# ---- 3. fine-tune its last blocks (lower learning rates; the frozen model is the mark to beat)
imgcls finetune "$OUT/data.jsonl" --model "$OUT/runs/$BACKBONE-features" --unfreeze "$UNFREEZE" \
    --epochs "$TUNE_EPOCHS" ${TUNE_OPTS[@]+"${TUNE_OPTS[@]}"} --out "$(fresh "$BACKBONE-finetuned")" > /dev/null

EVAL=()
for run in scratch scratch-augment scratch-offline "$BACKBONE-features" "$BACKBONE-finetuned"; do
    EVAL+=(-m "$OUT/runs/$run")
done
if [ "${REPORT:-1}" != 0 ]; then rm -rf "$OUT/results/report"; EVAL+=(--report "$OUT/results/report"); fi
imgcls eval "$OUT/data.jsonl" "${EVAL[@]}" -o "$OUT/results/comparison.json"

python3 - "$OUT/results/comparison.json" <<'PY' | tee "$OUT/results/summary.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
print(f'{"model":<26} {"accuracy":>8} {"macro F1":>8} {"ECE":>6}')
for row in doc["comparison"]:
    print(f'{row["model"]:<26} {row["accuracy"]:>8.3f} {row["macro_f1"]:>8.3f} {row["ece"]:>6.3f}')
PY
echo "results in $OUT/results"
