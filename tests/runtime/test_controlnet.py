"""ControlNet in the UNet graph: final latents vs diffusers' StableDiffusionControlNetPipeline, scales, windows, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnet_fixtures import ALPHA, noise_image, shared_controlnet_exports, shared_controlnets, shared_sdxl_controlnet_export
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.controlnet import ControlRequest
from resadapter_rt.runtime.schedulers import make_scheduler

LIMIT = {"torch": 1e-5, "onnxruntime": 1e-3}


@pytest.fixture(scope="module")
def controlnets():
    return shared_controlnets()


@pytest.fixture(scope="module")
def exports():
    return shared_controlnet_exports()


def diffusers_latents(controlnet_dirs, images, width, height, scheduler="euler", scale=1.0, start=0.0, end=1.0,
                      steps=4, seed=3, prompt="a red fox"):
    """diffusers' own ControlNet pipeline on the same merged UNet, ControlNets, scheduler and seed."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    parts = load_components("tiny-sd15")
    merged = merge_pipeline(parts, load_adapter("tiny-sd15"), ALPHA)
    nets = [ControlNetModel.from_pretrained(d) for d in controlnet_dirs]
    pipe = StableDiffusionControlNetPipeline(
        vae=merged.vae, text_encoder=merged.text_encoder, tokenizer=merged.tokenizer, unet=merged.unet,
        controlnet=nets[0] if len(nets) == 1 else nets, scheduler=make_scheduler(scheduler, dict(parts.scheduler.config)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, image=images[0] if len(nets) == 1 else images, height=height, width=width, num_inference_steps=steps,
                guidance_scale=6.0, generator=torch.Generator().manual_seed(seed), controlnet_conditioning_scale=scale,
                control_guidance_start=start, control_guidance_end=end, output_type="latent").images


CASES = [("one", 256, 256, "euler"), ("two", 328, 200, "dpm++2m-karras"), ("one", 264, 392, "euler"), ("two", 264, 392, "euler")]


@pytest.mark.parametrize("key,width,height,scheduler", CASES)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_final_latents_match_diffusers_controlnet_pipeline(exports, controlnets, backend, key, width, height, scheduler):
    count = 1 if key == "one" else 2
    images = [noise_image(100, 70, seed) for seed in range(count)]
    scale = 0.8 if count == 1 else [0.8, 1.3]
    pipe = ResAdapterPipeline.from_artifacts(exports[key], backend=backend)
    out = pipe("a red fox", height=height, width=width, num_inference_steps=4, guidance_scale=6.0, seed=3, scheduler=scheduler,
               control_image=images if count > 1 else images[0], controlnet_conditioning_scale=scale, output_type="latent")
    expected = diffusers_latents(controlnets[:count], images, width, height, scheduler, scale)
    assert out.latents.shape == expected.shape == (1, 4, height // 8, width // 8)
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]
    assert out.parameters["controlnet_conditioning_scale"] == ([0.8] if count == 1 else [0.8, 1.3])


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_guidance_windows_match_diffusers(exports, controlnets, backend):
    images = [noise_image(64, 96, 7), noise_image(90, 50, 8)]
    pipe = ResAdapterPipeline.from_artifacts(exports["two"], backend=backend)
    starts, ends = [0.25, 0.0], [0.75, 0.5]
    out = pipe("a red fox", height=200, width=328, num_inference_steps=4, guidance_scale=6.0, seed=3, scheduler="euler",
               control_image=images, controlnet_conditioning_scale=[1.0, 0.7], control_guidance_start=starts,
               control_guidance_end=ends, output_type="latent")
    expected = diffusers_latents(controlnets, images, 328, 200, "euler", [1.0, 0.7], starts, ends)
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]
    full = diffusers_latents(controlnets, images, 328, 200, "euler", [1.0, 0.7])
    assert float((full - expected).abs().max()) > 1e-2  # the windows really switch the ControlNets off


def test_keep_mask_is_diffusers_controlnet_keep():
    control = ControlRequest(images=torch.zeros(2, 1, 3, 8, 8), scales=[1.0, 0.5], starts=[0.25, 0.0], ends=[0.75, 1.0])
    assert [control.keep(i, 4) for i in range(4)] == [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]]
    assert control.step_scales(0, 4).tolist() == [0.0, 0.5]


def test_control_image_changes_the_output_and_scale_zero_is_the_plain_export(exports):
    pipe = ResAdapterPipeline.from_artifacts(exports["one"])
    plain = ResAdapterPipeline.from_artifacts(exports["plain"])
    kwargs = dict(height=392, width=264, num_inference_steps=3, guidance_scale=6.0, seed=4, scheduler="euler", output_type="latent")
    first = pipe("a house", control_image=noise_image(50, 50, 1), **kwargs).latents
    second = pipe("a house", control_image=noise_image(50, 50, 2), **kwargs).latents
    assert float((first - second).abs().max()) > 1e-2
    off = pipe("a house", control_image=noise_image(50, 50, 1), controlnet_conditioning_scale=0.0, **kwargs).latents
    reference = plain("a house", **kwargs).latents
    assert float((off - reference).abs().max()) <= 1e-4
    assert float((first - reference).abs().max()) > 1e-2


@pytest.mark.parametrize("key,kwargs,message", [
    ("one", {}, "this export has 1 ControlNet(s); pass 1 control image(s) (control_image=, or --control-image per ControlNet)"),
    ("plain", {"control_image": "IMG"}, "this export has no ControlNet, so a control image cannot be used; re-export with "
                                        "`resadapter-rt export ... --controlnet CONTROLNET`"),
    ("two", {"control_image": ["IMG"]}, "1 control image(s) given for an export with 2 ControlNet(s); pass one control image "
                                        "per ControlNet, in export order"),
    ("two", {"control_image": ["IMG", "IMG"], "controlnet_conditioning_scale": [1.0, 1.0, 1.0]},
     "controlnet_conditioning_scale has 3 values for 2 ControlNet(s); pass one value, or one per ControlNet"),
    ("one", {"control_image": "IMG", "control_guidance_start": 0.6, "control_guidance_end": 0.4},
     "control guidance window 0.6-0.4 is invalid; need 0 <= start < end <= 1"),
    ("one", {"control_image": np.zeros((8, 8, 3))}, "a control image must be a PIL image, got ndarray"),
])
def test_bad_control_arguments_are_one_line(exports, key, kwargs, message):
    image = noise_image(16, 16, 0)
    def real(value):
        return image if isinstance(value, str) else value

    if "control_image" in kwargs:
        value = kwargs["control_image"]
        kwargs["control_image"] = [real(v) for v in value] if isinstance(value, list) else real(value)
    pipe = ResAdapterPipeline.from_artifacts(exports[key])
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a house", height=128, width=128, num_inference_steps=1, output_type="latent", **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_sdxl_controlnet_with_dynamic_alpha_matches_diffusers(backend):
    """SDXL ControlNets take text_embeds/time_ids too; the ResAdapter's runtime alpha acts on the UNet only."""
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    export, net = shared_sdxl_controlnet_export()
    image = noise_image(90, 70, 5)
    pipe = ResAdapterPipeline.from_artifacts(export, backend=backend)
    out = pipe("a red fox", height=392, width=264, num_inference_steps=3, guidance_scale=6.0, seed=9, scheduler="euler",
               resadapter_alpha=0.8, control_image=image, controlnet_conditioning_scale=0.9, output_type="latent")
    parts = load_components("tiny-sdxl")
    merged = merge_pipeline(parts, load_adapter("tiny-sdxl"), 0.8)
    reference = StableDiffusionXLControlNetPipeline(
        vae=merged.vae, text_encoder=merged.text_encoder, text_encoder_2=merged.text_encoder_2, tokenizer=merged.tokenizer,
        tokenizer_2=merged.tokenizer_2, unet=merged.unet, controlnet=ControlNetModel.from_pretrained(net),
        scheduler=make_scheduler("euler", dict(parts.scheduler.config)), force_zeros_for_empty_prompt=True, add_watermarker=False)
    reference.set_progress_bar_config(disable=True)
    expected = reference("a red fox", image=image, height=392, width=264, num_inference_steps=3, guidance_scale=6.0,
                         generator=torch.Generator().manual_seed(9), controlnet_conditioning_scale=0.9, output_type="latent").images
    assert out.latents.shape == expected.shape == (1, 4, 49, 33)
    # dynamic alpha keeps the LoRA as a branch (conv(x) + alpha * up(down(x))) where diffusers runs merged weights:
    # other float rounding, measured 1.4e-5 max abs on latents of magnitude ~6 with the torch backend
    assert float((out.latents - expected).abs().max()) <= max(LIMIT[backend], 1e-4)


@pytest.mark.slow  # a large odd latent: minutes on 2 shared cores
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_large_odd_latent_840x1000(exports, controlnets, backend):
    """Both latent sides odd (105x125) at the official demo's width. Its height, 1264, is outside the 128-1024 px
    that the runtime serves for SD1.5 (the v2 adapter's model card), so it is refused before any work."""
    image = noise_image(564, 846, 21)
    pipe = ResAdapterPipeline.from_artifacts(exports["one"], backend=backend)
    out = pipe("a red fox", height=1000, width=840, num_inference_steps=2, guidance_scale=6.0, seed=3, scheduler="euler",
               control_image=image, controlnet_conditioning_scale=0.8, output_type="latent")
    expected = diffusers_latents(controlnets[:1], [image], 840, 1000, "euler", 0.8, steps=2)
    assert out.latents.shape == expected.shape == (1, 4, 125, 105)
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]
