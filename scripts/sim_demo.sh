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
STEPS=${STEPS:-600}           # training steps
ROLLOUTS=${ROLLOUTS:-5}       # held-out episodes per task
# Replace only what an earlier run of this script wrote: an OUT holding anything else is refused.
if [ -d "$OUT" ]; then
    other=$(ls -A "$OUT" | grep -vxE 'demo\.vla|run|videos' || true)
    if [ -n "$other" ]; then
        echo "sim_demo: $OUT holds files this script did not write ($(echo $other)); set OUT to a" \
             "new directory" >&2
        exit 2
    fi
    rm -rf "$OUT/demo.vla" "$OUT/run" "$OUT/videos"
fi
mkdir -p "$OUT"
vladata collect metaworld "$OUT/demo.vla" --tasks "$TASKS" --episodes-per-task "$EPISODES" \
    --workers 2 --noise-fraction 0.8 --val-fraction 0.2 --cameras corner2,topview,gripperPOV
vlatrain run configs/metaworld_mt10.yaml data.path="$OUT/demo.vla" out="$OUT/run" \
    train.steps="$STEPS" train.checkpoint_every="$STEPS" eval.every="$STEPS" optim.warmup_steps=20
vlatrain rollout "$OUT/run/checkpoints/best.pt" --tasks "$TASKS" --episodes "$ROLLOUTS" \
    --workers 2 --video "$OUT/videos" --videos-per-task 1
