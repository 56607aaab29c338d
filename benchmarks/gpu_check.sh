#!/usr/bin/env bash
# GPU readiness: every part of benchmarks/gpu_check.py, each in its own process under its own
# time budget, then one report. Writes gpu_check.json + gpu_check.md into $OUT (default
# benchmarks/out/). No network; installs nothing beyond `make setup` (run only if .venv is
# missing and $PYTHON is not set). Exit status 1 when any part failed or left no result.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on a GPU machine (< 8 minutes)
#   bash benchmarks/gpu_check.sh --device cpu             # the small dry run the tests do
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#--device=}"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --device cuda|cpu)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-benchmarks/out}
if [ -z "${PYTHON:-}" ]; then
  [ -x .venv/bin/python ] || make setup || { echo "gpu_check.sh: make setup failed" >&2; exit 2; }
  PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/parts"
rm -f "$OUT"/parts/*.json "$OUT"/parts/*.rc  # only this script's own per-part records
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# part:budget (seconds, the hard limit; each part plans to end by 3/4 of it). Sum < 8 minutes.
for spec in data:45 train:90 loader:40 vlm:150 act:55 ddp:50 exact:40; do
  part=${spec%%:*} budget=${spec##*:}
  timeout -k 10 "$budget" "$PYTHON" benchmarks/gpu_check.py part "$part" --device "$DEVICE" \
    --store "$WORK/calvin.vla" --work "$WORK" --out "$OUT" --budget "$budget"
  echo $? > "$OUT/parts/$part.rc"
done
"$PYTHON" benchmarks/gpu_check.py report --out "$OUT" --device "$DEVICE"
