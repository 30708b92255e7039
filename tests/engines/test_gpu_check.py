"""benchmarks/gpu_check.py up to the GPU: what it would carry, and a clean account of skips without one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks/gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_carried_wheels_are_what_gpu_machines_lack():
    closure = load_script().wheel_closure()
    assert {"diffusers", "transformers", "polygraphy", "pytest", "safetensors", "tokenizers"} <= set(closure)
    assert not {"torch", "triton", "numpy", "onnx", "onnxruntime"} & set(closure)
    assert not any(name.startswith("nvidia-") for name in closure)


def test_without_a_gpu_it_says_what_it_skipped_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the check would run for real")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "results")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "gpu/trt tests: no CUDA GPU (torch.cuda.is_available() is False)" in done.stdout
    assert "fused GroupNorm benchmark: no CUDA GPU" in done.stdout and "torch CUDA UNet timings: no CUDA GPU" in done.stdout
    assert not (tmp_path / "results").exists()
