#!/usr/bin/env bash
# One session's checks on a lent GPU machine, run from the repository root:
#   the unit tests and the backend integration tests with a real CUDA device (Triton compiled, CuPy, the
#   Transformer on cuda, the `gpu` marker), then the scoring and kernel benchmarks, then the HTTP benchmark's
#   scoring workloads on numpy and on triton on the same machine (no locust needed).
# The client library's tests are left out: the client touches no GPU, and it needs httpx, which the image lacks.
# Each step has its own time limit so that a slow one cannot starve the rest; logs go to $OUT (or
# /tmp/gpu_check). Wheels in .whl (pytest, pytest-aiohttp, ... which the GPU image lacks) are installed
# first where present. Exit status: that of the tests.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site
fi

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    nproc
    $PY -c "import sys, torch, triton, numpy; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"
    $PY -c "import cupy; print('cupy', cupy.__version__)" || true
} 2>&1 | tee "$OUT/machine.txt"

timeout 120 $PY -m kernels.compile_check 2>&1 | tail -5 | tee "$OUT/compile_check.txt"

set -o pipefail
timeout 220 $PY -m pytest -q -p no:cacheprovider -rs --ignore-glob='tests/unit/test_client_*' \
    tests/unit tests/integration/test_backends.py 2>&1 \
    | tee "$OUT/pytest.log" | tail -25
tests=$?
set +o pipefail

timeout 150 $PY -m loadtests.bench_scoring --repeats 5 2>&1 | tee "$OUT/bench_scoring.txt"
timeout 60 $PY -m loadtests.bench_kernels --sizes 1e4,1e6,1e7 --repeats 5 2>&1 | tee "$OUT/bench_kernels.txt"
for backend in numpy triton; do
    timeout 75 $PY -m loadtests.bench --backend "$backend" --parts workloads --only score --seconds 4 \
        --json "$OUT/bench_http_$backend.json" 2>&1 | tee "$OUT/bench_http_$backend.txt"
done
exit $tests
