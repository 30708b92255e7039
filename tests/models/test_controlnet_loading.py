"""Loading ControlNets: diffusers directory, single .safetensors + config.json, family checks, recorded hashes."""

from __future__ import annotations

import shutil

import pytest
import torch

from resadapter_rt import ResAdapterRTError
from resadapter_rt.models.components import load_components
from resadapter_rt.models.controlnet import LoadedControlNet, check_controlnet_fits, load_controlnet, recorded_controlnets
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.models.tiny import tiny_controlnet


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cn") / "canny"
    tiny_controlnet(SD15, 1).save_pretrained(directory)
    return directory


def test_tiny_controlnet_really_acts():
    controlnet = tiny_controlnet(SD15, 1)
    zero_convs = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    assert all(conv.weight.abs().sum() > 0 for conv in zero_convs)


def test_directory_and_single_file_load_the_same_weights(controlnet_dir, tmp_path):
    single = tmp_path / "weights"
    single.mkdir()
    shutil.copy(controlnet_dir / "diffusion_pytorch_model.safetensors", single / "canny.safetensors")
    shutil.copy(controlnet_dir / "config.json", single / "config.json")
    from_dir, from_file = load_controlnet(str(controlnet_dir)), load_controlnet(str(single / "canny.safetensors"))
    for (name, a), (_, b) in zip(from_dir.model.state_dict().items(), from_file.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert set(from_file.record()["files"]) == {"canny.safetensors", "config.json"}
    assert from_dir.record()["kind"] == "local" and from_dir.record()["conditioning_channels"] == 3


def test_single_file_needs_its_config(controlnet_dir, tmp_path):
    shutil.copy(controlnet_dir / "diffusion_pytorch_model.safetensors", tmp_path / "canny.safetensors")
    with pytest.raises(ResAdapterRTError) as info:
        load_controlnet(str(tmp_path / "canny.safetensors"))
    assert str(info.value) == f"{tmp_path / 'canny.safetensors'}: a diffusers-format ControlNet file needs its config.json in the same directory"


@pytest.mark.parametrize("name,content,message", [
    ("canny.pth", b"x", "{path}: pickle checkpoints can run arbitrary code and are not loaded; use the .safetensors release"),
    ("canny.safetensors", b"not safetensors", "{path}: not a readable safetensors ControlNet; is it truncated?"),
])
def test_bad_single_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ResAdapterRTError) as info:
        load_controlnet(str(path))
    assert str(info.value) == message.format(path=path)


def test_unet_directory_is_not_a_controlnet(tmp_path):
    from resadapter_rt.models.tiny import tiny_pipeline_dir

    with pytest.raises(ResAdapterRTError) as info:
        load_controlnet(str(tiny_pipeline_dir(SD15) / "unet"))
    assert str(info.value).endswith("unet: not a diffusers ControlNet directory (no config.json of a ControlNetModel)")


def test_controlnet_of_another_family_is_refused():
    sdxl_controlnet = LoadedControlNet("tiny-sdxl-cn", None, tiny_controlnet(SDXL, 1), {})
    with pytest.raises(ResAdapterRTError) as info:
        check_controlnet_fits(sdxl_controlnet, load_components("tiny-sd15", unet_only=True).unet)
    assert str(info.value) == ("tiny-sdxl-cn: this ControlNet's block_out_channels is [32, 64, 64], the model's UNet has "
                               "[32, 32, 64, 64]; use a ControlNet trained for this model family")


def test_recorded_controlnet_that_changed_is_refused(controlnet_dir, tmp_path):
    copy = tmp_path / "cn"
    shutil.copytree(controlnet_dir, copy)
    entry = load_controlnet(str(copy)).record()
    assert recorded_controlnets([entry], tmp_path) == [str(copy)]
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    with pytest.raises(ResAdapterRTError) as info:
        recorded_controlnets([entry], tmp_path)
    assert str(info.value) == (f"{copy}: ControlNet file config.json has changed since the export; re-export "
                               "(`resadapter-rt export ... --force`) or restore the original file")
