"""Image-to-image through the exported VAE encoder: final latents vs diffusers' img2img pipelines, and bad input."""

from __future__ import annotations

import pytest
import torch

from controlnet_fixtures import ALPHA, noise_image, shared_controlnet_exports, shared_controlnets
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.schedulers import make_scheduler

LIMIT = {"torch": 1e-5, "onnxruntime": 1e-3}


@pytest.fixture(scope="module")
def exports():
    return shared_controlnet_exports()


def reference(pipeline_class, scheduler, **extra):
    parts = load_components("tiny-sd15")
    merged = merge_pipeline(parts, load_adapter("tiny-sd15"), ALPHA)
    pipe = pipeline_class(vae=merged.vae, text_encoder=merged.text_encoder, tokenizer=merged.tokenizer, unet=merged.unet,
                          scheduler=make_scheduler(scheduler, dict(parts.scheduler.config)), safety_checker=None,
                          feature_extractor=None, requires_safety_checker=False, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_image_to_image_matches_diffusers(exports, backend):
    from diffusers import StableDiffusionImg2ImgPipeline

    source = noise_image(264, 392, 11)  # StableDiffusionImg2ImgPipeline takes the size from the image
    pipe = ResAdapterPipeline.from_artifacts(exports["plain"], backend=backend)
    out = pipe("a red fox", height=392, width=264, num_inference_steps=5, guidance_scale=6.0, seed=2, scheduler="euler",
               image=source, strength=0.6, output_type="latent")
    expected = reference(StableDiffusionImg2ImgPipeline, "euler")(
        "a red fox", image=source, num_inference_steps=5, guidance_scale=6.0, strength=0.6,
        generator=torch.Generator().manual_seed(2), output_type="latent").images
    assert out.latents.shape == expected.shape == (1, 4, 49, 33)
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]
    assert len(out.timings.unet_steps) == 3 and out.parameters["strength"] == 0.6  # int(5 * 0.6) steps


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_controlnet_image_to_image_matches_diffusers(exports, backend):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    source, control = noise_image(120, 90, 12), noise_image(70, 50, 13)
    pipe = ResAdapterPipeline.from_artifacts(exports["one"], backend=backend)
    out = pipe("a red fox", height=200, width=328, num_inference_steps=5, guidance_scale=6.0, seed=2, scheduler="dpm++2m-karras",
               image=source, strength=0.8, control_image=control, controlnet_conditioning_scale=0.8,
               control_guidance_end=0.5, output_type="latent")
    diffusers_pipe = reference(StableDiffusionControlNetImg2ImgPipeline, "dpm++2m-karras",
                               controlnet=ControlNetModel.from_pretrained(shared_controlnets()[0]))
    expected = diffusers_pipe("a red fox", image=source, control_image=control, height=200, width=328, num_inference_steps=5,
                              guidance_scale=6.0, strength=0.8, controlnet_conditioning_scale=0.8, control_guidance_end=0.5,
                              generator=torch.Generator().manual_seed(2), output_type="latent").images
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]


@pytest.mark.parametrize("key,kwargs,message", [
    ("two", {"strength": 0.5}, "this export has no VAE encoder, so image-to-image cannot be used; re-export with "
                               "`resadapter-rt export ... --vae-encoder`"),
    ("plain", {"strength": 0.0}, "strength must be in (0, 1], got 0.0"),
    ("plain", {"strength": 1.5}, "strength must be in (0, 1], got 1.5"),
    ("plain", {"strength": 0.1}, "strength 0.1 with 4 steps leaves no denoising step; raise the strength or the steps"),
])
def test_bad_image_to_image_requests(exports, key, kwargs, message):
    pipe = ResAdapterPipeline.from_artifacts(exports[key])
    control = {"control_image": [noise_image(8, 8, 0)] * 2} if key == "two" else {}
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a house", height=128, width=128, num_inference_steps=4, image=noise_image(32, 32, 1), output_type="latent",
             **control, **kwargs)
    assert str(info.value) == message


def test_vae_encoder_is_exported_and_validated_off_trace(exports):
    import json

    manifest = json.loads((exports["plain"] / "manifest.json").read_text())
    encoder = manifest["components"]["vae_encoder"]
    assert [(r["width"], r["height"]) for r in encoder["validation"]] == [(264, 392)]
    assert max(r["relative_error"] for r in encoder["validation"]) <= 1e-3
    assert {i["name"]: i["shape"] for i in encoder["outputs"]}["latent_parameters"] == ["batch", 8, "latent_height", "latent_width"]
    assert "vae_encoder" not in json.loads((exports["two"] / "manifest.json").read_text())["components"]
