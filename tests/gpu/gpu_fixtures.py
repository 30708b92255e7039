"""Fixtures of the GPU tests (marked ``gpu``; they skip without CUDA): compiled Triton kernels, strict fp32.

Each GPU test module imports ``compiled_triton_kernels``, autouse there: GPU tests must never run on Triton's
CPU interpreter, so it fails a test (instead of letting it pass on the CPU) when ``TRITON_INTERPRET=1`` is set
or the kernels were already defined as interpreted functions in this process (tests/kernels/test_kernels.py
sets the flag only on machines without CUDA).
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def compiled_triton_kernels():
    """Fail a GPU test that would run the GroupNorm kernels on the interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("TRITON_INTERPRET=1 is set: the kernels would run on the CPU interpreter; unset it for GPU tests")
    pytest.importorskip("triton", reason="triton is not installed")
    from resadapter_rt.kernels import _triton_group_norm as kernels

    if type(kernels._apply_kernel).__name__ == "InterpretedFunction":
        pytest.fail("the GroupNorm kernels were defined under TRITON_INTERPRET=1 earlier in this process; "
                    "run the GPU tests in a process of their own")


@pytest.fixture
def strict_fp32():
    """fp32 matmuls and convolutions without TF32, so CUDA and CPU results are comparable at fp32 precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

