#!/usr/bin/env bash
# The sample store of each source, for the example configs configs/<source>.yaml (written by
# `vlatrain init samples/<source>.vla -o configs/<source>.yaml`). Outputs go to samples/.
#   bash scripts/samples.sh && vlatrain run configs/aloha.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-samples}
mkdir -p "$OUT"
convert() {  # convert SOURCE RAW STORE [flags]: skip a store already converted
  [ -e "$OUT/$3/meta/manifest.json" ] || vladata convert "$1" "$OUT/$2" "$OUT/$3" --overwrite "${@:4}"
}
[ -e "$OUT/calvin_raw" ] || vladata sample calvin "$OUT/calvin_raw"
convert calvin calvin_raw calvin.vla
[ -e "$OUT/bridge_raw" ] || vladata sample oxe "$OUT/bridge_raw" --dataset bridge
convert oxe bridge_raw bridge.vla
[ -e "$OUT/aloha_raw" ] || vladata sample hdf5 "$OUT/aloha_raw" --layout aloha
convert hdf5 aloha_raw aloha.vla --layout aloha
[ -e "$OUT/robomimic_raw" ] || vladata sample hdf5 "$OUT/robomimic_raw" --layout robomimic
convert hdf5 robomimic_raw/demo.hdf5 robomimic.vla --layout robomimic
[ -e "$OUT/lerobot_raw" ] || vladata sample lerobot "$OUT/lerobot_raw"
convert lerobot lerobot_raw lerobot.vla
