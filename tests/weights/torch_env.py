"""The PyTorch interpreter of the parity tests, and running ``torch_reference.py`` in it.

PyTorch is never imported by segjax or its test process: the reference models run in a
separate interpreter, ``$SEGJAX_TORCH_PYTHON`` (a virtualenv with torch, torchvision, timm
and safetensors; ``.ci/run`` creates one). Without it the parity tests are skipped, except
under CI (``$CI`` set), where they fail: CI must run them.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "torch_reference.py")


def torch_python() -> str:
    """The interpreter from ``$SEGJAX_TORCH_PYTHON``; skips (fails under CI) without one."""
    python = os.environ.get("SEGJAX_TORCH_PYTHON", "")
    if python and os.path.exists(python):
        return python
    message = (
        "the parity tests need a Python with torch, torchvision, timm and safetensors: set "
        f"SEGJAX_TORCH_PYTHON (got {python!r}; .ci/run creates .torchvenv)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run_reference(jobs: list[dict], out_dir: str, timeout: float = 1800) -> str:
    """Runs ``torch_reference.py`` on ``jobs``; returns ``out_dir`` (one folder per job id)."""
    python = torch_python()
    os.makedirs(out_dir, exist_ok=True)
    jobs_file = os.path.join(out_dir, "jobs.json")
    with open(jobs_file, "w") as f:
        json.dump(jobs, f)
    # A clean environment for torch: no XLA flags or JAX variables of this test process.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    result = subprocess.run(
        [python, SCRIPT, jobs_file, out_dir],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"torch_reference.py failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return out_dir
