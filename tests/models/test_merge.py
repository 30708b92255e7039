"""Merging against diffusers' own LoRA application (PEFT adapters + load_state_dict)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import OFFICIAL_VARIANTS, official, relative_error, unet_inputs
from reference import reference_pipeline
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_adapter, merge_pipeline, read_lora_file
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.models.tiny import full_size_unet_config, tiny_adapter_dir


def _full_size_unet(family):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    depth = 1 if family is SDXL else None  # SDXL: real channels, transformer depth 1 to fit the machine
    return UNet2DConditionModel(**full_size_unet_config(family, transformer_depth=depth)).eval()


@pytest.fixture(scope="module")
def full_unets():
    return {SD15: _full_size_unet(SD15), SDXL: _full_size_unet(SDXL)}


@pytest.mark.parametrize("family,variant", [(SD15, "resadapter_v2_sd1.5"), (SDXL, "resadapter_v2_sdxl")])
def test_full_size_merge_matches_diffusers_reference(full_unets, family, variant):
    unet = full_unets[family]
    directory = official(variant)
    adapter = load_adapter(directory)
    reference = reference_pipeline(unet, family, [(directory / "pytorch_lora_weights.safetensors", "res_adapter")],
                                   [1.0], directory / "diffusion_pytorch_model.safetensors")
    inputs = unet_inputs(unet, height=20, width=12)  # non-square; every sampler level is exercised
    errors = {}
    with torch.no_grad():
        for alpha in (1.0, 0.5):
            reference.set_adapters(["res_adapter"], adapter_weights=[alpha])
            expected = reference.unet(**inputs).sample
            merged = merge_adapter(unet, adapter, alpha)
            errors[alpha] = relative_error(merged(**inputs).sample, expected)
            del merged
        plain = unet(**inputs).sample
    print(f"{variant} relative error vs diffusers: {errors}")
    assert all(e <= 1e-4 for e in errors.values()), errors
    assert relative_error(plain, expected) > 1e-2, "the adapter must change the output, or the test proves nothing"


@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_every_variant_merges_into_its_family(full_unets, variant):
    adapter = load_adapter(official(variant))
    unet = full_unets[adapter.family]
    before = {k: v.clone() for k, v in unet.state_dict().items() if "samplers" in k or ".norm1." in k}
    merged = merge_adapter(unet, adapter, 0.7)
    conv = "down_blocks.0.downsamplers.0.conv.weight"
    layer = adapter.lora.layers["unet.down_blocks.0.downsamplers.0.conv"]
    torch.testing.assert_close(merged.state_dict()[conv], before[conv] + 0.7 * layer.delta(), rtol=0, atol=1e-6)
    norm = "up_blocks.1.resnets.2.norm1.weight"
    torch.testing.assert_close(merged.state_dict()[norm], adapter.norms[norm])
    for key, value in before.items():  # the caller's model is untouched
        assert torch.equal(unet.state_dict()[key], value), key


def test_other_family_is_refused_with_hint(full_unets):
    with pytest.raises(ResAdapterRTError) as info:
        merge_adapter(full_unets[SD15], load_adapter(official("resadapter_v2_sdxl")))
    assert str(info.value).endswith("this is a SDXL ResAdapter but the model is SD1.5; use the resadapter_*_sd1.5 variant")


def test_full_size_adapter_on_tiny_model_names_key_and_shapes():
    unet = load_components("tiny-sd15", unet_only=True).unet
    with pytest.raises(ResAdapterRTError) as info:
        merge_adapter(unet, load_adapter(official("resadapter_v2_sd1.5")))
    assert str(info.value).endswith(
        "LoRA for unet.down_blocks.0.downsamplers.0.conv makes a [320, 320, 3, 3] update but the model's weight "
        "is [32, 32, 3, 3]; the LoRA was made for a different model size or family")


@pytest.mark.parametrize("alpha", [-0.1, "abc", float("nan"), 2.5])
def test_bad_alpha(alpha):
    unet = load_components("tiny-sd15", unet_only=True).unet
    with pytest.raises(ResAdapterRTError, match=r"^alpha .* (is not a number|is out of range); use a value in \[0, 2\]"):
        merge_adapter(unet, load_adapter("tiny-sd15"), alpha)


def test_inplace_only_when_asked():
    unet = load_components("tiny-sd15", unet_only=True).unet
    adapter = load_adapter("tiny-sd15")
    original = copy.deepcopy(unet.state_dict())
    merged = merge_adapter(unet, adapter, 1.0)
    assert merged is not unet and all(torch.equal(v, unet.state_dict()[k]) for k, v in original.items())
    same = merge_adapter(unet, adapter, 1.0, inplace=True)
    assert same is unet and not torch.equal(unet.state_dict()["down_blocks.0.downsamplers.0.conv.weight"],
                                            original["down_blocks.0.downsamplers.0.conv.weight"])


def _style_loras(tmp_path, components):
    """Two general LoRAs on the tiny SD1.5: kohya (attention + text encoder) and PEFT (attention)."""
    g = torch.Generator().manual_seed(7)
    unet, te = components.unet, components.text_encoder
    kohya = {}
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                 "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k", "mid_block.attentions.0.proj_in"):
        out_f, in_f, *kernel = unet.get_submodule(name).weight.shape  # proj_in is a 1x1 conv here
        key = "lora_unet_" + name.replace(".", "_")
        kohya[f"{key}.lora_down.weight"] = 0.3 * torch.randn(2, in_f, *kernel, generator=g)
        kohya[f"{key}.lora_up.weight"] = 0.3 * torch.randn(out_f, 2, *[1] * len(kernel), generator=g)
        kohya[f"{key}.alpha"] = torch.tensor(1.0)
    q = te.get_submodule("encoder.layers.0.self_attn.q_proj").weight  # transformers 5: no text_model
    kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = 0.3 * torch.randn(2, q.shape[1], generator=g)
    kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = 0.3 * torch.randn(q.shape[0], 2, generator=g)
    kohya["lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha"] = torch.tensor(2.0)
    peft = {}
    for name in ("down_blocks.2.attentions.1.transformer_blocks.0.ff.net.2", "up_blocks.1.attentions.0.proj_out"):
        out_f, in_f, *kernel = unet.get_submodule(name).weight.shape
        peft[f"unet.{name}.lora_A.weight"] = 0.3 * torch.randn(3, in_f, *kernel, generator=g)
        peft[f"unet.{name}.lora_B.weight"] = 0.3 * torch.randn(out_f, 3, *[1] * len(kernel), generator=g)
    save_file(kohya, str(tmp_path / "style_kohya.safetensors"))
    save_file({k: v for k, v in kohya.items() if "_te_" not in k}, str(tmp_path / "style_kohya_unet.safetensors"))
    save_file(peft, str(tmp_path / "style_peft.safetensors"))
    return tmp_path / "style_kohya.safetensors", tmp_path / "style_peft.safetensors"


def test_stacked_loras_match_diffusers_multi_adapter(tmp_path):
    components = load_components("tiny-sd15")
    kohya, peft = _style_loras(tmp_path, components)
    res = tiny_adapter_dir(SD15)
    # diffusers 0.42 cannot load text-encoder LoRAs into transformers 5's flattened CLIP, so the
    # reference gets the UNet half and the text-encoder half is checked against the formula.
    reference = reference_pipeline(
        components.unet, SD15,
        [(res / "pytorch_lora_weights.safetensors", "res"), (tmp_path / "style_kohya_unet.safetensors", "style_a"),
         (peft, "style_b")],
        [0.6, 0.8, -0.5], res / "diffusion_pytorch_model.safetensors")
    merged = merge_pipeline(components, load_adapter("tiny-sd15"), 0.6,
                            [(read_lora_file(kohya), 0.8), (read_lora_file(peft), -0.5)])
    inputs = unet_inputs(components.unet, height=24, width=40)
    with torch.no_grad():
        error = relative_error(merged.unet(**inputs).sample, reference.unet(**inputs).sample)
    assert error < 1e-5, error
    raw = load_file(str(kohya))
    key = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    name = "encoder.layers.0.self_attn.q_proj.weight"
    delta = raw[f"{key}.lora_up.weight"] @ raw[f"{key}.lora_down.weight"] * (2.0 / 2)
    expected = components.text_encoder.state_dict()[name] + 0.8 * delta
    torch.testing.assert_close(merged.text_encoder.state_dict()[name], expected, rtol=0, atol=1e-6)
    assert merged.text_encoder is not components.text_encoder  # the caller's encoder is untouched
