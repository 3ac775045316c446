#!/usr/bin/env bash
# Headless end-to-end run on the shipped samples: train, predict, evaluate, export.
# Usage: scripts/demo.sh PYTHON OUTDIR   (TIME_BUDGET=60 by default; SAMPLES="nuclei2d mri3d")
set -euo pipefail
PY=${1:-python}
OUT=${2:-out/demo}
TIME_BUDGET=${TIME_BUDGET:-60}
SAMPLES=${SAMPLES:-nuclei2d mri3d}
DATA=sample_data
SCRIBBLESEG=("$PY" -m scribbleseg.cli)
mkdir -p "$OUT"
for sample in $SAMPLES; do
  background=1
  echo "== $sample: train ($TIME_BUDGET s on CPU)"
  "${SCRIBBLESEG[@]}" train "$DATA/${sample}_image.tif" "$DATA/${sample}_scribbles.tif" \
      -o "$OUT/$sample.model" --time-budget "$TIME_BUDGET" --device cpu --background-class "$background"
  echo "== $sample: predict"
  "${SCRIBBLESEG[@]}" predict "$OUT/$sample.model" "$DATA/${sample}_image.tif" -o "$OUT/${sample}_prediction.tif" --device cpu
  echo "== $sample: evaluate against the ground truth"
  "${SCRIBBLESEG[@]}" evaluate "$OUT/${sample}_prediction.tif" "$DATA/${sample}_ground_truth.tif" \
      --background-class "$background" | tee "$OUT/${sample}_scores.json"
  echo "== $sample: export (background written as 0) to OME-TIFF and zarr"
  "${SCRIBBLESEG[@]}" export "$OUT/${sample}_prediction.tif" -o "$OUT/${sample}_prediction.ome.tif" --background-class "$background"
  "${SCRIBBLESEG[@]}" export "$OUT/${sample}_prediction.tif" -o "$OUT/${sample}_prediction.zarr" --background-class "$background"
done
echo "demo outputs in $OUT"
