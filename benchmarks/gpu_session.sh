#!/bin/bash
# The measurements still owed on a GPU, in order of value, each under its own time limit (about 6
# minutes in all on an H200; the limits add up to 550 s; see benchmarks/README.md, "gpu"). From the
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
  timeout "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"
  echo "rc $?" >> "$OUT/$name.err"
  cat "$OUT/$name.md"; tail -3 "$OUT/$name.err"
}
nvidia-smi -L; python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"

# 1. cuSOLVER's batched eigen-solver against torch's (values and time), whatever the switch says
section linalg 90 python3 benchmarks/gpu_linalg.py --repeats 5
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
echo "cuSOLVER batched route right (cmi 256×256 eigenvalues, chip 64×64 eigenvectors): $ok" | tee -a "$OUT/times.txt"

# 2. CMI on the GPU (issue 16 item 1), the batched route on where it gave the right values
PRUNETUNE_CUSOLVER_BATCHED=$ok section cmi 170 python3 benchmarks/cmi_greedy.py --data digits --model resnet32 \
  --samples 256 --reference-points 1 --device cuda --stop-gains 0.01

# 3. every activation criterion against its floor (item 2), with and without the batched route
PRUNETUNE_CUSOLVER_BATCHED=$ok section scoring_route 110 python3 benchmarks/scoring.py --device cuda --images 512 \
  --cmi-samples 64 --repeats 2 --skip-chip-svd
PRUNETUNE_CUSOLVER_BATCHED=0 section scoring_torch 80 python3 benchmarks/scoring.py --device cuda --images 512 \
  --cmi-samples 64 --repeats 2 --skip-chip-svd --skip-cmi

# 4. the fine-tune loop in bfloat16 (host syncs per step) and all criteria in one pass
section gpu 100 python3 benchmarks/gpu.py --sections loop,scoring --calibration 512 --cmi-samples 64
stamp end
