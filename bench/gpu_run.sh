#!/usr/bin/env bash
# One unattended GPU run of xsoftmax's CuPy engines, for a bare machine with one CUDA GPU
# and a copy of this repository. At most 8 minutes:
#   1. a venv (reusing system packages), CuPy for the driver's CUDA major (from nvidia-smi)
#      and a CUDA build of torch when they are not importable already;
#   2. xsoftmax check --backends cupy;
#   3. the GPU tests (gpu and nvrtc markers: the fused and fused-row engines on the device);
#   4. xsoftmax bench --backends cupy --engines fused,fused-row,reference --peers torch at
#      8192x32000, 4096x128000, 65536x1024 and 1048576x10, float32 and bfloat16;
#   5. results.json, results.png and summary.md (bench/gpu_summary.py), with every step's
#      log and exit status, in $OUT if set, else ./gpu-results/.
#
# Usage: bench/gpu_run.sh [--dry-run]
#   --dry-run (or XSOFTMAX_GPU_DRY_RUN=1): no GPU needed; checks that every step's files,
#   commands and CLI arguments are valid here and prints what would run.
# Environment: PYTHON (default python3), XSOFTMAX_WHEELS (a wheel directory for pip, for
#   machines without network), XSOFTMAX_GPU_VENV (default <repo>/.gpu-venv), XSOFTMAX_CUDA_MAJOR
#   (overrides nvidia-smi), XSOFTMAX_GPU_BUDGET_S (seconds for steps 1-4, default 430; the
#   summary has 30 more, and a timed-out step up to 10 more to be killed).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DRY=${XSOFTMAX_GPU_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_run.sh: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
  esac
done
OUTDIR=${OUT:-$PWD/gpu-results}
PY=${PYTHON:-python3}
VENV=${XSOFTMAX_GPU_VENV:-$REPO/.gpu-venv}
BUDGET=${XSOFTMAX_GPU_BUDGET_S:-430}
# The headline shape first; 4096x128000 (past the on-chip limit: fused-row falls back) last.
SHAPES=(8192x32000 65536x1024 1048576x10 4096x128000)
declare -A SHAPE_LIMIT_S=([8192x32000]=100 [65536x1024]=45 [1048576x10]=45 [4096x128000]=100)
DTYPES=float32,bfloat16
ENGINES=fused,fused-row,reference
CLI=xsoftmax._cli  # the module with build_parser() behind `python -m xsoftmax`
CHECK_ARGS=(check --backends cupy)
TEST_ARGS=(-q -p no:cacheprovider -m "gpu or nvrtc" tests/test_engine_cupy.py tests/test_engine_cupy_row.py
           tests/test_cupy_nvrtc.py)
# Without the toolkit's ptxas the spill test cannot run (CI has it; a bare GPU machine may not).
[[ -x /usr/local/cuda/bin/ptxas ]] || TEST_ARGS+=(-k "not spill")
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # this checkout's xsoftmax, never an installed one

mkdir -p "$OUTDIR"
STEPS=$OUTDIR/steps.tsv
: > "$STEPS"
FAILED=0

remaining() { echo $((BUDGET - SECONDS)); }

# step NAME LIMIT_S CMD...: runs CMD with a timeout (its limit, or what is left of the budget),
# logs to $OUTDIR/NAME.log and records "NAME<TAB>status<TAB>seconds" in steps.tsv.
step() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(remaining)
  ((left < limit)) && limit=$left
  echo "== $name (at most ${limit}s): $*"
  if [[ $DRY == 1 ]]; then
    printf '%s\tdry-run\t0\n' "$name" >> "$STEPS"
    return 0
  fi
  if ((limit <= 5)); then
    echo "   skipped: the ${BUDGET}s budget is spent"
    printf '%s\tskipped (budget)\t0\n' "$name" >> "$STEPS"
    FAILED=1
    return 0
  fi
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  rc=$?
  tail -n 15 "$OUTDIR/$name.log"
  ((rc == 124 || rc == 137)) && echo "   timed out after ${limit}s"
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - start)) >> "$STEPS"
  ((rc != 0)) && FAILED=1
  return 0
}

cuda_major() {
  if [[ -n ${XSOFTMAX_CUDA_MAJOR:-} ]]; then echo "$XSOFTMAX_CUDA_MAJOR"; return; fi
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\)\..*/\1/p' | head -n 1
  fi
}

install_deps() {
  local major=$1 vpy=$VENV/bin/python pip
  pip=("$vpy" -m pip install --quiet --disable-pip-version-check)
  [[ -n ${XSOFTMAX_WHEELS:-} ]] && pip+=(--find-links "$XSOFTMAX_WHEELS")
  [[ -x $vpy ]] || "$PY" -m venv --system-site-packages "$VENV" || return 1
  "$vpy" -c "import numpy, array_api_compat, pytest, hypothesis, matplotlib" 2> /dev/null ||
    "${pip[@]}" "numpy>=1.26" "array-api-compat>=1.12" pytest hypothesis matplotlib || return 1
  if ! "$vpy" -c "import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() == 0)" 2> /dev/null; then
    # [ctk] brings the CUDA runtime libraries from PyPI where the machine has no toolkit.
    "${pip[@]}" "cupy-cuda${major}x[ctk]" || "${pip[@]}" "cupy-cuda${major}x" || return 1
  fi
  "$vpy" -c "import cupy.cuda.nvrtc as n; n.getVersion()" 2> /dev/null ||
    "${pip[@]}" "nvidia-cuda-nvrtc" || true  # the nvrtc tests skip without it; the engines do not need it
  if ! "$vpy" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
    local index=https://download.pytorch.org/whl/cu126
    ((major >= 13)) && index=https://download.pytorch.org/whl/cu130
    "${pip[@]}" torch --index-url "$index" || return 1
  fi
  "$vpy" -c "import cupy, torch; print('cupy', cupy.__version__, 'torch', torch.__version__, 'on',
      torch.cuda.get_device_name(0))"
}
export -f install_deps
export PY VENV

echo "xsoftmax GPU run: repo $REPO, results in $OUTDIR, budget ${BUDGET}s$([[ $DRY == 1 ]] && echo ', dry run')"
MAJOR=$(cuda_major)
if [[ -z $MAJOR ]]; then
  if [[ $DRY == 1 ]]; then
    MAJOR=12
    echo "   (dry run: no nvidia-smi here; assuming CUDA major $MAJOR)"
  else
    echo "gpu_run.sh: nvidia-smi reports no CUDA driver; this run needs one CUDA GPU" >&2
    exit 1
  fi
fi
VPY=$VENV/bin/python
[[ $DRY == 1 ]] || nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1

if [[ $DRY == 1 ]]; then
  # Everything a GPU run relies on that can be checked here, with this machine's Python.
  for f in pyproject.toml xsoftmax/_cli/__init__.py xsoftmax/__main__.py bench/gpu_summary.py "${TEST_ARGS[@]:5:3}"; do
    [[ -e $REPO/$f ]] || { echo "gpu_run.sh --dry-run: missing $REPO/$f" >&2; exit 1; }
  done
  command -v timeout > /dev/null || { echo "gpu_run.sh --dry-run: no timeout command" >&2; exit 1; }
  parse="import importlib, sys; importlib.import_module(sys.argv[1]).build_parser().parse_args(sys.argv[2:])"
  "$PY" -c "$parse" "$CLI" "${CHECK_ARGS[@]}" || exit 1
  echo "   check arguments parse: ${CHECK_ARGS[*]}"
  for shape in "${SHAPES[@]}"; do
    "$PY" -c "$parse" "$CLI" \
      bench --backends cupy --engines "$ENGINES" --peers torch --shapes "$shape" --dtype "$DTYPES" \
      --json x.json --plot x.png || { echo "gpu_run.sh --dry-run: bench rejects $shape" >&2; exit 1; }
  done
  echo "   bench arguments parse for ${SHAPES[*]} ($DTYPES)"
fi

step install 150 bash -c 'install_deps "$1"' install_deps "$MAJOR"
# The torch peer only where torch sees the GPU: on the CPU it would spend the bench budget.
PEERS=torch
if [[ $DRY != 1 ]] && ! "$VPY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
  PEERS=none
  echo "torch with CUDA is not available: the bench runs without the torch peer" | tee "$OUTDIR/peer-note.txt"
fi
step check 40 "$VPY" -m xsoftmax "${CHECK_ARGS[@]}"
step tests 75 "$VPY" -m pytest "${TEST_ARGS[@]}"
for shape in "${SHAPES[@]}"; do
  step "bench-$shape" "${SHAPE_LIMIT_S[$shape]}" "$VPY" -m xsoftmax bench --backends cupy \
    --engines "$ENGINES" --peers "$PEERS" --shapes "$shape" --dtype "$DTYPES" --repeat 5 \
    --json "$OUTDIR/bench-$shape.json"
done
BUDGET=$((BUDGET + 30)) step summary 30 "$VPY" "$REPO/bench/gpu_summary.py" "$OUTDIR"
[[ $DRY == 1 ]] || cat "$OUTDIR/summary.md" 2> /dev/null
echo "steps (name, exit status, seconds):"
cat "$STEPS"
exit $FAILED
