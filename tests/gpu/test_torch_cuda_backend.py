"""The torch CUDA backend on the tiny models: the same numbers as the CPU, with and without fused GroupNorm,
and CUDA graph replay equal to eager.

Tolerances (relative: max |a - b| / max |b|): CUDA vs CPU in fp32 with TF32 off 1e-4; fused vs torch
GroupNorm on CUDA 2e-5 in fp32 (the CPU tier's 1e-5 with room for the GPU's summation order) and 1e-2 in
fp16; graph replay vs eager of the same module 1e-5 in fp32 with TF32 off (the same kernels; room for a
different cuDNN algorithm under capture). The pipeline: final latents within 1e-3 of the CPU's,
8-bit images within 2 levels.
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import relative_error, unet_inputs
from gpu_fixtures import compiled_triton_kernels, strict_fp32  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]


@pytest.fixture(scope="module")
def tiny_sd15():
    from resadapter_rt import load_components

    return load_components("tiny-sd15")


def on_cuda(inputs: dict, dtype: torch.dtype = torch.float32) -> dict:
    """UNet inputs on the GPU; floating tensors (not the timestep) in ``dtype``."""
    moved = {}
    for name, value in inputs.items():
        if isinstance(value, dict):
            moved[name] = on_cuda(value, dtype)
        else:
            moved[name] = value.to("cuda", dtype if value.is_floating_point() and name != "timestep" else value.dtype)
    return moved


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
@pytest.mark.parametrize("fused", [False, True], ids=["torch-group-norm", "fused-group-norm"])
def test_unet_on_cuda_matches_cpu(model, fused, strict_fp32):
    from resadapter_rt import load_components
    from resadapter_rt.kernels.fuse import fuse_group_norm_silu

    unet = load_components(model, unet_only=True).unet.eval()
    inputs = unet_inputs(unet, batch=2, height=16, width=24, seed=1)
    with torch.inference_mode():
        expected = unet(**inputs).sample
        gpu_unet = copy.deepcopy(unet).to("cuda")
        if fused:
            assert fuse_group_norm_silu(gpu_unet) > 0
        got = gpu_unet(**on_cuda(inputs)).sample
    assert relative_error(got.cpu(), expected) < 1e-4


@pytest.mark.parametrize("dtype,limit", [(torch.float32, 2e-5), (torch.float16, 1e-2)], ids=["fp32", "fp16"])
def test_fused_group_norm_unet_and_decoder_equal_unfused_on_cuda(tiny_sd15, dtype, limit, strict_fp32):
    from resadapter_rt.kernels.fuse import fuse_group_norm_silu

    unet, vae = copy.deepcopy(tiny_sd15.unet).to("cuda", dtype).eval(), copy.deepcopy(tiny_sd15.vae).to("cuda", dtype).eval()
    fused_unet, fused_vae = copy.deepcopy(unet), copy.deepcopy(vae)
    assert fuse_group_norm_silu(fused_unet) == 45 and fuse_group_norm_silu(fused_vae.decoder) == 21
    inputs = on_cuda(unet_inputs(unet, batch=2, height=32, width=40, seed=2), dtype)
    with torch.inference_mode():
        assert relative_error(fused_unet(**inputs).sample.float(), unet(**inputs).sample.float()) < limit
        latents = inputs["sample"]
        assert relative_error(fused_vae.decode(latents).sample.float(), vae.decode(latents).sample.float()) < limit


@pytest.mark.parametrize("fused", [False, True], ids=["torch-group-norm", "fused-group-norm"])
def test_cuda_graph_replay_equals_eager(tiny_sd15, fused, strict_fp32):
    """Captured once, replayed on new data copied into the static inputs: the eager result on that data."""
    from resadapter_rt.kernels.fuse import fuse_group_norm_silu

    unet = copy.deepcopy(tiny_sd15.unet).to("cuda").eval()
    if fused:
        fuse_group_norm_silu(unet)
    static = on_cuda(unet_inputs(unet, batch=2, height=24, width=32, seed=3))
    with torch.inference_mode():
        step = lambda: unet(**static).sample  # noqa: E731
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: kernel compilation and cuDNN/cuBLAS handles outside the capture
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        replays = []
        for seed in (4, 5):
            fresh = on_cuda(unet_inputs(unet, batch=2, height=24, width=32, seed=seed))
            static["sample"].copy_(fresh["sample"])
            static["encoder_hidden_states"].copy_(fresh["encoder_hidden_states"])
            graph.replay()
            replays.append(static_out.clone())
            assert relative_error(replays[-1], unet(**fresh).sample) < 1e-5
    assert relative_error(replays[1], replays[0]) > 1e-3  # the replays really read the new inputs


def test_pipeline_torch_backend_on_cuda_matches_cpu(tmp_path, monkeypatch, strict_fp32):
    """Whole generations (text encoder, UNet with fused GroupNorm, VAE decoder) on CUDA vs the same export on the CPU."""
    import resadapter_rt.runtime.runners as runners
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline
    from resadapter_rt.pipeline import ResAdapterPipeline

    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.5, validation_sizes=((328, 200, 1),)),
                    tmp_path / "art", progress=lambda m: None)
    kwargs = dict(height=128, width=192, num_inference_steps=3, guidance_scale=5.0, seed=3, scheduler="euler")
    gpu = ResAdapterPipeline.from_artifacts(tmp_path / "art", backend="torch")
    assert gpu.device == "cuda" and gpu.fused_group_norm_pairs == 45 + 21  # fused by default on CUDA + Triton
    on_gpu = gpu("a cat", **kwargs)
    monkeypatch.setattr(runners, "torch_device", lambda: "cpu")
    cpu = ResAdapterPipeline.from_artifacts(tmp_path / "art", backend="torch", fused_group_norm=False)
    assert cpu.device == "cpu"
    on_cpu = cpu("a cat", **kwargs)
    assert float((on_gpu.latents - on_cpu.latents).abs().max()) < 1e-3
    difference = (torch.tensor(list(on_gpu.images[0].getdata())) - torch.tensor(list(on_cpu.images[0].getdata()))).abs()
    assert int(difference.max()) <= 2
