"""Loading ResAdapters in every supported format, and the errors for bad input."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import OFFICIAL_VARIANTS, official
from resadapter_rt import ResAdapterRTError, load_adapter
from resadapter_rt.models.families import SD15, SDXL


@pytest.mark.parametrize("variant", OFFICIAL_VARIANTS)
def test_every_official_variant_loads_with_family_rank_and_alpha_from_file(variant):
    adapter = load_adapter(official(variant))
    expected = SDXL if "sdxl" in variant else SD15
    assert adapter.family is expected
    assert len(adapter.lora.layers) == 2 * expected.num_samplers
    assert all(k.startswith("unet.") and k.endswith("samplers.0.conv") for k in adapter.lora.layers)
    # Official files store alpha 8 for rank 16: effective scale alpha / r = 0.5.
    raw = load_file(str(official(variant) / "pytorch_lora_weights.safetensors"))
    for key, layer in adapter.lora.layers.items():
        kohya = "lora_unet_" + key.removeprefix("unet.").replace(".", "_")
        assert layer.rank == raw[f"{kohya}.lora_down.weight"].shape[0]
        assert layer.scale == pytest.approx(float(raw[f"{kohya}.alpha"]) / layer.rank)
    resnets = 17 if expected is SDXL else 22
    assert len(adapter.norms) == resnets * 4


def _peft_copy(variant, out, scale_into_up: bool):
    """The training-script format: unet.<module>.lora_A/B, no alpha key (scale 1)."""
    adapter = load_adapter(official(variant))
    state = {}
    for key, layer in adapter.lora.layers.items():
        state[f"{key}.lora_A.weight"] = layer.down.float()
        state[f"{key}.lora_B.weight"] = layer.up.float() * (layer.scale if scale_into_up else 1.0)
    out.mkdir()
    save_file(state, str(out / "pytorch_lora_weights.safetensors"))
    return adapter


def test_training_script_peft_format_with_safetensors_norms(tmp_path):
    original = _peft_copy("resadapter_v2_sd1.5", tmp_path / "peft", scale_into_up=True)
    save_file(original.norms, str(tmp_path / "peft" / "diffusion_pytorch_model.safetensors"))
    adapter = load_adapter(tmp_path / "peft")
    assert adapter.family is SD15 and set(adapter.lora.layers) == set(original.lora.layers)
    for key, layer in adapter.lora.layers.items():
        assert layer.scale == 1.0
        torch.testing.assert_close(layer.delta(), original.lora.layers[key].delta(), rtol=1e-3, atol=1e-6)
    assert adapter.norms.keys() == original.norms.keys()


def test_training_script_legacy_groupnorm_pickle_loads_weights_only(tmp_path):
    original = _peft_copy("resadapter_v2_sdxl", tmp_path / "legacy", scale_into_up=False)
    torch.save({f"unet.{k}": v for k, v in original.norms.items()}, tmp_path / "legacy" / "groupnorm_state_dict.pt")
    adapter = load_adapter(tmp_path / "legacy")
    assert adapter.family is SDXL
    torch.testing.assert_close(adapter.norms, original.norms)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    directory = tmp_path / "evil"
    _peft_copy("resadapter_v2_sd1.5", directory, scale_into_up=False)
    with open(directory / "groupnorm_state_dict.pt", "wb") as handle:
        pickle.dump({"down_blocks.0.resnets.0.norm1.weight": _Exploit()}, handle)
    with pytest.raises(ResAdapterRTError, match=r"groupnorm_state_dict.pt: refused to load: it is not a plain tensor dict readable with weights_only=True"):
        load_adapter(directory)


def test_pickle_offered_as_lora_file_is_refused(tmp_path):
    path = tmp_path / "pytorch_lora_weights.pt"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(ResAdapterRTError) as info:
        load_adapter(path)
    assert str(info.value) == (
        f"{path}: pickle files can run arbitrary code and are not loaded here; "
        "convert it to .safetensors (safetensors.torch.save_file) and pass that instead"
    )


def test_lora_only_directory_loads_and_says_so(tmp_path, caplog):
    directory = tmp_path / "lora_only"
    directory.mkdir()
    (directory / "pytorch_lora_weights.safetensors").write_bytes(
        (official("resadapter_v1_sd1.5_interpolation") / "pytorch_lora_weights.safetensors").read_bytes())
    adapter = load_adapter(directory)
    assert adapter.norms is None and adapter.family is SD15
    assert "no norm file found; loading the resolution LoRA alone" in caplog.text


def test_explicit_files(tmp_path):
    source = official("resadapter_v2_sdxl")
    adapter = load_adapter(lora_file=source / "pytorch_lora_weights.safetensors",
                           norm_file=source / "diffusion_pytorch_model.safetensors")
    assert adapter.family is SDXL and len(adapter.norms) == 68


def test_missing_path():
    with pytest.raises(ResAdapterRTError) as info:
        load_adapter("./no/such/adapter")
    assert str(info.value) == ("./no/such/adapter: no such file or directory (expected a ResAdapter: local directory, "
                               "file, or hub id owner/repo[/subfolder])")


def test_hub_reference_offline_is_a_clear_error():
    with pytest.raises(ResAdapterRTError, match=r"^jiaxiangc/res-adapter/resadapter_v2_sd1.5: not a local path and could "
                       r"not be downloaded from the Hugging Face hub \(.*\); if you are offline, pass a local directory"):
        load_adapter("jiaxiangc/res-adapter/resadapter_v2_sd1.5")


def test_truncated_safetensors(tmp_path):
    data = (official("resadapter_v2_sd1.5") / "pytorch_lora_weights.safetensors").read_bytes()
    path = tmp_path / "pytorch_lora_weights.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ResAdapterRTError, match=r"pytorch_lora_weights.safetensors: not a readable safetensors file \(.*\); is it truncated or in another format\?$"):
        load_adapter(path)


def test_text_file_is_not_safetensors(tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_text("hello, I am not a tensor file")
    with pytest.raises(ResAdapterRTError, match="not a readable safetensors file"):
        load_adapter(path)


def test_inconsistent_rank_names_layer_and_shapes(tmp_path):
    state = load_file(str(official("resadapter_v2_sd1.5") / "pytorch_lora_weights.safetensors"))
    key = "lora_unet_down_blocks_1_downsamplers_0_conv"
    state[f"{key}.lora_up.weight"] = state[f"{key}.lora_up.weight"][:, :8].contiguous()
    path = tmp_path / "bad_rank.safetensors"
    save_file(state, str(path))
    with pytest.raises(ResAdapterRTError) as info:
        load_adapter(path)
    assert str(info.value) == (
        f"{path}: LoRA for unet.down_blocks.1.downsamplers.0.conv has inconsistent rank: down [16, 640, 3, 3] "
        "gives rank 16 but up [640, 8, 1, 1] expects [out, 16, 1, 1]"
    )


def test_general_lora_is_not_a_resadapter(tmp_path):
    state = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}
    path = tmp_path / "style.safetensors"
    save_file(state, str(path))
    with pytest.raises(ResAdapterRTError, match=r"is not on a UNet down/upsampler conv, so this is not a ResAdapter; pass general LoRAs with --lora"):
        load_adapter(path)


def test_lora_and_norms_from_different_families(tmp_path):
    with pytest.raises(ResAdapterRTError, match="the LoRA file is for SD1.5 but the norm file is for SDXL"):
        load_adapter(lora_file=official("resadapter_v2_sd1.5") / "pytorch_lora_weights.safetensors",
                     norm_file=official("resadapter_v2_sdxl") / "diffusion_pytorch_model.safetensors")


def test_builtin_tiny_adapters_are_in_official_format():
    for family in (SD15, SDXL):
        adapter = load_adapter(f"tiny-{family.name}")
        assert adapter.family is family
        assert {layer.scale for layer in adapter.lora.layers.values()} == {0.5}
        names = {p.name for p in adapter.files}
        assert names == {"pytorch_lora_weights.safetensors", "diffusion_pytorch_model.safetensors"}


@pytest.mark.parametrize("reference", ["owner/repo/../../etc", "owner/repo/./x", "owner/repo//x"])
def test_hub_reference_cannot_leave_its_repository(reference):
    with pytest.raises(ResAdapterRTError, match=r"a hub reference is owner/repo\[/subfolder\] without '\.', '\.\.' or empty parts"):
        load_adapter(reference)
