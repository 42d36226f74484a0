#!/usr/bin/env bash
# Re-measure the 3D key-slice-box benchmarks of the embedded 3D segmenter (medfoundry-box3d-tiny) into
# benchmarks/results/. Usage: tools/run_box3d_benchmarks.sh [SHARED_DATA]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
bin=${MEDFOUNDRY_BIN:-.venv/bin/medfoundry}
py=${PYTHON:-.venv/bin/python}
"$bin" eval prepare --shared "$shared" --out eval-data >/dev/null
for spec in sts-3d lesion-3d organs-3d; do
  "$bin" eval --model medfoundry-box3d-tiny --benchmark "$spec" \
    --out "benchmarks/results/eval/${spec}__medfoundry-box3d-tiny"
done
# long axis, volume and 3D Dice per lesion beside both ellipsoid baselines (DeepLesion 4, sarcomas 20)
"$py" benchmarks/structured_report_3d.py --shared "$shared" --model medfoundry-box3d-tiny \
  --out benchmarks/results/structured_report_3d_box3d.json
python3 tools/results_table.py
