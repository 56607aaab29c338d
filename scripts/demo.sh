#!/usr/bin/env bash
# The main job end to end on the embedded CALVIN sample: sample -> convert -> stats -> train -> eval.
# Run through `make demo` (which installs everything first). Outputs go to demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo}
STEPS=${STEPS:-300}
rm -rf "$OUT"
mkdir -p "$OUT"
vladata sample calvin "$OUT/calvin_raw"
vladata convert calvin "$OUT/calvin_raw" "$OUT/calvin.vla" --workers 2
vladata inspect "$OUT/calvin.vla"
vladata stats "$OUT/calvin.vla" --quantiles "[0.01,0.05,0.5,0.95,0.99]"
vlatrain run configs/calvin.yaml data.path="$OUT/calvin.vla" train.steps="$STEPS" out="$OUT/run"
vlatrain eval "$OUT/run/checkpoints/best.pt" --data "$OUT/calvin.vla"
