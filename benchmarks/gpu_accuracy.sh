#!/usr/bin/env bash
# The accuracy table at a GPU budget (issue 7, must-show 4), in one command on a machine with CUDA:
#
#     bash benchmarks/gpu_accuracy.sh
#
# Two runs of benchmarks/accuracy.py share the GPU, each run in its own process on 2 CPU threads
# (as in the CPU table): the must-show rows (forest, partial CE, defaults, dense labels; every data
# set, annotation and seed; 7 at once) and the loss ablation on the sparse scribbles of both data
# sets (2 at once). No run starts after STOP_AFTER seconds. Their results are appended to RESULTS,
# then the tables go to the GPU block of docs/benchmarks.md and the plot to docs/accuracy_gpu.png.
#
# Environment: PYTHON (python3), RESULTS (benchmarks/results/accuracy_gpu.jsonl), STOP_AFTER (330),
# BUDGETS ("10 30", seconds of training), DEVICE (cuda; cpu only to try this script out),
# MARKDOWN (docs/benchmarks.md; '' = none), PLOT (docs/accuracy_gpu.png; '' = none).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-benchmarks/results/accuracy_gpu.jsonl}
STOP_AFTER=${STOP_AFTER:-330}
BUDGETS=${BUDGETS:-10 30}
DEVICE=${DEVICE:-cuda}
MARKDOWN=${MARKDOWN-docs/benchmarks.md}
PLOT=${PLOT-docs/accuracy_gpu.png}
mkdir -p "$(dirname "$RESULTS")"
common=(--device "$DEVICE" --budgets $BUDGETS --stop-after "$STOP_AFTER" --markdown '' --plot '')
# shellcheck disable=SC2086
"$PY" benchmarks/accuracy.py "${common[@]}" --methods rf pce defaults dense --jobs 7 \
    --results "$RESULTS.main" >"$RESULTS.main.log" 2>&1 &
main=$!
"$PY" benchmarks/accuracy.py "${common[@]}" --datasets nuclei2d mri3d --annotations scribbles \
    --densities sparse --methods pce+teacher pce+crf pce+contrastive pce+dynamic all --jobs 2 \
    --results "$RESULTS.ablation" >"$RESULTS.ablation.log" 2>&1 &
ablation=$!
wait $main
status=$?
wait $ablation || status=$?
for part in main ablation; do
    grep -E '^\[|runs to do|failed|Error' "$RESULTS.$part.log"
    if [ -f "$RESULTS.$part" ]; then cat "$RESULTS.$part" >>"$RESULTS" && rm "$RESULTS.$part"; fi
done
"$PY" benchmarks/accuracy.py --device "$DEVICE" --budgets $BUDGETS --report-only --results "$RESULTS" \
    --markdown "$MARKDOWN" --plot "$PLOT" || status=$?
exit $status
