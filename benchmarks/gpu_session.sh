#!/bin/bash
# The GPU measurements of benchmarks/README.md ("gpu", second run), in order of value, each under
# its own time limit (about 4 minutes in all on an H200; the limits add up to 390 s). From the
# repository root:
#
#   OUT=gpu-session bash benchmarks/gpu_session.sh
#
# Every table goes to $OUT (default ./gpu-session) and to stdout. PRUNETUNE_CACHE_DIR, if set, lets
# the CMI run reuse the cached dense digits model (it trains it otherwise: a few seconds on a GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== $1 at +$(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"; }
section() {  # name, time limit, command...
  local name=$1 limit=$2; shift 2
  stamp "$name"
  echo "== $name" >> "$OUT/errors.txt"  # one file for every section's stderr (the device returns 8 files)
  timeout "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"
  echo "rc $?" >> "$OUT/$name.err"
  cat "$OUT/$name.md"; tail -3 "$OUT/$name.err"; cat "$OUT/$name.err" >> "$OUT/errors.txt"; rm "$OUT/$name.err"
}
# torch-pruning is not in the GPU image: install the wheel carried in .whl/ (see benchmarks/README.md)
if ! python3 -c "import torch_pruning" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/torch_pruning-*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
nvidia-smi -L; python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"

# 1. cuSOLVER's batched eigen-solver against torch's (values and time)
section linalg 40 python3 benchmarks/gpu_linalg.py --repeats 3
ok=$(python3 - "$OUT/linalg.md" <<'PY'
import sys
def right(case, vectors):
    rows = [l for l in open(sys.argv[1]) if l.startswith(f"| {case} |")]
    cells = [c.strip() for c in rows[0].strip().strip("|").split("|")]
    errors = [float(e) for e in cells[9].split("/")]  # eigenvalues / reconstruction
    return float(cells[8]) > 0 and errors[0] < 1e-10 and (not vectors or errors[1] < 1e-10)
try:
    print(1 if right("cmi step, 64 candidates", False) and right("chip 64 ch", True) else 0)
except Exception:
    print(0)
PY
)
# the route is on by default: switched off for the rest if it did not give the right values here
echo "cuSOLVER batched route right (cmi 256×256 eigenvalues, chip 64×64 eigenvectors): $ok" | tee -a "$OUT/times.txt"
export PRUNETUNE_CUSOLVER_BATCHED=$ok

# 2. CMI on the GPU (issue 16 item 1)
section cmi 120 python3 benchmarks/cmi_greedy.py --data digits --model resnet32 \
  --samples 256 --reference-points 1 --device cuda --stop-gains 0.01

# 3. every activation criterion against its floor (item 2), and where the pass spends its time
section scoring 80 python3 benchmarks/scoring.py --device cuda --images 512 \
  --cmi-samples 64 --repeats 3 --skip-chip-svd
section profile 70 python3 benchmarks/profile_scoring.py --device cuda --images 512 --rows 25

# 4. all criteria in one pass (benchmarks/gpu.py), then the scoring table with the route off
section gpu 40 python3 benchmarks/gpu.py --sections scoring --calibration 512 --cmi-samples 64
PRUNETUNE_CUSOLVER_BATCHED=0 section scoring_torch 40 python3 benchmarks/scoring.py --device cuda --images 512 \
  --cmi-samples 64 --repeats 2 --skip-chip-svd --skip-cmi
stamp end
