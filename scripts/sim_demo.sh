#!/usr/bin/env bash
# Closed loop end to end on Meta-World, in minutes on a CPU: scripted demonstrations -> store ->
# training -> rollouts on held-out initial states -> the success table.
# Run through `make sim-demo` (which installs the [sim] extra first). Outputs go to demo/sim/.
# A short run on three tasks: it shows the pipeline, not the recipe's success rates
# (configs/metaworld_mt10.yaml and BENCHMARKS.md have those).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl}
OUT=${OUT:-demo/sim}
TASKS=${TASKS:-reach,drawer-close,button-press-topdown}
EPISODES=${EPISODES:-10}      # demonstrations per task
STEPS=${STEPS:-300}           # training steps
ROLLOUTS=${ROLLOUTS:-5}       # held-out episodes per task
rm -rf "$OUT"
mkdir -p "$OUT"
vladata collect metaworld "$OUT/demo.vla" --tasks "$TASKS" --episodes-per-task "$EPISODES" \
    --workers 2 --noise-fraction 0.8 --val-fraction 0.2 --cameras corner2,topview,gripperPOV
vlatrain run configs/metaworld_mt10.yaml data.path="$OUT/demo.vla" out="$OUT/run" \
    train.steps="$STEPS" train.checkpoint_every="$STEPS" eval.every="$STEPS" optim.warmup_steps=20
vlatrain rollout "$OUT/run/checkpoints/best.pt" --tasks "$TASKS" --episodes "$ROLLOUTS" \
    --workers 2 --video "$OUT/videos" --videos-per-task 1
