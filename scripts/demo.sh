#!/usr/bin/env bash
# The main job end to end on the embedded CALVIN sample: sample -> convert -> stats -> train -> eval.
# Run through `make demo` (which installs everything first). Outputs go to demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo}
STEPS=${STEPS:-100}   # enough to beat the mean-action baseline on the sample (ratio ~0.7)
SAMPLE_FLAGS=${SAMPLE_FLAGS:-}   # e.g. "--train-segments 2" for a smaller sample (the tests)
RUN_FLAGS=${RUN_FLAGS:-}         # extra key=value overrides of the training run
rm -rf "$OUT"
mkdir -p "$OUT"
vladata sample calvin "$OUT/calvin_raw" $SAMPLE_FLAGS
vladata convert calvin "$OUT/calvin_raw" "$OUT/calvin.vla" --workers 2
vladata inspect "$OUT/calvin.vla"
vladata stats "$OUT/calvin.vla" --quantiles "[0.01,0.05,0.5,0.95,0.99]"
vlatrain run configs/calvin.yaml data.path="$OUT/calvin.vla" train.steps="$STEPS" out="$OUT/run" \
  $RUN_FLAGS
vlatrain eval "$OUT/run/checkpoints/best.pt" --data "$OUT/calvin.vla" | tee "$OUT/eval.txt"

# What the demo showed, and where to go from here.
if grep -q "arm error is below the mean-action baseline" "$OUT/eval.txt"; then
  verdict="BEATS the mean-action baseline on the held-out validation split"
else
  verdict="does NOT beat the mean-action baseline yet (train longer: STEPS=1000 make demo)"
fi
cat <<MSG

== vlakit demo done ==
The policy $verdict (table above; ratio < 1 is better than always predicting the mean action).
  run:          $OUT/run  (config.yaml, metrics.jsonl, checkpoints/best.pt)
  TensorBoard:  tensorboard --logdir $OUT/run/tensorboard
  evaluation:   $OUT/eval.txt
Next:
  convert your own data:   vladata convert {calvin,oxe,hdf5,lerobot,rosbag} SRC my.vla  (see --help)
  fit a config to it:      vlatrain init my.vla -o my.yaml && vlatrain run my.yaml
  roll out in simulation:  make sim-demo  (Meta-World: vladata collect -> vlatrain run -> vlatrain rollout)
                           or a checkpoint of yours: vlatrain rollout CKPT --tasks reach  (pip install -e ".[sim]")
MSG
