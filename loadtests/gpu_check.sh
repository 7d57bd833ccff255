#!/usr/bin/env bash
# One session's checks on a lent GPU machine, run from the repository root, within 8 minutes:
#   1. the machine, and the Triton kernels compiled for it;
#   2. the tests that touch the device (kernels, engine, worker, Transformer, the backends' integration tests),
#      with Triton compiled for real, CuPy and the `gpu` marker;
#   3. the kernel benchmark beside torch and CuPy (the launch-shape sweep: add --sweep);
#   4. the in-process scoring probe, batches of 1 to 8,192 users (100: a batch that replays the 256-user graph),
#      each backend, the Transformer on cuda (in bf16 and fp32, the pass replayed as a CUDA graph and eagerly);
#   5. the HTTP benchmark's scoring workloads on numpy and on triton, then on triton serving the probe's
#      Transformer (no locust needed);
#   6. the HTTP benchmark's scaling part: 8 tenants served by 1 worker process, then by 8 (issue 12's target).
# Each step has its own time limit so that a slow one cannot starve the rest. Logs go to $OUT (or
# /tmp/gpu_check), eight files (the most the device tool brings back). Wheels in .whl (pytest,
# pytest-aiohttp, msgspec, ... which the GPU image lacks) are installed first where present. msgspec is one of
# nudge's own dependencies: without its wheel the script stops at once (exit status 3).
# Exit status: that of the tests.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
MODEL=/tmp/gpu_check_model.pt

if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site
fi
$PY -c "import msgspec" 2>/dev/null || { echo "msgspec is missing: carry its wheel in .whl (see the header)"; exit 3; }

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    nproc
    $PY -c "import sys, torch, triton, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
    $PY -c "import cupy; print('cupy', cupy.__version__)" || true
    timeout 60 $PY -m kernels.compile_check
} 2>&1 | tee "$OUT/machine.txt"

set -o pipefail
timeout 150 $PY -m pytest -q -p no:cacheprovider -rs \
    tests/unit/test_kernels.py tests/unit/test_engine.py tests/unit/test_learned_score.py \
    tests/unit/test_score_parts.py tests/unit/test_predictor.py tests/unit/test_transformer.py \
    tests/unit/test_worker.py tests/integration/test_backends.py 2>&1 \
    | tee "$OUT/pytest.log" | tail -25
tests=$?
set +o pipefail

timeout 60 $PY -m loadtests.bench_kernels --sizes 1e6,1e7 --repeats 5 2>&1 | tee "$OUT/bench_kernels.txt"
timeout 150 $PY -m loadtests.bench_scoring --users 20000 --events 100000 --batches 1,64,100,256,1024,8192 --repeats 5 \
    --devices cuda --save-model "$MODEL" 2>&1 | tee "$OUT/bench_scoring.txt"
for backend in numpy triton; do
    timeout 50 $PY -m loadtests.bench --backend "$backend" --parts workloads --only score --seconds 4 2>&1 \
        | tee "$OUT/bench_http_$backend.txt"
done
if [ -f "$MODEL" ]; then
    timeout 50 $PY -m loadtests.bench --backend triton --model "$MODEL" --parts workloads --only score --seconds 4 2>&1 \
        | tee "$OUT/bench_http_triton_transformer.txt"
fi
timeout 150 $PY -m loadtests.bench --parts scaling --scaling-workers 1,8 --seconds 4 2>&1 | tee "$OUT/bench_scaling.txt"
exit $tests
