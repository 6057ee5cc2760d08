#!/usr/bin/env bash
# cifar10-style.sh: the classic CIFAR-10 study: a 3-block CNN baseline against EfficientNet-B0
# transfer learning in two phases.
#
#   baseline  cnn-classic, trained from scratch: three conv-conv-pool blocks (32-32, 64-64,
#             128-128) with batch norm and dropout, then dense layers;
#   phase 1   EfficientNet-B0 frozen, a new head trained on its features;
#   phase 2   its last blocks unfrozen and fine-tuned at lower learning rates.
#   Compared on the test split; learning curves show the phase change.
#
# Usage:
#   examples/cifar10-style.sh [DATA]
#
#   DATA  your images: a folder with one subfolder per class, a pre-split folder, or an imgcls
#         manifest. Without it: CIFAR-10 when CIFAR=path/to/cifar-10-python.tar.gz is set
#         (imported with imgcls prepare --import cifar); else Fashion-MNIST from the Debian
#         package's files in /usr/share/datasets/fashion-mnist (imgcls prepare --import idx;
#         10 classes of 28x28 images, the same shape of problem); else the built-in digits.
#         A quick run (IMGCLS_EXAMPLE_SMALL=1) uses the built-in digits unless DATA is given.
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: digits, 20 training images per class, 2 epochs, 32 px,
#                           EfficientNet without pretrained weights (unless WEIGHTS)
#   OUT=DIR                 work folder (default example-out/cifar10-style)
#   CIFAR=FILE              cifar-10-python.tar.gz (or its extracted folder)
#   MAX_PER_CLASS=N         training images per class for the imported data sets (default 1000;
#                           0 = all of them; a CPU needs hours for all 50,000 CIFAR images)
#   UNFREEZE=N              EfficientNet-B0 blocks to fine-tune in phase 2 (default 3 of 9)
#   WEIGHTS=FILE            a state dict for efficientnet_b0, passed as --weights
#   IMAGE_SIZE=PX           EfficientNet input size (default 64 for 28-32 px data, 224 for yours)
#   REPORT=0                no --report pictures (they need matplotlib)
#
# Outputs (in OUT): data.jsonl; runs/{baseline,efficientnet-frozen,efficientnet-finetuned}/;
# results/comparison.json, results/report/, results/summary.txt.
set -euo pipefail

NAME=cifar10-style
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
UNFREEZE=${UNFREEZE:-3}
FASHION=/usr/share/datasets/fashion-mnist
command -v imgcls >/dev/null || { echo "$NAME: imgcls is not on PATH (activate its virtual environment)" >&2; exit 1; }
mkdir -p "$OUT/runs" "$OUT/results"

if [ "$SMALL" = 1 ]; then CAP=20; else CAP=${MAX_PER_CLASS:-1000}; fi
PREPARE=(--seed 0)
if [ "$CAP" != 0 ]; then PREPARE+=(--max-per-class "$CAP"); fi
DEFAULT_SIZE=64; FLIP=--flip
if [ $# -ge 1 ]; then
    imgcls prepare "$1" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    DEFAULT_SIZE=
elif [ "$SMALL" != 1 ] && [ -n "${CIFAR:-}" ]; then
    imgcls prepare --import cifar "$CIFAR" "$OUT/cifar10" "${PREPARE[@]}" -o "$OUT/data.jsonl"
elif [ "$SMALL" != 1 ] && [ -d "$FASHION" ]; then
    imgcls prepare --import idx --class-names fashion-mnist "$FASHION" "$OUT/fashion-mnist" "${PREPARE[@]}" \
        -o "$OUT/data.jsonl"
else
    imgcls prepare --sample digits "$OUT/digits" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    FLIP=--no-flip                             # a mirrored digit is another symbol
fi

if [ "$SMALL" = 1 ]; then
    EPOCHS=2; HEAD_EPOCHS=2; TUNE_EPOCHS=1; PATIENCE=2; DEFAULT_SIZE=32
else
    EPOCHS=30; HEAD_EPOCHS=10; TUNE_EPOCHS=10; PATIENCE=5
fi
SIZE=${IMAGE_SIZE:-$DEFAULT_SIZE}
PHASE1=(--arch efficientnet_b0 --freeze --epochs "$HEAD_EPOCHS" --patience "$PATIENCE")
if [ -n "$SIZE" ]; then PHASE1+=(--image-size "$SIZE"); fi
if [ -n "${WEIGHTS:-}" ]; then
    PHASE1+=(--weights "$WEIGHTS")
elif [ "$SMALL" = 1 ]; then
    PHASE1+=(--no-pretrained)
fi

fresh() { rm -rf "$OUT/runs/$1"; echo "$OUT/runs/$1"; }

# baseline: the classic 3-block CNN, standard augmentation (photos and clothes may be mirrored)
imgcls train "$OUT/data.jsonl" --arch cnn-classic --epochs "$EPOCHS" --patience "$PATIENCE" \
    --augment standard "$FLIP" --out "$(fresh baseline)" > /dev/null

# phase 1 -> phase 2 as one pipeline: finetune takes the model from the manifest's header
imgcls train "$OUT/data.jsonl" "${PHASE1[@]}" --out "$(fresh efficientnet-frozen)" \
    | imgcls finetune --unfreeze "$UNFREEZE" --epochs "$TUNE_EPOCHS" --out "$(fresh efficientnet-finetuned)" \
    > /dev/null

EVAL=(-m "$OUT/runs/baseline" -m "$OUT/runs/efficientnet-frozen" -m "$OUT/runs/efficientnet-finetuned")
if [ "${REPORT:-1}" != 0 ]; then rm -rf "$OUT/results/report"; EVAL+=(--report "$OUT/results/report"); fi
imgcls eval "$OUT/data.jsonl" "${EVAL[@]}" -o "$OUT/results/comparison.json"

python3 - "$OUT/results/comparison.json" <<'PY' | tee "$OUT/results/summary.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
print(f'{"model":<24} {"accuracy":>8} {"macro F1":>8} {"params":>10} {"images/s":>9}')
for row in doc["comparison"]:
    speed = row.get("images_per_second") or 0
    print(f'{row["model"]:<24} {row["accuracy"]:>8.3f} {row["macro_f1"]:>8.3f} {row["parameters"]:>10,} {speed:>9.0f}')
PY
echo "results in $OUT/results; learning curves: $OUT/runs/efficientnet-finetuned/learning_curves.png"
