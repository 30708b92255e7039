"""The Triton GroupNorm(+SiLU) kernels compiled for the GPU, on CUDA tensors, against float64 and torch.

Tolerances, stated once:
* odd shapes (the CPU tier's, through both plans): every element within 1e-4 plus one unit in the last
  place (ulp) of the output dtype of the float64 reference, the bound the interpreter meets on the CPU;
* SD shapes (UNet and VAE decoder norms at 512-1024 px): max |error vs float64| at most twice torch's own
  CUDA GroupNorm error plus one ulp of the dtype at the output's largest magnitude.
Inputs are fresh random data with a mean offset (E[x^2] - mean^2 would cancel), never zeros.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_fixtures import compiled_triton_kernels  # noqa: F401 (autouse fixture)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]

ODD_SHAPES = [(2, 96, 7, 5, 3), (1, 256, 1, 1, 32), (2, 64, 33, 1, 8), (1, 40, 45, 31, 4)]
# (n, c, h, w, groups, silu): SD1.5 UNet 512² (first block; mid block; an up block), SDXL UNet 1024², VAE decoder 512²
SD_SHAPES = [(2, 320, 64, 64, 32, True), (2, 1280, 8, 8, 32, False), (2, 1920, 32, 32, 32, True),
             (2, 640, 128, 128, 32, True), (1, 128, 512, 512, 32, True)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SIGNIFICAND_BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` numbers at ``values`` (fp16 subnormals keep the 2^-24 spacing)."""
    exponent = torch.frexp(values)[1].clamp(min=-14).double()
    return torch.pow(2.0, exponent - SIGNIFICAND_BITS[dtype])


def inputs(n, c, h, w, dtype, channels_last, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (100 + torch.randn(n, c, h, w, device="cuda", generator=g)).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(c, device="cuda", generator=g).to(dtype)
    bias = torch.randn(c, device="cuda", generator=g).to(dtype)
    return x, weight, bias


def float64_reference(x, groups, weight, bias, silu):
    out = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5)
    return F.silu(out) if silu else out


def run_plan(x, groups, weight, bias, silu, path):
    from resadapter_rt.kernels.group_norm_op import _triton_group_norm

    out = _triton_group_norm(x, groups, weight, bias, 1e-5, silu, path)
    torch.cuda.synchronize()
    assert out.device == x.device and out.dtype == x.dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert bool(torch.isfinite(out).all()), "non-finite output (unwritten or overflowed elements)"
    return out


@pytest.mark.parametrize("path", ["single", "split"])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,h,w,groups", ODD_SHAPES)
def test_kernel_matches_float64_on_odd_shapes(n, c, h, w, groups, dtype, channels_last, silu, path):
    x, weight, bias = inputs(n, c, h, w, dtype, channels_last, seed=c * 7 + h + w + int(silu) + 2 * DTYPES.index(dtype))
    out = run_plan(x, groups, weight, bias, silu, path)
    expected = float64_reference(x, groups, weight, bias, silu)
    excess = (out.double() - expected).abs() - (1e-4 + ulp(expected, dtype))
    assert float(excess.max()) <= 0, f"max error {float((out.double() - expected).abs().max()):.3g}"


@pytest.mark.parametrize("path", ["single", "split"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,c,h,w,groups,silu", SD_SHAPES)
def test_kernel_within_twice_torch_error_on_sd_shapes(n, c, h, w, groups, silu, dtype, channels_last, path):
    x, weight, bias = inputs(n, c, h, w, dtype, channels_last, seed=c + h + 3 * DTYPES.index(dtype) + int(channels_last))
    expected = float64_reference(x, groups, weight, bias, silu)
    torch_out = F.group_norm(x, groups, weight, bias, 1e-5)
    torch_error = float(((F.silu(torch_out) if silu else torch_out).double() - expected).abs().max())
    kernel_error = float((run_plan(x, groups, weight, bias, silu, path).double() - expected).abs().max())
    limit = 2 * torch_error + float(ulp(expected.abs().max(), dtype))
    assert kernel_error <= limit, f"kernel error {kernel_error:.3g}, torch's {torch_error:.3g}, limit {limit:.3g}"


def test_public_group_norm_on_cuda_follows_the_plan_and_runs_the_kernel(monkeypatch):
    """``group_norm`` on CUDA tensors launches the Triton kernels (never torch's op) with the cost model's plan."""
    import resadapter_rt.kernels._triton_group_norm as kernels
    from resadapter_rt.kernels import group_norm
    from resadapter_rt.kernels.launch_plan import plan_group_norm

    launched = []
    original = kernels.launch
    monkeypatch.setattr(kernels, "launch", lambda *args: launched.append(args[-1]) or original(*args))
    monkeypatch.setattr(F, "group_norm", lambda *a, **k: pytest.fail("torch's group_norm ran instead of the kernel"))
    x, weight, bias = inputs(2, 320, 64, 64, torch.float16, False, seed=5)
    out = group_norm(x, 32, weight, bias, activation="silu")
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    assert [plan.path for plan in launched] == [plan_group_norm((2, 320, 64, 64), 32, 2, False, sms).path]
    monkeypatch.undo()
    expected = float64_reference(x, 32, weight, bias, True)
    assert float((out.double() - expected).abs().max()) <= 2 * float(ulp(expected.abs().max(), torch.float16))


def test_kernel_without_affine_and_on_3d_input():
    from resadapter_rt.kernels import group_norm

    g = torch.Generator(device="cuda").manual_seed(11)
    x = torch.randn(2, 512, 4096, device="cuda", generator=g) * 5 + 40  # the VAE's attention norm: [N, C, H*W]
    out = group_norm(x, 32, None, None)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), F.group_norm(x.double(), 32), rtol=0, atol=1e-5)
