"""Resolution profiles: spec parsing, presets, coverage and the shapes handed to TensorRT."""

from __future__ import annotations

import pytest

from resadapter_rt import ResAdapterRTError
from resadapter_rt.engines.profiles import ResolutionProfile, preset_for

SD15_DIMS = {"latent_channels": 4, "cross_attention_dim": 768, "pooled_dim": None}
SDXL_DIMS = {"latent_channels": 4, "cross_attention_dim": 2048, "pooled_dim": 1280}


def test_official_presets_follow_the_model_cards():
    sd15 = preset_for("../shared/resadapter/resadapter_v2_sd1.5", "sd15")
    sdxl = preset_for("jiaxiangc/res-adapter/resadapter_v2_sdxl/", "sdxl")
    assert sd15.describe() == "128-1024@0.28-3.5,opt=512x512,batch=1-1,tokens=77-77"
    assert sdxl.describe() == "256-1536@0.28-3.5,opt=1024x1024,batch=1-1,tokens=77-77"
    assert preset_for("my-own-adapter", "sd15").min_px == 128


@pytest.mark.parametrize("width,height,covered", [
    (1000, 600, True), (328, 200, True), (128, 128, True), (1024, 296, True),   # 3.46
    (1024, 288, False),   # 3.56 > 3.5
    (280, 1000, True), (272, 1000, False),  # 0.28 and 0.272
    (1000, 1001, False),  # not a multiple of 8
    (1032, 600, False), (120, 128, False),
])
def test_coverage_of_the_sd15_preset(width, height, covered):
    assert preset_for("resadapter_v2_sd1.5", "sd15").covers(width, height) is covered


def test_latent_box_and_unet_shapes_with_cfg_doubling():
    profile = ResolutionProfile.parse("256-1024@0.28-3.5,opt=1000x600,batch=1-2,tokens=77-154")
    assert profile.latent_box() == {"height": (32, 75, 128), "width": (32, 125, 128)}
    shapes = profile.component_shapes("unet", SDXL_DIMS)
    assert shapes["sample"] == ((1, 4, 32, 32), (2, 4, 75, 125), (4, 4, 128, 128))
    assert shapes["encoder_hidden_states"] == ((1, 77, 2048), (2, 77, 2048), (4, 154, 2048))
    assert shapes["text_embeds"] == ((1, 1280), (2, 1280), (4, 1280)) and shapes["time_ids"][2] == (4, 6)
    assert set(profile.component_shapes("unet", SD15_DIMS)) == {"sample", "timestep", "encoder_hidden_states"}
    # tokens up to 154: a long prompt runs one 77-token row per chunk, so up to 2 images x 2 chunks
    assert profile.component_shapes("text_encoder", SD15_DIMS) == {"input_ids": ((1, 77), (1, 77), (4, 77))}
    assert profile.component_shapes("vae_decoder", SD15_DIMS)["latent_sample"][1] == (1, 4, 75, 125)


def test_static_profile_is_one_size():
    profile = ResolutionProfile.static("1000x600")
    assert profile.latent_box() == {"height": (75, 75, 75), "width": (125, 125, 125)}
    assert profile.covers(1000, 600) and not profile.covers(600, 1000) and not profile.covers(992, 600)


def test_default_opt_is_inside_and_square():
    profile = ResolutionProfile.parse("256-1024")
    assert (profile.opt_width, profile.opt_height) == (512, 512) and profile.covers(512, 512)


@pytest.mark.parametrize("spec,message", [
    ("256to1024", "profile '256to1024' is not MIN-MAX[@AMIN-AMAX][,opt=WxH][,batch=A-B][,tokens=A-B], e.g. 256-1024@0.28-3.5,opt=768x768"),
    ("250-1024", "profile 250-1024@0.244141-4.096,opt=504x504,batch=1-1,tokens=77-77: 250 px is not a positive multiple of 8"),
    ("1024-256", "profile 1024-256@1-1,opt=512x512,batch=1-1,tokens=77-77: minimum 1024 px exceeds maximum 256 px"),
    ("256-1024,opt=2048x2048", "profile 256-1024@0.25-4,opt=2048x2048,batch=1-1,tokens=77-77: opt size 2048x2048 is outside the profile"),
    ("256-1024,batch=3-1", "profile 256-1024@0.25-4,opt=512x512,batch=3-1,tokens=77-77: batch range must satisfy 0 < min <= opt <= max"),
    ("256-1024,tokens=77-100", "profile 256-1024@0.25-4,opt=512x512,batch=1-1,tokens=77-100: token counts must be multiples of 77"),
    ("256-1024,speed=max", "profile '256-1024,speed=max': unknown option 'speed'; use opt=, batch= or tokens="),
    ("256-1024,opt=big", "'256-1024,opt=big': size 'big' is not WIDTHxHEIGHT, e.g. 1000x600"),
    ("128-1024@1.2.3-2", "profile '128-1024@1.2.3-2' is not MIN-MAX[@AMIN-AMAX][,opt=WxH][,batch=A-B][,tokens=A-B], e.g. 256-1024@0.28-3.5,opt=768x768"),
    ("128-136@3.5-4", "profile '128-136@3.5-4': no size with both sides in 128-136 px (multiples of 8) has an aspect ratio in 3.5-4; "
                      "widen one of the ranges"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ResAdapterRTError) as info:
        ResolutionProfile.parse(spec)
    assert str(info.value) == message


@pytest.mark.parametrize("spec,opt", [
    ("128-1024@0.28-0.5", (256, 512)),   # portrait only: the default opt size is clamped into the profile
    ("128-1024@2-3.5", (512, 256)), ("200-704", (376, 376)), ("256-384", (312, 312)),
])
def test_default_opt_size_lies_inside_every_valid_profile(spec, opt):
    profile = ResolutionProfile.parse(spec)
    assert (profile.opt_width, profile.opt_height) == opt and profile.covers(*opt)


@pytest.mark.parametrize("size", ["512x0", "0x512"])
def test_static_size_needs_positive_sides(size):
    with pytest.raises(ResAdapterRTError) as info:
        ResolutionProfile.static(size)
    assert str(info.value) == f"static size {size!r}: width and height must be positive multiples of 8 px, e.g. 1000x600"


def test_control_images_get_the_latent_ranges_in_pixels():
    profile = ResolutionProfile.parse("200-704@0.28-3.5,opt=328x200,batch=1-2")
    shapes = profile.component_shapes("unet", {**SD15_DIMS, "controlnets": 2})
    assert shapes["sample"] == ((1, 4, 25, 25), (2, 4, 25, 41), (4, 4, 88, 88))
    # [N, B, 3, 8H, 8W]: the same batch (CFG-doubled) and 8x the latent box, for each of the two ControlNets
    assert shapes["controlnet_cond"] == ((2, 1, 3, 200, 200), (2, 2, 3, 200, 328), (2, 4, 3, 704, 704))
    assert "controlnet_scale" not in shapes  # static [N]: no profile
    assert "controlnet_cond" not in profile.component_shapes("unet", {**SD15_DIMS, "controlnets": 0})


def test_export_dims_count_the_controlnets():
    from resadapter_rt.engines.build import export_dims

    def manifest(extra):
        inputs = [{"name": "sample", "shape": ["batch", 4, "h", "w"]}, {"name": "encoder_hidden_states", "shape": ["batch", "tokens", 768]}]
        return {"components": {"unet": {"inputs": inputs + extra}}}

    assert export_dims(manifest([{"name": "controlnet_cond", "shape": [3, "batch", 3, "height", "width"]}]))["controlnets"] == 3
    assert "controlnets" not in export_dims(manifest([]))


def test_ip_adapter_profiles_cover_image_embeds_per_sample_and_the_image_encoder():
    profile = ResolutionProfile.parse("256-768,batch=1-2")
    dims = {"latent_channels": 4, "cross_attention_dim": 32, "pooled_dim": None, "image_embed_shape": [257, 32], "image_size": 224}
    unet = profile.component_shapes("unet", dims)
    assert unet["image_embeds"] == tuple((b, 1, 257, 32) for b in (1, 2, 4))
    assert [s[0] for s in unet["sample"]] == [1, 2, 4]
    # the image prompt, and a zero image beside it for plus/full-face negatives
    assert profile.component_shapes("image_encoder", dims) == {"pixel_values": ((1, 3, 224, 224), (2, 3, 224, 224), (2, 3, 224, 224))}
