#!/usr/bin/env bash
# mnist-robustness.sh: the classic MNIST robustness study.
#
#   Train on clean images, and on clean + augmented + "imperfect" images (thinner and thicker
#   strokes, shrunken and elastically distorted characters, made by imgcls perturb on the
#   training split); compare a CNN with a CNN-GRU hybrid; evaluate every model on the clean
#   test set and on perturbed test sets (rotation, shift, noise, blur, thin, thick, shrink,
#   occlusion at severities 1, 3 and 5) in one imgcls eval run: its robustness table gives
#   accuracy per perturbation and severity, the drop from clean, and the mean over perturbations.
#
# Usage:
#   examples/mnist-robustness.sh [DATA]
#
#   DATA  your images (a folder with one subfolder per class, a pre-split folder, or a
#         manifest). Without it: Fashion-MNIST from /usr/share/datasets/fashion-mnist (the
#         Debian package's IDX files, imported with imgcls prepare --import idx), or, if those
#         files are missing, and in a quick run, the built-in digits (imgcls prepare --sample digits).
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: digits, 20 training images per class, 2 epochs,
#                           fewer perturbations
#   OUT=DIR                 work folder (default example-out/mnist-robustness)
#   MAX_PER_CLASS=N         training images per class (default 1000; 0 = all)
#   EPOCHS=N                maximum epochs (default 15)
#
# Outputs (in OUT): data.jsonl, augmented.jsonl, imperfect.jsonl, mix.jsonl (clean + augmented
# + imperfect), test-perturbed.jsonl (+ the image folders); runs/{cnn-clean,cnn-mix,
# cnn-gru-mix}/; results/robustness.json (imgcls eval --json), results/summary.txt.
set -euo pipefail

NAME=mnist-robustness
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
FASHION=/usr/share/datasets/fashion-mnist
command -v imgcls >/dev/null || { echo "$NAME: imgcls is not on PATH (activate its virtual environment)" >&2; exit 1; }
mkdir -p "$OUT/runs" "$OUT/results"

if [ "$SMALL" = 1 ]; then
    CAP=20; EPOCHS=${EPOCHS:-2}; PATIENCE=2
    IMPERFECT=thin,thick,shrink; TEST_KINDS=rotation,gaussian_noise,thin,thick; TEST_LEVELS=1,5
else
    CAP=${MAX_PER_CLASS:-1000}; EPOCHS=${EPOCHS:-15}; PATIENCE=4
    IMPERFECT=thin,thick,shrink,elastic; TEST_KINDS=rotation,shift,gaussian_noise,blur,thin,thick,shrink,occlusion
    TEST_LEVELS=1,3,5
fi
PREPARE=(--seed 0)
if [ "$CAP" != 0 ]; then PREPARE+=(--max-per-class "$CAP"); fi
if [ $# -ge 1 ]; then
    imgcls prepare "$1" "${PREPARE[@]}" -o "$OUT/data.jsonl"
elif [ "$SMALL" != 1 ] && [ -d "$FASHION" ]; then
    imgcls prepare --import idx --class-names fashion-mnist "$FASHION" "$OUT/fashion-mnist" "${PREPARE[@]}" \
        -o "$OUT/data.jsonl"
else
    imgcls prepare --sample digits "$OUT/digits" "${PREPARE[@]}" -o "$OUT/data.jsonl"
fi

# ---- training data: clean + augmented copies + imperfect copies of the training images
# (val and test records pass through untouched; imgcls perturb --split train only reads train)
rm -rf "$OUT/augmented" "$OUT/imperfect" "$OUT/test-perturbed"
imgcls augment "$OUT/data.jsonl" --out "$OUT/augmented" --copies 1 --preset standard --no-flip \
    > "$OUT/augmented.jsonl"
imgcls perturb "$OUT/data.jsonl" --out "$OUT/imperfect" --split train --kinds "$IMPERFECT" --severity 1,2 \
    --no-clean > "$OUT/imperfect.jsonl"
# merge the two manifests (splits are kept; derived images stay with their originals)
imgcls prepare "$OUT/augmented.jsonl" "$OUT/imperfect.jsonl" -o "$OUT/mix.jsonl"

# ---- test sets: clean test images plus each perturbation at each level
imgcls perturb "$OUT/data.jsonl" --out "$OUT/test-perturbed" --kinds "$TEST_KINDS" --severity "$TEST_LEVELS" \
    > "$OUT/test-perturbed.jsonl"

# ---- models (no flips: a mirrored character is another character)
fresh() { rm -rf "$OUT/runs/$1"; echo "$OUT/runs/$1"; }
imgcls train "$OUT/data.jsonl" --arch cnn     --epochs "$EPOCHS" --patience "$PATIENCE" --out "$(fresh cnn-clean)" > /dev/null
imgcls train "$OUT/mix.jsonl"  --arch cnn     --epochs "$EPOCHS" --patience "$PATIENCE" --out "$(fresh cnn-mix)" > /dev/null
imgcls train "$OUT/mix.jsonl"  --arch cnn-gru --epochs "$EPOCHS" --patience "$PATIENCE" --out "$(fresh cnn-gru-mix)" > /dev/null

# ---- one evaluation: clean and perturbed accuracy for the three models
imgcls eval "$OUT/test-perturbed.jsonl" -m "$OUT/runs/cnn-clean" -m "$OUT/runs/cnn-mix" -m "$OUT/runs/cnn-gru-mix" \
    -o "$OUT/results/robustness.json"

python3 - "$OUT/results/robustness.json" <<'PY' | tee "$OUT/results/summary.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
models = [(m["model"]["name"], m["robustness"]) for m in doc["models"]]
fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"
print("accuracy".ljust(16) + "".join(f"{name:>16}" for name, _ in models))
print("clean".ljust(16) + "".join(f"{fmt(rob['clean']['accuracy']):>16}" for _, rob in models))
for i, row in enumerate(models[0][1]["perturbations"]):
    print(row["perturbation"].ljust(16) + "".join(f"{fmt(rob['perturbations'][i]['accuracy']):>16}" for _, rob in models))
print("mean perturbed".ljust(16) + "".join(f"{fmt(rob['mean_accuracy']):>16}" for _, rob in models))
print("mean rel. drop".ljust(16) + "".join(f"{fmt(rob['mean_relative_drop']):>16}" for _, rob in models))
PY
echo "results in $OUT/results/robustness.json (the robustness table is also in the report above)"
