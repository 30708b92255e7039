"""IP-Adapter in the UNet graph: final latents vs diffusers (``load_ip_adapter`` + ``set_ip_adapter_scale`` on the same
merged UNet) for text-to-image, image-to-image and inpainting; the runtime scale; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controlnet_fixtures import noise_image, shared_controlnet_exports, shared_controlnets
from ip_adapter_fixtures import ALPHA, BAKED_SCALES, shared_baked_scale_exports, shared_ip_adapters, shared_ip_controlnet_export, shared_ip_exports
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.schedulers import make_scheduler

LIMIT = {"torch": 1e-5, "onnxruntime": 1e-3}
WIDTH, HEIGHT = 264, 392  # non-square, not a multiple of 64: latent 33x49
STEPS, GUIDANCE, SEED = 5, 6.0, 3


@pytest.fixture(scope="module")
def exports():
    return shared_ip_exports()


def diffusers_pipeline(family, variant: str, mode: str, scale: float, alpha=ALPHA, controlnet=None):
    """diffusers' own pipeline for ``mode`` on the same merged model, with the IP-Adapter loaded by ``load_ip_adapter``."""
    import diffusers

    sdxl = family is SDXL
    name = {"t2i": "", "i2i": "Img2Img", "inpaint": "Inpaint"}[mode]
    if controlnet is not None:
        name = "ControlNet" + name
    cls = getattr(diffusers, f"StableDiffusion{'XL' if sdxl else ''}{name}Pipeline")
    parts = load_components(f"tiny-{family.name}")
    merged = merge_pipeline(parts, load_adapter(f"tiny-{family.name}"), alpha)
    kwargs = dict(vae=merged.vae, text_encoder=merged.text_encoder, tokenizer=merged.tokenizer, unet=merged.unet,
                  scheduler=make_scheduler("euler", dict(parts.scheduler.config)), image_encoder=None, feature_extractor=None)
    if sdxl:
        kwargs |= dict(text_encoder_2=merged.text_encoder_2, tokenizer_2=merged.tokenizer_2)
    else:
        kwargs |= dict(safety_checker=None, requires_safety_checker=False)
    if controlnet is not None:
        kwargs["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet)
    pipe = cls(**kwargs)
    file = shared_ip_adapters(family)[variant]
    pipe.load_ip_adapter(str(file.parent), subfolder="", weight_name=file.name, image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(scale)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mode_inputs(mode: str) -> dict:
    if mode == "t2i":
        return {}
    inputs = {"image": noise_image(WIDTH, HEIGHT, 11), "strength": 0.6}
    if mode == "inpaint":
        inputs["mask_image"] = noise_image(WIDTH // 8, HEIGHT // 8, 12).resize((WIDTH, HEIGHT)).convert("L")
    return inputs


CASES = [("sd15-plain", SD15, "plain", mode) for mode in ("t2i", "i2i", "inpaint")] + \
        [("sd15-full-face", SD15, "full-face", mode) for mode in ("t2i", "inpaint")] + [("sd15-plus", SD15, "plus", "t2i")] + \
        [("sdxl-plain", SDXL, "plain", mode) for mode in ("t2i", "i2i", "inpaint")]


@pytest.mark.parametrize("key,family,variant,mode", CASES)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_final_latents_match_diffusers(exports, backend, key, family, variant, mode):
    ip_image = noise_image(300, 200, 5)  # another size than the encoder's 224: the CLIP resize and crop run
    extra = mode_inputs(mode)
    pipe = ResAdapterPipeline.from_artifacts(exports[key], backend=backend)
    out = pipe("a red fox", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED,
               scheduler="euler", ip_adapter_image=ip_image, ip_adapter_scale=0.6, output_type="latent", **extra)
    expected = diffusers_pipeline(family, variant, mode, 0.6)(
        "a red fox", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE, ip_adapter_image=ip_image,
        generator=torch.Generator().manual_seed(SEED), output_type="latent", **extra).images
    assert out.latents.shape == expected.shape == (1, 4, HEIGHT // 8, WIDTH // 8)
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]
    assert out.parameters["ip_adapter_scale"] == 0.6
    assert len(out.timings.unet_steps) == (STEPS if mode == "t2i" else int(STEPS * 0.6))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_inpainting_at_full_strength_with_an_ancestral_scheduler_matches_diffusers(exports, backend):
    """Strength 1 starts from pure noise; euler-a draws from the generator after the masked-image sample."""
    extra = {**mode_inputs("inpaint"), "strength": 1.0}
    ip_image = noise_image(120, 260, 6)
    pipe = ResAdapterPipeline.from_artifacts(exports["sd15-plain"], backend=backend)
    out = pipe("a red fox", height=HEIGHT, width=WIDTH, num_inference_steps=4, guidance_scale=GUIDANCE, seed=SEED, scheduler="euler-a",
               ip_adapter_image=ip_image, ip_adapter_scale=0.8, output_type="latent", **extra)
    reference = diffusers_pipeline(SD15, "plain", "inpaint", 0.8)
    reference.scheduler = make_scheduler("euler-a", dict(reference.scheduler.config))
    expected = reference("a red fox", height=HEIGHT, width=WIDTH, num_inference_steps=4, guidance_scale=GUIDANCE,
                         ip_adapter_image=ip_image, generator=torch.Generator().manual_seed(SEED), output_type="latent",
                         **extra).images
    assert float((out.latents - expected).abs().max()) <= LIMIT[backend]


def test_dynamic_alpha_with_a_controlnet_matches_diffusers():
    """IP-Adapter, a ControlNet and dynamic alpha in one UNet graph (ONNX Runtime)."""
    controlnet = shared_controlnets()[0]
    pipe = ResAdapterPipeline.from_artifacts(shared_ip_controlnet_export(controlnet))
    ip_image, control = noise_image(300, 200, 5), noise_image(70, 50, 13)
    out = pipe("a red fox", height=HEIGHT, width=WIDTH, num_inference_steps=4, guidance_scale=GUIDANCE, seed=SEED, scheduler="euler",
               ip_adapter_image=ip_image, ip_adapter_scale=0.7, control_image=control, controlnet_conditioning_scale=0.8,
               resadapter_alpha=0.6, output_type="latent")
    expected = diffusers_pipeline(SD15, "plain", "t2i", 0.7, alpha=0.6, controlnet=controlnet)(
        "a red fox", image=control, height=HEIGHT, width=WIDTH, num_inference_steps=4, guidance_scale=GUIDANCE,
        controlnet_conditioning_scale=0.8, ip_adapter_image=ip_image, generator=torch.Generator().manual_seed(SEED),
        output_type="latent").images
    assert float((out.latents - expected).abs().max()) <= LIMIT["onnxruntime"]


KW = dict(height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=GUIDANCE, seed=4, scheduler="euler", output_type="latent")


def test_the_image_acts_and_scale_zero_is_the_model_without_ip_adapter(exports):
    pipe = ResAdapterPipeline.from_artifacts(exports["sd15-plain"])
    plain = ResAdapterPipeline.from_artifacts(shared_controlnet_exports()["plain"])  # same model and alpha, no IP-Adapter
    first = pipe("a house", ip_adapter_image=noise_image(64, 64, 1), ip_adapter_scale=1.0, **KW).latents
    second = pipe("a house", ip_adapter_image=noise_image(64, 64, 2), ip_adapter_scale=1.0, **KW).latents
    reference = plain("a house", **KW).latents
    assert float((first - second).abs().max()) > 1e-2 and float((first - reference).abs().max()) > 1e-2
    off = pipe("a house", ip_adapter_image=noise_image(64, 64, 1), ip_adapter_scale=0.0, **KW)
    assert float((off.latents - reference).abs().max()) <= 1e-4
    without_image = pipe("a house", **KW)  # a dynamic-scale export without an image prompt: scale 0
    assert float((without_image.latents - reference).abs().max()) <= 1e-4
    assert "ip_adapter_scale" not in without_image.parameters


def test_one_export_serves_every_scale_as_exports_baked_at_each():
    dynamic = ResAdapterPipeline.from_artifacts(shared_ip_exports()["sd15-plain"])
    image = noise_image(90, 140, 9)
    results = {}
    for scale, directory in shared_baked_scale_exports().items():
        baked = ResAdapterPipeline.from_artifacts(directory)
        expected = baked("a house", ip_adapter_image=image, **KW).latents
        results[scale] = dynamic("a house", ip_adapter_image=image, ip_adapter_scale=scale, **KW).latents
        assert float((results[scale] - expected).abs().max()) <= 1e-5, scale
        assert baked("a house", ip_adapter_image=image, ip_adapter_scale=scale, **KW).parameters["ip_adapter_scale"] == scale
    assert min(float((results[a] - results[b]).abs().max()) for a, b in ((0.3, 0.6), (0.6, 1.0))) > 1e-3
    assert set(results) == set(BAKED_SCALES)


@pytest.mark.parametrize("key,kwargs,message", [
    ("none", {"ip_adapter_image": "IMG"}, "this export has no IP-Adapter, so an image prompt cannot be used; re-export with "
                                          "`resadapter-rt export ... --ip-adapter FILE --image-encoder DIR`"),
    ("none", {"ip_adapter_scale": 0.5}, "this export has no IP-Adapter, so an IP-Adapter scale cannot be used; re-export with "
                                        "`resadapter-rt export ... --ip-adapter FILE --image-encoder DIR`"),
    ("sd15-plain", {"ip_adapter_image": "IMG", "ip_adapter_scale": 2.5},
     "ip_adapter_scale 2.5 is not a number in [0, 2]; use e.g. 0.6 (0 turns the image prompt off)"),
    ("sd15-plain", {"ip_adapter_image": "IMG", "ip_adapter_scale": "strong"},
     "ip_adapter_scale 'strong' is not a number in [0, 2]; use e.g. 0.6 (0 turns the image prompt off)"),
    ("sd15-plain", {"ip_adapter_scale": 0.5}, "an IP-Adapter scale was given without an image prompt; pass ip_adapter_image= "
                                              "(--ip-adapter-image FILE) too"),
    ("sd15-plain", {"ip_adapter_image": b"png bytes"}, "the IP-Adapter image must be a PIL image, got bytes"),
    ("baked", {"ip_adapter_image": "IMG", "ip_adapter_scale": 0.5},
     "this export has the IP-Adapter scale baked at 0.3; re-export without --ip-adapter-scale (a dynamic scale) to choose it per request"),
    ("baked", {}, "this export has the IP-Adapter scale baked at 0.3, so it needs an image prompt; pass ip_adapter_image= "
                  "(--ip-adapter-image FILE), or re-export with a dynamic scale"),
    ("sd15-plain", {"image": "IMG", "mask_image": "SMALL"},
     "the mask is 32x24 but the image is 64x48; pass a mask of the image's size (white = re-generate)"),
    ("sd15-plain", {"mask_image": "IMG"}, "a mask needs the image it applies to; pass image= (--image FILE) with mask_image= (--mask FILE)"),
    ("sd15-plain", {"image": "IMG", "mask_image": [1, 0]}, "the mask must be a PIL image, got list"),
])
def test_bad_image_prompt_and_mask_requests_are_one_line(exports, key, kwargs, message):
    images = {"IMG": noise_image(64, 48, 0), "SMALL": noise_image(32, 24, 1)}
    kwargs = {k: images.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    directory = {"none": shared_controlnet_exports()["plain"], "baked": shared_baked_scale_exports()[0.3]}.get(key) or exports[key]
    pipe = ResAdapterPipeline.from_artifacts(directory)
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a house", height=128, width=128, num_inference_steps=2, output_type="latent", **kwargs)
    assert str(info.value) == message


def test_manifest_records_the_adapter_encoder_and_validated_components(exports):
    import json

    manifest = json.loads((exports["sd15-full-face"] / "manifest.json").read_text())
    entry = manifest["ip_adapter"]
    assert (entry["variant"], entry["num_tokens"], entry["scale_mode"], entry["image_embeds"]) == \
        ("full-face", 257, "dynamic", "penultimate hidden states")
    assert set(entry["image_encoder"]["files"]) == {"config.json", "model.safetensors"}
    inputs = {i["name"]: i["shape"] for i in manifest["components"]["unet"]["inputs"]}
    assert inputs["image_embeds"] == ["batch", 1, 257, 32] and inputs["ip_adapter_scale"] == []
    encoder = manifest["components"]["image_encoder"]
    assert [i["shape"] for i in encoder["inputs"]] == [["batch", 3, 224, 224]] and encoder["dtype"] == "fp32"
    assert encoder["validation"][0]["batch"] == 3 and encoder["validation"][0]["relative_error"] <= 1e-3
    assert {v["width"] for v in manifest["components"]["unet"]["validation"]} == {WIDTH}
    assert (exports["sd15-full-face"] / "feature_extractor" / "preprocessor_config.json").is_file()


def test_openvino_runs_the_ip_adapter_graph_like_onnxruntime(exports):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[openvino]')")
    ip_image = noise_image(300, 200, 5)
    kwargs = dict(ip_adapter_image=ip_image, ip_adapter_scale=0.6, **KW)
    expected = ResAdapterPipeline.from_artifacts(exports["sd15-plain"])("a red fox", **kwargs).latents
    pipe = ResAdapterPipeline.from_artifacts(exports["sd15-plain"], backend="openvino", cpu_precision="fp32")
    assert float((pipe("a red fox", **kwargs).latents - expected).abs().max()) <= 1e-3


def test_served_requests_without_an_image_prompt_run_at_scale_zero(exports):
    """``serve`` prepares requests without ``__call__``: an IP-Adapter export still gets its (zero) image inputs."""
    from resadapter_rt.serve.batching import generate_batch, prepare_request

    pipe = ResAdapterPipeline.from_artifacts(exports["sd15-plain"])
    result = generate_batch(pipe, [prepare_request(pipe, {"prompt": "a house", "width": 128, "height": 136, "steps": 2, "seed": 1})])
    direct = pipe("a house", width=128, height=136, num_inference_steps=2, guidance_scale=7.0, seed=1)
    assert result.steps == 2 and (result.images[0] == np.asarray(direct.images[0])).all()
