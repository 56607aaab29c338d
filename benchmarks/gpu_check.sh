#!/usr/bin/env bash
# GPU readiness: every part of benchmarks/gpu_check.py, each in its own process under its own
# time budget, then one report: gpu_check.json, gpu_check.md and gpu_check.log in $OUT (default
# benchmarks/out/). No network. Exit status 1 when any part failed or left no result.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh            # on a GPU machine (< 8 minutes)
#   bash benchmarks/gpu_check.sh --device cpu             # the small dry run the tests do
#
# Python: $PYTHON if set; else .venv/bin/python; else, when .whl/ holds the project's runtime
# dependencies (benchmarks/gpu_wheels.sh fetches them where pip can reach PyPI), python3 with
# those wheels installed offline into a temporary directory; else `make setup` makes .venv.
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
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
  elif compgen -G ".whl/*.whl" >/dev/null && python3 -c "import torch" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$WORK/site" .whl/*.whl || { echo "gpu_check.sh: installing .whl/ failed" >&2; exit 2; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    PYTHON=python3
  else
    make setup || { echo "gpu_check.sh: make setup failed" >&2; exit 2; }
    PYTHON=.venv/bin/python
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

run_all() {
  mkdir -p "$WORK/parts"
  # part:budget (seconds, the hard limit; each part plans to end by 3/4 of it). Sum < 8 minutes.
  for spec in data:45 train:90 loader:40 vlm:150 act:55 ddp:50 exact:40; do
    part=${spec%%:*} budget=${spec##*:}
    timeout -k 10 "$budget" "$PYTHON" benchmarks/gpu_check.py part "$part" --device "$DEVICE" \
      --store "$WORK/calvin.vla" --work "$WORK" --out "$WORK" --budget "$budget"
    echo $? > "$WORK/parts/$part.rc"
  done
  "$PYTHON" benchmarks/gpu_check.py report --parts "$WORK/parts" --out "$OUT" --device "$DEVICE"
}
run_all 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
