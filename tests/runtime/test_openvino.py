"""The openvino backend: fp32 parity with the torch backend, bf16 where the CPU has it, the compile cache, bad input."""

from __future__ import annotations

import json
import sys
import threading

import pytest
import torch
from PIL import Image

from cli_harness import assert_bad_input_touches_nothing, assert_one_line_error, run_main
from conftest import quiet
from resadapter_rt import ResAdapterRTError
from resadapter_rt.export.exporter import ExportOptions, export_pipeline, read_manifest
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.openvino_runners import (BF16_COMPONENTS, QUALITY_BOUND, OpenVINORunner, openvino_runners,
                                                  resolve_cpu_precision)

openvino = pytest.importorskip("openvino")
NATIVE_BF16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The tiny SD1.5 pipeline with dynamic alpha."""
    out = tmp_path_factory.mktemp("ov") / "export"
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", validation_sizes=((328, 200, 1),)),
                    out, progress=quiet)
    return out


def test_fp32_final_latents_match_torch_backend_with_dynamic_alpha(export):
    ov = ResAdapterPipeline.from_artifacts(export, backend="openvino", cpu_precision="fp32")
    reference = ResAdapterPipeline.from_artifacts(export, backend="torch", fused_group_norm=False)
    assert ov.precisions == {"unet": "fp32", "text_encoder": "fp32", "vae_decoder": "fp32"}
    for alpha in (0.4, 1.3):  # 328x200: not a multiple of 64; two alphas through the same compiled UNet
        kwargs = dict(height=200, width=328, num_inference_steps=4, guidance_scale=6.0, seed=3, resadapter_alpha=alpha,
                      output_type="latent")
        ours, expected = ov("a red fox", **kwargs), reference("a red fox", **kwargs)
        assert ours.latents.shape == (1, 4, 25, 41)
        assert float((ours.latents - expected.latents).abs().max()) <= 1e-3
        assert ours.parameters["cpu_precision"] == "fp32 -> fp32" and ours.parameters["backend"] == "openvino"


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")
def test_bf16_is_applied_and_stays_close_also_from_a_cache_an_fp32_compile_filled(export):
    """OpenVINO's CPU cache blob does not depend on the precision hint; it is applied when the blob is loaded."""
    manifest = read_manifest(export)
    openvino_runners(export, manifest, "fp32")
    runners, chosen = openvino_runners(export, manifest, "auto")
    assert chosen == "bf16" and runners["unet"].loaded_from_cache
    assert {n: r.precision for n, r in runners.items()} == {n: "bf16" if n in BF16_COMPONENTS else "fp32" for n in manifest["components"]}
    fresh = {p: OpenVINORunner(export / "unet" / "model.onnx", p) for p in ("fp32", "bf16")}  # no cache
    g = torch.Generator().manual_seed(0)
    inputs = dict(sample=torch.randn(2, 4, 25, 41, generator=g), timestep=torch.tensor([700.0, 700.0]),
                  encoder_hidden_states=torch.randn(2, 77, 32, generator=g), resadapter_alpha=torch.tensor(0.8))
    cached = runners["unet"](**inputs)["out_sample"]
    low, exact = (fresh[p](**inputs)["out_sample"] for p in ("bf16", "fp32"))
    assert torch.equal(cached, low)
    error = float((low - exact).abs().max() / exact.abs().max())
    assert 1e-4 < error < 5e-2  # bf16 really ran (not fp32), and is still close


def test_compiled_models_come_from_the_cache_the_second_time(export):
    manifest = read_manifest(export)
    openvino_runners(export, manifest, "fp32")
    again, _ = openvino_runners(export, manifest, "fp32")
    assert all(r.loaded_from_cache for r in again.values())


def test_generate_records_the_precision_choice(export, tmp_path, capsys):
    out = tmp_path / "img.png"
    result = run_main(["generate", "--artifacts", str(export), "--backend", "openvino", "--prompt", "a tree", "--width", "200",
                       "--height", "136", "--steps", "2", "-q", "-o", str(out)], capsys)
    chosen = "bf16" if NATIVE_BF16 else "fp32"
    assert result.returncode == 0, result.stderr
    params = json.loads(Image.open(out).text["parameters"])
    assert params["cpu_precision"] == f"auto -> {chosen}"
    assert params["precision"] == {n: chosen if n in BF16_COMPONENTS else "fp32" for n in ("unet", "text_encoder", "vae_decoder")}
    assert f"openvino (auto -> {chosen}: unet " in result.stdout


def test_auto_and_bf16_follow_the_cpu_capabilities():
    assert resolve_cpu_precision("auto", ["BF16", "FP32", "INT8"]) == "bf16"
    assert resolve_cpu_precision("auto", ["FP32", "INT8"]) == "fp32"
    assert resolve_cpu_precision("fp32", ["BF16", "FP32"]) == "fp32"
    with pytest.raises(ResAdapterRTError) as raised:
        resolve_cpu_precision("bf16", ["FP32", "INT8"])
    assert str(raised.value) == ("--cpu-precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX); OpenVINO reports only "
                                 "FP32, INT8 here; use --cpu-precision fp32 (or auto)")


@pytest.mark.parametrize("extra,message", [
    (["--backend", "openvino", "--cpu-precision", "fp16"], "error: unknown CPU precision 'fp16'; choose one of fp32, bf16, auto"),
    (["--cpu-precision", "bf16"], "error: --cpu-precision applies to --backend openvino, not onnxruntime; "
                                  "drop it or use --backend openvino"),
])
def test_generate_bad_precision(export, tmp_path, monkeypatch, capsys, extra, message):
    argv = ["generate", "--artifacts", str(export), "--prompt", "a", "--width", "256", "--height", "256", "-q", "-o", "x.png", *extra]
    assert_bad_input_touches_nothing(tmp_path, argv, message, monkeypatch, capsys)


def test_without_openvino_one_line_names_the_extra(export, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    argv = ["generate", "--artifacts", str(export), "--backend", "openvino", "--prompt", "a", "--width", "256", "--height", "256",
            "-q", "-o", str(tmp_path / "x.png")]
    line = assert_one_line_error(run_main(argv, capsys), "")
    assert line == ("error: backend 'openvino' needs the OpenVINO runtime, which is not installed; "
                    'pip install -e ".[openvino]"')
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")
def test_bf16_image_stays_inside_the_quality_bound(export):
    """The documented bound (QUALITY_BOUND) on the tiny model: 20 steps, bf16 (auto) vs fp32, decoded [0, 1] pixels."""
    images = {}
    for precision in ("fp32", "auto"):
        pipe = ResAdapterPipeline.from_artifacts(export, backend="openvino", cpu_precision=precision)
        latents = pipe("a red fox", height=256, width=328, num_inference_steps=20, seed=2, resadapter_alpha=0.8,
                       output_type="latent").latents
        decoded = pipe.runners["vae_decoder"](latent_sample=latents / pipe.manifest["vae_scaling_factor"])["sample"]
        images[precision] = (decoded / 2 + 0.5).clamp(0, 1)
    difference = images["auto"] - images["fp32"]
    psnr = float(10 * torch.log10(1 / difference.pow(2).mean()))
    assert 0 < float(difference.abs().max()) <= QUALITY_BOUND["max_abs_pixel"]
    assert psnr >= QUALITY_BOUND["psnr_db"]


def test_concurrent_calls_match_sequential_ones(export):
    """Each thread gets its own infer request: two threads on one pipeline give the sequential results."""
    pipe = ResAdapterPipeline.from_artifacts(export, backend="openvino", cpu_precision="fp32")

    def run(seed):
        return pipe("a boat", height=136, width=200, num_inference_steps=2, seed=seed, output_type="latent").latents

    sequential = {seed: run(seed) for seed in (1, 2)}
    results = {}
    threads = [threading.Thread(target=lambda s=s: results.__setitem__(s, run(s))) for s in (1, 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(torch.equal(results[s], sequential[s]) for s in (1, 2))


def test_exports_openvino_cannot_read_are_refused(export):
    manifest = read_manifest(export)
    with pytest.raises(ResAdapterRTError) as raised:
        openvino_runners(export, manifest | {"target": "cuda"}, "fp32")
    assert str(raised.value) == (f"{export}: this export targets CUDA (fused GroupNorm ops OpenVINO cannot read); "
                                 "re-export with --target cpu for the openvino backend")
    fp16 = {**manifest, "components": {**manifest["components"], "unet": {**manifest["components"]["unet"], "dtype": "fp16"}}}
    with pytest.raises(ResAdapterRTError) as raised:
        openvino_runners(export, fp16, "fp32")
    assert str(raised.value) == (f"{export}: the openvino backend reads fp32 exports (bf16 is chosen at compile time with "
                                 "--cpu-precision); re-export with --dtype fp32")
