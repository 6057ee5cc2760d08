#!/usr/bin/env bash
# top-n-mobilenet.sh: the classic "top-N classes of a large data set" study with MobileNet
# transfer learning.
#
#   Keep the N classes with the most usable images (imgcls prepare --top N), train a head on a
#   frozen MobileNetV2, fine-tune its last blocks, compare both on the test split, and label a
#   few test images with the final model (imgcls predict).
#
# Usage:
#   examples/top-n-mobilenet.sh [DATA]
#
#   DATA  a large data set: a folder with one subfolder per class (or a pre-split folder, or a
#         manifest). Without it: Fashion-MNIST from /usr/share/datasets/fashion-mnist (the
#         Debian package's IDX files), or, if missing and in a quick run, the built-in digits.
#         Both have 10 classes of similar size, so the default N is 5 for them (10 for yours).
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: digits, 20 training images per class, 2 epochs, 32 px,
#                           no pretrained weights unless WEIGHTS is set
#   OUT=DIR                 work folder (default example-out/top-n-mobilenet)
#   TOP=N                   how many classes to keep
#   WEIGHTS=FILE            a mobilenet_v2 state dict passed as --weights, for machines that cannot
#                           download torchvision's weights (any .safetensors or .pth state dict of
#                           torchvision.models.mobilenet_v2; its mean/std metadata are used)
#   MAX_PER_CLASS=N         training images per class (default 500; 0 = all)
#   UNFREEZE=N              MobileNetV2 blocks to fine-tune (default 3 of 9)
#   IMAGE_SIZE=PX           input size (default 224 for your data, 96 for the 28 px default data)
#
# Outputs (in OUT): data.jsonl; runs/{mobilenet-frozen,mobilenet-finetuned}/;
# results/comparison.json, results/predictions.jsonl, results/summary.txt.
set -euo pipefail

NAME=top-n-mobilenet
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
UNFREEZE=${UNFREEZE:-3}
FASHION=/usr/share/datasets/fashion-mnist
command -v imgcls >/dev/null || { echo "$NAME: imgcls is not on PATH (activate its virtual environment)" >&2; exit 1; }
mkdir -p "$OUT/runs" "$OUT/results"

if [ "$SMALL" = 1 ]; then
    CAP=20; HEAD_EPOCHS=2; TUNE_EPOCHS=1; PATIENCE=2; DEFAULT_SIZE=32
else
    CAP=${MAX_PER_CLASS:-500}; HEAD_EPOCHS=10; TUNE_EPOCHS=8; PATIENCE=4; DEFAULT_SIZE=96
fi
PREPARE=(--seed 0)
if [ "$CAP" != 0 ]; then PREPARE+=(--max-per-class "$CAP"); fi
if [ $# -ge 1 ]; then
    TOP=${TOP:-10}
    imgcls prepare "$1" --top "$TOP" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    if [ "$SMALL" != 1 ]; then DEFAULT_SIZE=; fi
else
    TOP=${TOP:-5}
    if [ "$SMALL" != 1 ] && [ -d "$FASHION" ]; then
        imgcls prepare --import idx --class-names fashion-mnist "$FASHION" "$OUT/fashion-mnist" \
            --top "$TOP" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    else
        imgcls prepare --sample digits "$OUT/digits" --top "$TOP" "${PREPARE[@]}" -o "$OUT/data.jsonl"
    fi
fi

SIZE=${IMAGE_SIZE:-$DEFAULT_SIZE}
PHASE1=(--arch mobilenet_v2 --freeze --epochs "$HEAD_EPOCHS" --patience "$PATIENCE")
if [ -n "$SIZE" ]; then PHASE1+=(--image-size "$SIZE"); fi
if [ -n "${WEIGHTS:-}" ]; then
    PHASE1+=(--weights "$WEIGHTS")
elif [ "$SMALL" = 1 ]; then
    PHASE1+=(--no-pretrained)
fi

fresh() { rm -rf "$OUT/runs/$1"; echo "$OUT/runs/$1"; }
imgcls train "$OUT/data.jsonl" "${PHASE1[@]}" --out "$(fresh mobilenet-frozen)" > /dev/null
imgcls finetune "$OUT/data.jsonl" --model "$OUT/runs/mobilenet-frozen" --unfreeze "$UNFREEZE" \
    --epochs "$TUNE_EPOCHS" --out "$(fresh mobilenet-finetuned)" > /dev/null

imgcls eval "$OUT/data.jsonl" -m "$OUT/runs/mobilenet-frozen" -m "$OUT/runs/mobilenet-finetuned" \
    -o "$OUT/results/comparison.json"

# label a few test images (the first of each class) with the fine-tuned model: paths in, one
# JSON line per image out
python3 - "$OUT/data.jsonl" <<'PY' > "$OUT/results/sample-paths.txt"
import json, os, sys
header, seen = {}, set()
for line in open(sys.argv[1]):
    record = json.loads(line)
    if record.get("format") == "imgcls-manifest":
        header = record
    elif record.get("split") == "test" and record.get("label") not in seen:
        seen.add(record.get("label"))
        path = record["path"]
        print(path if os.path.isabs(path) else os.path.join(header.get("root", "."), path))
PY
imgcls predict - --model "$OUT/runs/mobilenet-finetuned" --top-k 2 < "$OUT/results/sample-paths.txt" \
    > "$OUT/results/predictions.jsonl"

python3 - "$OUT/results/comparison.json" "$OUT/results/predictions.jsonl" <<'PY' | tee "$OUT/results/summary.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
for row in doc["comparison"]:
    print(f'{row["model"]:<22} accuracy {row["accuracy"]:.3f}  macro F1 {row["macro_f1"]:.3f}  {row["images_per_second"]:.0f} images/s')
for line in open(sys.argv[2]):
    p = json.loads(line)
    print(f'  predicted {p.get("label", "?"):>12} ({p.get("prob", 0):.2f})  {p["path"]}')
PY
echo "results in $OUT/results"
