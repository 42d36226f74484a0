#!/usr/bin/env bash
# Re-measure every built-in benchmark of the embedded contrastive model into benchmarks/results/eval/.
# Usage: tools/run_clip_benchmarks.sh [SHARED_DATA]   (default ../shared/data; needs `eval prepare` tables)
# Texts of the COVID-19 notes and MedPix captions are left out of the committed results (--omit-texts).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
bin=${MEDFOUNDRY_BIN:-.venv/bin/medfoundry}
"$bin" eval prepare --shared "$shared" --out eval-data >/dev/null
for spec in pneumonia-zero-shot pneumonia-linear-probe pneumonia-retrieval covid-zero-shot covid-notes-retrieval \
            medpix-modality medpix-plane medpix-region modality-4 medpix-retrieval \
            medpix-retrieval-i2t covid-notes-report medpix-vqa-modality medpix-vqa-plane medpix-vqa-region \
            pneumonia-vqa covid-vqa; do
  "$bin" eval --model medfoundry-clip-tiny --benchmark "$spec" --omit-texts \
    --out "benchmarks/results/eval/${spec}__medfoundry-clip-tiny"
done
python3 tools/results_table.py
