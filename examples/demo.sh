#!/bin/sh
# demo.sh: what `make demo` runs: the whole imgcls pipeline on the built-in digits sample.
#
#   prepare (1,797 8x8 handwritten digits from scikit-learn: no download) | train a scratch CNN
#   | eval (report on the terminal, pictures in DEMO/report/), then predict one image.
#
# Usage:
#   sh examples/demo.sh [DEMO]        DEMO: the folder to work in (default: demo); rerunning
#                                     into the same folder reuses the images and adds a new run
#
#   With imgcls on PATH (make demo puts .venv/bin first). About a minute on a 2-core CPU.
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1   a quick run (2 epochs, 20 training images per class), for the tests
set -eu

DEMO=${1:-demo}
if [ "${IMGCLS_EXAMPLE_SMALL:-0}" = 1 ]; then
    EPOCHS=2; CAP="--max-per-class 20"
else
    EPOCHS=10; CAP=""
fi
command -v imgcls >/dev/null 2>&1 || { echo "demo: imgcls is not on PATH (run: make demo)" >&2; exit 1; }
mkdir -p "$DEMO"
cd "$DEMO"

echo "== imgcls prepare: images -> a checked, split manifest" >&2
# shellcheck disable=SC2086  # CAP is empty or two words
imgcls prepare --sample digits digits/ $CAP -o digits.jsonl

echo "== imgcls train: a scratch CNN; the run folder is runs/<time>-cnn, runs/latest points at it" >&2
imgcls train digits.jsonl --arch cnn --epochs "$EPOCHS" -o trained.jsonl

echo "== imgcls eval: the test split, with the model named in trained.jsonl's header" >&2
if python3 -c 'import matplotlib' 2>/dev/null; then    # the charts need the plots extra
    imgcls eval trained.jsonl --report report/
else
    imgcls eval trained.jsonl
fi

echo "== imgcls predict: one image, with runs/latest" >&2
imgcls predict digits/3/00003.png

echo "== done: $DEMO/digits.jsonl, $DEMO/runs/latest/, $DEMO/report/" >&2
