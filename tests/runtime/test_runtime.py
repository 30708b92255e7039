"""The generation loop: parity with diffusers' own pipelines on both backends, and bad input."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import quiet
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline, read_lora_file
from resadapter_rt.runtime.alpha_policy import auto_alpha
from resadapter_rt.cli import main
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.schedulers import make_scheduler

CHECK = ((328, 200, 1),)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    made = {}
    for key, family, alpha in (("sd15", "sd15", 0.8), ("sdxl", "sdxl", 0.8), ("sd15_dynamic", "sd15", "dynamic")):
        sizes = CHECK if family == "sd15" else ((384, 264, 1),)
        export_pipeline(ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}", alpha=alpha, validation_sizes=sizes),
                        root / key, progress=quiet)
        made[key] = root / key
    return made


def diffusers_latents(family, alpha, scheduler, prompt, width, height, steps, guidance, seed, loras=(), negative=None):
    parts = load_components(f"tiny-{family}")
    merged = merge_pipeline(parts, load_adapter(f"tiny-{family}"), alpha, loras)
    pipe = merged.to_diffusers(make_scheduler(scheduler, dict(parts.scheduler.config)))
    return pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative,
                generator=torch.Generator().manual_seed(seed), output_type="latent").images


CASES = [("sd15", "dpm++2m-karras", 256, 256), ("sd15", "euler-a", 328, 200),
         ("sdxl", "dpm++2m-karras", 384, 264), ("sdxl", "ddim", 256, 256)]


@pytest.mark.parametrize("family,scheduler,width,height", CASES)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_final_latents_match_diffusers_pipeline(artifacts, backend, family, scheduler, width, height):
    pipe = ResAdapterPipeline.from_artifacts(artifacts[family], backend=backend)
    negative = "blurry" if scheduler == "euler-a" else None
    out = pipe("a red fox", height=height, width=width, num_inference_steps=4, guidance_scale=6.0, seed=11,
               scheduler=scheduler, negative_prompt=negative, output_type="latent")
    expected = diffusers_latents(family, 0.8, scheduler, "a red fox", width, height, 4, 6.0, 11, negative=negative)
    assert out.latents.shape == expected.shape == (1, 4, height // 8, width // 8)
    assert float((out.latents - expected).abs().max()) <= 1e-3
    assert out.alpha == 0.8 and len(out.timings.unet_steps) == 4


def test_dynamic_alpha_per_request_matches_diffusers(artifacts):
    pipe = ResAdapterPipeline.from_artifacts(artifacts["sd15_dynamic"])
    for alpha in (0.3, 1.0):
        out = pipe("a house", height=200, width=328, num_inference_steps=3, seed=5, resadapter_alpha=alpha,
                   scheduler="euler", output_type="latent")
        expected = diffusers_latents("sd15", alpha, "euler", "a house", 328, 200, 3, 7.0, 5)
        assert out.alpha == alpha and float((out.latents - expected).abs().max()) <= 1e-3


def test_lcm_lora_stacked_at_export_with_lcm_scheduler(tmp_path):
    unet = load_components("tiny-sd15", unet_only=True).unet
    g = torch.Generator().manual_seed(2)
    state = {}
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.2.attentions.0.transformer_blocks.0.ff.net.2"):
        out_f, in_f = unet.get_submodule(name).weight.shape
        state[f"lora_unet_{name.replace('.', '_')}.lora_down.weight"] = 0.2 * torch.randn(4, in_f, generator=g)
        state[f"lora_unet_{name.replace('.', '_')}.lora_up.weight"] = 0.2 * torch.randn(out_f, 4, generator=g)
        state[f"lora_unet_{name.replace('.', '_')}.alpha"] = torch.tensor(4.0)
    lcm = tmp_path / "lcm_lora.safetensors"
    save_file(state, str(lcm))
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.6, loras=(f"{lcm}:1.0",),
                                  validation_sizes=CHECK), tmp_path / "lcm", progress=quiet)
    pipe = ResAdapterPipeline.from_artifacts(tmp_path / "lcm")
    out = pipe("a cat", height=256, width=384, num_inference_steps=4, guidance_scale=1.0, seed=1, scheduler="lcm", output_type="latent")
    expected = diffusers_latents("sd15", 0.6, "lcm", "a cat", 384, 256, 4, 1.0, 1, loras=[(read_lora_file(lcm), 1.0)])
    assert float((out.latents - expected).abs().max()) <= 1e-3


def test_auto_alpha_follows_the_official_bands():
    assert auto_alpha(512, 384, 512) == 1.0          # interpolation
    assert auto_alpha(768, 512, 512) == 0.6          # 1.5x the training size
    assert auto_alpha(640, 640, 512) == 0.8
    assert auto_alpha(1536, 1536, 512) == 0.2        # 3x and beyond
    assert auto_alpha(1024, 1024, 1024) == 1.0


def test_alpha_reporting_and_baked_mismatch(artifacts):
    dynamic = ResAdapterPipeline.from_artifacts(artifacts["sd15_dynamic"])
    assert dynamic.resolve_alpha("auto", 1000, 600) == auto_alpha(1000, 600, 512)
    baked = ResAdapterPipeline.from_artifacts(artifacts["sd15"])
    assert baked.resolve_alpha("auto", 1000, 600) == 0.8
    with pytest.raises(ResAdapterRTError, match=r"^this export has alpha baked at 0.8; re-export with --alpha dynamic"):
        baked.resolve_alpha(0.5, 512, 512)


def test_several_images_and_threads(artifacts):
    pipe = ResAdapterPipeline.from_artifacts(artifacts["sd15"])
    out = pipe("a boat", height=200, width=328, num_inference_steps=2, seed=4, num_images_per_prompt=2)
    assert len(out.images) == 2 and out.images[0].size == (328, 200)
    assert not torch.equal(out.latents[0], out.latents[1])
    sequential = [pipe("a boat", height=200, width=328, num_inference_steps=2, seed=s, output_type="latent").latents for s in (1, 2)]
    results = {}

    def work(seed):
        results[seed] = pipe("a boat", height=200, width=328, num_inference_steps=2, seed=seed, output_type="latent").latents

    threads = [threading.Thread(target=work, args=(s,)) for s in (1, 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert torch.equal(results[1], sequential[0]) and torch.equal(results[2], sequential[1])


def test_generate_cli_writes_png_with_parameters(artifacts, tmp_path, capsys):
    out = tmp_path / "img.png"
    code = main(["generate", "--artifacts", str(artifacts["sd15_dynamic"]), "--prompt", "a tree", "--width", "1000",
                 "--height", "600", "--steps", "2", "--alpha", "0.7", "-q", "-o", str(out)])
    assert code == 0
    image = Image.open(out)
    assert image.size == (1000, 600)
    params = json.loads(image.text["parameters"])
    assert params["resadapter_alpha"] == 0.7 and params["width"] == 1000 and params["prompt"] == "a tree"
    assert "UNet 2 steps" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", [
    (["--width", "1001"], "error: width 1001 is not a multiple of 8 px; use e.g. 1000"),
    (["--width", "2048"], "error: width 2048 px is outside what {dir} covers (128-1024 px per side, every multiple of 8); "
                          "choose a size in that range, or export a model whose adapter covers it, "
                          "or generate it in tiles: --tile-size 1024 --tile-stride 768"),
    (["--steps", "0"], "error: steps must be a positive integer, got 0"),
    (["--scheduler", "plms"], "error: unknown scheduler 'plms'; choose one of model, dpm++2m-karras, dpm++2m, euler, euler-a, ddim, lcm"),
    (["--backend", "tflite"], "error: unknown backend 'tflite'; choose one of onnxruntime, torch, tensorrt, onnxruntime-tensorrt, "
                              "openvino"),
    (["--guidance", "-1"], "error: guidance scale must be >= 0, got -1.0"),
    (["--prompt", "  "], "error: prompt is empty; pass the text to generate from"),
    (["--alpha", "high"], "error: alpha 'high' is not a number; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)"),
])
def test_generate_bad_input(artifacts, tmp_path, capsys, extra, message):
    args = {"--prompt": "a tree", "--width": "512", "--height": "512", "--steps": "2"}
    args.update(dict(zip(extra[::2], extra[1::2])))
    flat = [x for kv in args.items() for x in kv]
    code = main(["generate", "--artifacts", str(artifacts["sd15_dynamic"]), *flat, "-q", "-o", str(tmp_path / "x.png")])
    assert code == 2
    assert capsys.readouterr().err.strip() == message.format(dir=artifacts["sd15_dynamic"])
    assert not (tmp_path / "x.png").exists()


def test_generate_bad_artifacts(artifacts, tmp_path, capsys):
    base = ["generate", "--prompt", "a", "--width", "256", "--height", "256", "-q", "-o", str(tmp_path / "x.png")]
    assert main(base + ["--artifacts", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'nope'}: no such artifacts directory; create it with `resadapter-rt export --out {tmp_path / 'nope'} ...`")
    old = tmp_path / "old"
    shutil.copytree(artifacts["sd15"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps(manifest | {"format_version": 0}))
    assert main(base + ["--artifacts", str(old)]) == 2
    assert "export format 'resadapter-rt/export' v0 is not resadapter-rt/export v2; re-export it" in capsys.readouterr().err
