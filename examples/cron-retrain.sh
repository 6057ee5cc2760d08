#!/usr/bin/env bash
# cron-retrain.sh: nightly retraining on a growing folder of images; keeps the better model.
#
#   Each run prepares the folder (same seed every night), trains a candidate model into
#   OUT/runs/<time>, evaluates the current model and the candidate on the same test images,
#   and, when the candidate is better, atomically repoints OUT/current at it; otherwise the
#   candidate is deleted. Serve or predict with OUT/current:
#       imgcls predict --model OUT/current photo.jpg      (or IMGCLS_MODEL=OUT/current)
#
#   Made for cron: no terminal needed (imgcls prints plain lines when stderr is not one),
#   everything goes to OUT/retrain.log, one line per run to OUT/history.tsv, a lock stops two
#   runs from overlapping, and a failed run leaves OUT/current as it was (and says so on
#   stderr, which cron mails). Example crontab line (crontab -e), every night at 02:30:
#
#     30 2 * * * PATH=/opt/imgcls/.venv/bin:/usr/bin:/bin OUT=/srv/models/flowers /opt/imgcls/examples/cron-retrain.sh /srv/data/flowers
#
# Usage:
#   examples/cron-retrain.sh [DATA]
#
#   DATA  the growing folder: one subfolder per class (new images and new classes may appear
#         between runs). Without it, a simulation: OUT/incoming/ receives GROW more images per
#         class of the built-in digits sample at every run.
#
# Environment:
#   IMGCLS_EXAMPLE_SMALL=1  a quick run: 2 epochs, the simulated folder grows by 10 per class
#   OUT=DIR                 work folder (default example-out/cron-retrain)
#   HOLDOUT=DIR             a fixed folder of test images (one subfolder per class) to compare
#                           models on; default: the test split of DATA. A fixed hold-out set is
#                           better: as DATA grows, some images may change split between nights.
#   ARCH=NAME               the architecture (default cnn); EPOCHS=N (default 20)
#   KEEP=N                  run folders to keep besides the current one (default 3)
#   GROW=N                  simulation only: images per class added per run (default 40)
#   LOG=FILE                the log (default OUT/retrain.log)
#
# Outputs (in OUT): current -> runs/<time>; runs/<time>/ (with eval.json: the comparison);
# data.jsonl, retrain.log, history.tsv (time, images, current accuracy, candidate accuracy,
# decision).
set -euo pipefail

NAME=cron-retrain
OUT=${OUT:-example-out/$NAME}
SMALL=${IMGCLS_EXAMPLE_SMALL:-0}
ARCH=${ARCH:-cnn}
KEEP=${KEEP:-3}
if [ "$SMALL" = 1 ]; then EPOCHS=${EPOCHS:-2}; GROW=${GROW:-10}; else EPOCHS=${EPOCHS:-20}; GROW=${GROW:-40}; fi
mkdir -p "$OUT/runs"
LOG=${LOG:-$OUT/retrain.log}

exec 3>&2                      # the original stderr: cron mails what is written there
exec >>"$LOG" 2>&1             # everything else goes to the log
log() { printf '%s %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$*"; }
trap 'status=$?; if [ $status -ne 0 ]; then log "run FAILED (status $status); $OUT/current unchanged"; echo "$NAME: failed (status $status), see $LOG" >&3; fi' EXIT

command -v imgcls >/dev/null || { log "imgcls is not on PATH (set PATH in the crontab line)"; exit 1; }

# ---- one run at a time: a lock folder holding the owner's pid (a stale one is taken over)
LOCK=$OUT/.lock
if ! mkdir "$LOCK" 2>/dev/null; then
    owner=$(cat "$LOCK/pid" 2>/dev/null || true)
    if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then
        log "another run (pid $owner) is still active; skipping this one"
        exit 0
    fi
    log "taking over a stale lock (pid ${owner:-unknown})"
fi
echo $$ > "$LOCK/pid"
trap 'status=$?; rm -rf "$LOCK"; if [ $status -ne 0 ]; then log "run FAILED (status $status); $OUT/current unchanged"; echo "$NAME: failed (status $status), see $LOG" >&3; fi' EXIT

log "run started (pid $$)"

# ---- the data: the user's folder, or a simulated one that grows at every run
if [ $# -ge 1 ]; then
    DATA=$1
else
    DATA=$OUT/incoming
    imgcls prepare --sample digits "$OUT/sample-digits" -q > /dev/null
    for class_dir in "$OUT"/sample-digits/*/; do
        class=$(basename "$class_dir")
        mkdir -p "$DATA/$class"
        have=$(find "$DATA/$class" -type f -name '*.png' | wc -l)
        # awk, not head: head would stop reading early and fail the pipeline (pipefail)
        find "$class_dir" -type f -name '*.png' | sort | awk -v n=$((have + GROW)) 'NR <= n' | while read -r f; do
            [ -e "$DATA/$class/$(basename "$f")" ] || cp "$f" "$DATA/$class/"
        done
    done
    log "simulated folder $DATA: $(find "$DATA" -type f -name '*.png' | wc -l) images"
fi

imgcls prepare "$DATA" --seed 0 -o "$OUT/data.jsonl"
EVAL_DATA=$OUT/data.jsonl; SPLIT=test
if [ -n "${HOLDOUT:-}" ]; then
    imgcls prepare "$HOLDOUT" --val 0 --test 0 -o "$OUT/holdout.jsonl"
    EVAL_DATA=$OUT/holdout.jsonl; SPLIT=all
fi

# ---- the candidate
stamp=$(date +%Y%m%d-%H%M%S)-$$
candidate=$OUT/runs/$stamp
imgcls train "$OUT/data.jsonl" --arch "$ARCH" --epochs "$EPOCHS" --out "$candidate" > /dev/null
log "trained candidate $candidate"

# ---- compare on the same images: one eval, both models (the current one may not know a new
# class: --ignore-unknown scores it on the classes it knows, and the candidate wins)
MODELS=()
if [ -e "$OUT/current/model.safetensors" ]; then MODELS+=(-m "$OUT/current"); fi
MODELS+=(-m "$candidate")
imgcls eval "$EVAL_DATA" --split "$SPLIT" "${MODELS[@]}" --ignore-unknown -q -o "$candidate/eval.json"
read -r decision current_acc candidate_acc n_images < <(python3 - "$candidate/eval.json" <<'PY'
import json, sys
models = json.load(open(sys.argv[1]))["models"]
candidate = models[-1]
cand_acc = candidate["metrics"]["accuracy"]
if len(models) == 1:
    print("candidate", "none", f"{cand_acc:.4f}", candidate["n_images"])
else:
    current = models[0]
    cur_acc = current["metrics"]["accuracy"]
    # strictly better, or the current model cannot score every image (a new class appeared)
    better = cand_acc > cur_acc or current["n_images"] < candidate["n_images"]
    print("candidate" if better else "current", f"{cur_acc:.4f}", f"{cand_acc:.4f}", candidate["n_images"])
PY
)
log "accuracy on $n_images test images: current $current_acc, candidate $candidate_acc -> keep $decision"

if [ "$decision" = candidate ]; then
    # atomic switch: make the new link under a temporary name, then rename it over the old one
    # (ln -sfn would remove the old link first, leaving a moment without one)
    ln -s "runs/$stamp" "$OUT/.current.$$"
    python3 -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$OUT/.current.$$" "$OUT/current"
    log "$OUT/current -> runs/$stamp"
else
    rm -rf "$candidate"
    log "candidate removed; $OUT/current unchanged"
fi
printf '%s\t%s\t%s\t%s\t%s\n' "$stamp" "$n_images" "$current_acc" "$candidate_acc" "$decision" >> "$OUT/history.tsv"

# ---- prune: keep the current run and the KEEP newest others
current_run=$(basename "$(readlink "$OUT/current")")
runs=()
for dir in "$OUT"/runs/[0-9]*/; do [ -d "$dir" ] && runs+=("$(basename "$dir")"); done
others=()
for run in ${runs[@]+"${runs[@]}"}; do [ "$run" != "$current_run" ] && others+=("$run"); done
for ((i = 0; i + KEEP < ${#others[@]}; i++)); do
    rm -rf "${OUT:?}/runs/${others[$i]}"
    log "pruned runs/${others[$i]}"
done
log "run finished"
