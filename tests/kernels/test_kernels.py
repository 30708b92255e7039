"""Fused GroupNorm(+SiLU): the Triton kernel (under TRITON_INTERPRET=1 without CUDA), the torch switch, the cuda export.

Without CUDA the kernels run on Triton's CPU interpreter; with CUDA the flag is left alone (it would turn
every kernel defined later in this process into an interpreted one, GPU tests' too) and the same tests run
the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first defined: run them on the CPU
DEVICE = "cuda" if CUDA else "cpu"
pytest.importorskip("triton", reason="triton is not installed (pip install -e .[test])")

from resadapter_rt import ResAdapterRTError, load_components  # noqa: E402
from resadapter_rt.kernels import group_norm  # noqa: E402
from resadapter_rt.kernels.fuse import fuse_group_norm_silu  # noqa: E402
from resadapter_rt.kernels.group_norm_op import _triton_group_norm  # noqa: E402
from resadapter_rt.kernels.launch_plan import plan_group_norm  # noqa: E402

# (n, c, h, w, groups): channels not a multiple of the tile, H*W = 1, 33 or 1395 (uneven chunks)
SHAPES = [(2, 96, 7, 5, 3), (1, 256, 1, 1, 32), (2, 64, 33, 1, 8), (1, 40, 45, 31, 4)]
ULP_BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}  # significand bits


def reference(x, groups, weight, bias, activation):
    """torch's own op in float64: the fp32 CPU op itself loses ~6e-3 on channels-last data with mean 300."""
    out = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-5)
    return F.silu(out) if activation == "silu" else out


def assert_within_1e4_of_reference(out, expected):
    """|out - float64 reference| <= 1e-4 plus one unit in the last place of the output dtype (its rounding)."""
    exponent = torch.frexp(expected)[1].clamp(min=-14).double()  # fp16 subnormals keep the 2^-24 spacing
    ulp = torch.pow(2.0, exponent - ULP_BITS[out.dtype])
    excess = (out.double() - expected).abs() - (1e-4 + ulp)
    assert float(excess.max()) <= 0, f"max error {float((out.double() - expected).abs().max()):.3g}"


def run_kernel(n, c, h, w, groups, dtype, channels_last, activation, path):
    g = torch.Generator().manual_seed(c + h)
    x = (100 + torch.randn(n, c, h, w, generator=g)).to(DEVICE, dtype)  # a mean offset: E[x^2] - mean^2 would cancel
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(c, generator=g).to(DEVICE, dtype), torch.randn(c, generator=g).to(DEVICE, dtype)
    out = _triton_group_norm(x, groups, weight, bias, 1e-5, activation == "silu", path)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    assert out.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)
    assert_within_1e4_of_reference(out.cpu(), reference(x.cpu(), groups, weight.cpu(), bias.cpu(), activation))


@pytest.mark.parametrize("n,c,h,w,groups", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("path", ["single", "split"])
def test_kernels_match_float64_on_odd_shapes_with_mean_offset(n, c, h, w, groups, dtype, channels_last, activation, path):
    run_kernel(n, c, h, w, groups, dtype, channels_last, activation, path)


@pytest.mark.parametrize("channels_last", [False, True])
def test_split_path_with_several_blocks_per_chunk(monkeypatch, channels_last):
    """With 1 SM the plan gives each stats program several tiles and the last chunk is short."""
    import resadapter_rt.kernels.group_norm_op as module

    monkeypatch.setattr(module, "_sm_count", lambda device: 1)
    plan = plan_group_norm((1, 40, 45, 31), 4, 4, channels_last, sms=1, path="split")
    assert plan.hw_chunk > plan.tile.block_hw and 45 * 31 % plan.hw_chunk != 0 and plan.n_chunks > 1
    run_kernel(1, 40, 45, 31, 4, torch.float32, channels_last, "silu", "split")


@pytest.mark.parametrize("channels_last", [False, True])
def test_default_plan_on_an_sd_shape(channels_last):
    """An SD1.5 UNet shape (320 channels, 32 groups) through the public API, at a CPU-friendly size."""
    g = torch.Generator().manual_seed(1)
    x = (300 + 3 * torch.randn(2, 320, 9, 13, generator=g)).to(torch.float16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight, bias = torch.randn(320, generator=g), torch.randn(320, generator=g)
    out = group_norm(x.to(DEVICE), 32, weight.to(DEVICE), bias.to(DEVICE), activation="silu")
    assert_within_1e4_of_reference(out.cpu(), reference(x, 32, weight, bias, "silu"))


def test_kernel_without_affine_and_on_3d_input():
    x = torch.randn(2, 32, 50) * 5 + 40
    out = group_norm(x.to(DEVICE), 4, None, None).cpu()
    torch.testing.assert_close(out, F.group_norm(x.double(), 4).float(), rtol=0, atol=1e-5)


def test_cpu_without_interpreter_falls_back_to_torch(monkeypatch):
    import resadapter_rt.kernels.group_norm_op as module

    monkeypatch.setattr(module, "_interpreting", lambda: False)
    x = torch.randn(2, 8, 5, 3)
    weight, bias = torch.randn(8), torch.randn(8)
    assert torch.equal(group_norm(x, 4, weight, bias, activation="silu"), F.silu(F.group_norm(x, 4, weight, bias)))


def test_bad_arguments():
    with pytest.raises(ResAdapterRTError, match=r"^group_norm: 30 channels are not divisible into 4 groups$"):
        group_norm(torch.zeros(1, 30, 2, 2), 4, None, None)
    with pytest.raises(ResAdapterRTError, match=r"^activation 'gelu' is not supported; use None or 'silu'$"):
        group_norm(torch.zeros(1, 32, 2, 2), 4, None, None, activation="gelu")


def test_switch_replaces_pairs_and_keeps_outputs():
    parts = load_components("tiny-sd15")
    unet, vae = parts.unet.eval(), parts.vae.eval()
    fused_unet, fused_vae = copy.deepcopy(unet), copy.deepcopy(vae)
    assert fuse_group_norm_silu(fused_unet) == 2 * 22 + 1  # two per ResNet block, plus conv_norm_out -> conv_act
    assert fuse_group_norm_silu(fused_vae.decoder) == 2 * 10 + 1
    g = torch.Generator().manual_seed(0)
    sample, embeds = torch.randn(1, 4, 16, 24, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        expected = unet(sample, torch.tensor([300.0]), embeds).sample
        got = fused_unet(sample, torch.tensor([300.0]), embeds).sample
        assert float((got - expected).abs().max() / expected.abs().max()) < 1e-5
        image, fused_image = vae.decode(sample).sample, fused_vae.decode(sample).sample
        assert float((fused_image - image).abs().max()) < 1e-4


def test_torch_backend_switch_gives_the_same_images(tmp_path):
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline
    from resadapter_rt.pipeline import ResAdapterPipeline

    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.5, validation_sizes=((328, 200, 1),)),
                    tmp_path / "art", progress=lambda m: None)
    plain = ResAdapterPipeline.from_artifacts(tmp_path / "art", backend="torch", fused_group_norm=False)
    fused = ResAdapterPipeline.from_artifacts(tmp_path / "art", backend="torch", fused_group_norm=True)
    assert plain.fused_group_norm_pairs == 0 and fused.fused_group_norm_pairs == 45 + 21
    kwargs = dict(height=128, width=192, num_inference_steps=2, guidance_scale=1.0, seed=3, scheduler="euler")
    a, b = plain("a cat", **kwargs), fused("a cat", **kwargs)
    assert float((a.latents - b.latents).abs().max()) < 1e-4
    difference = (torch.tensor(list(a.images[0].getdata())) - torch.tensor(list(b.images[0].getdata()))).abs().max()
    assert int(difference) <= 1  # 8-bit images equal up to rounding


def test_cuda_target_export_contains_fused_group_norm(tmp_path):
    import onnx

    from resadapter_rt.export.exporter import ExportOptions, export_pipeline

    manifest = export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", target="cuda",
                                             validation_sizes=((328, 200, 1),)), tmp_path / "cuda", progress=lambda m: None)
    unet = manifest["components"]["unet"]["group_norm"]
    assert unet["before"]["InstanceNormalization"] == 56 and unet["after"]["InstanceNormalization"] == 0
    assert unet["after"]["com.microsoft.GroupNorm"] + unet["after"]["com.microsoft.SkipGroupNorm"] == 56
    graph = onnx.load(str(tmp_path / "cuda" / "unet" / "model.onnx")).graph
    fused = [n for n in graph.node if n.domain == "com.microsoft" and n.op_type in ("GroupNorm", "SkipGroupNorm")]
    activations = [a.i for n in fused for a in n.attribute if a.name == "activation"]
    assert len(fused) == 56 and activations.count(1) >= 45  # SiLU folded into the norm where it follows
    assert manifest["components"]["unet"]["validated_graph"].startswith("pre-fusion")


@pytest.mark.gpu
def test_cuda_target_runs_on_the_cuda_provider(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDA is not available")
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline
    from resadapter_rt.pipeline import ResAdapterPipeline

    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", target="cuda", validation_sizes=((328, 200, 1),)),
                    tmp_path / "cuda", progress=lambda m: None)
    kwargs = dict(height=200, width=328, num_inference_steps=3, seed=1, output_type="latent")
    gpu = ResAdapterPipeline.from_artifacts(tmp_path / "cuda")("a cat", **kwargs).latents
    ref = ResAdapterPipeline.from_artifacts(tmp_path / "cuda", backend="torch")("a cat", **kwargs).latents
    assert float((gpu - ref).abs().max()) < 1e-2
