#!/bin/bash
# The GPU measurements of benchmarks/README.md ("gpu", third run), in order of value, each under its
# own time limit (the limits add up to 480 s; about 5 minutes on an H200 with its 16 CPU cores). From
# the repository root:
#
#   OUT=gpu-session bash benchmarks/gpu_session.sh
#
# Every table goes to $OUT (default ./gpu-session) and to stdout. The first and second runs' commands
# (cuSOLVER's batched solver, the CMI greedy) are named in benchmarks/README.md beside their tables.
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

# 1. every criterion on the CPU and on the GPU from the same weights and images: the same answer?
section agreement 120 python3 benchmarks/gpu.py --sections agreement --cmi-samples 64

# 2. issue 16 item 2: the activation criteria against their floor, calibration batches of 128 and of
#    512 (one batch: a quarter of the kernel launches), and where the pass spends its time
section scoring 80 python3 benchmarks/scoring.py --device cuda --images 512 --repeats 3 --skip-cmi --skip-chip-svd
section scoring_b512 60 python3 benchmarks/scoring.py --device cuda --images 512 --batch-size 512 --repeats 3 \
  --skip-cmi --skip-chip-svd
section profile 60 python3 benchmarks/profile_scoring.py --device cuda --images 512 --rows 25

# 3. all 15 criteria in one calibration pass
section gpu 40 python3 benchmarks/gpu.py --sections scoring --calibration 512 --cmi-samples 64

# 4. the same item on the device's own CPU, two threads as on the project machine
section scoring_cpu 120 python3 benchmarks/scoring.py --device cpu --threads 2 --repeats 3 --skip-cmi --skip-chip-svd
stamp end
