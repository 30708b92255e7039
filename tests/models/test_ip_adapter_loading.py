"""Loading h94-format IP-Adapters and their image encoders: both file formats, variants, and refusals in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ip_adapter_fixtures import shared_ip_adapters
from resadapter_rt import ResAdapterRTError, load_components
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.models.ip_adapter import check_ip_adapter_fits, load_ip_adapter, read_ip_adapter_file


def test_bin_and_safetensors_hold_the_same_weights():
    files = shared_ip_adapters(SD15)
    a, b = read_ip_adapter_file(files["plain"]), read_ip_adapter_file(files["plain-bin"])
    assert a.keys() == b.keys() and all(a[p].keys() == b[p].keys() for p in a)
    assert all(torch.equal(a[p][k], b[p][k]) for p in a for k in a[p])


@pytest.mark.parametrize("family,variant,kind,tokens,shape", [
    (SD15, "plain", "plain", 4, (24,)), (SD15, "full-face", "full-face", 257, (257, 32)), (SD15, "plus", "plus", 16, (257, 32)),
    (SDXL, "plain", "plain", 4, (24,))])
def test_variants_are_recognised_and_fit_their_family(family, variant, kind, tokens, shape):
    loaded = load_ip_adapter(shared_ip_adapters(family)[variant])
    assert (loaded.kind, loaded.num_tokens, loaded.embed_shape()) == (kind, tokens, shape)
    check_ip_adapter_fits(loaded, load_components(f"tiny-{family.name}").unet)
    assert loaded.encoder_path == shared_ip_adapters(family)[variant].parent / "image_encoder"


class Payload:  # a pickled object: torch.load(weights_only=True) must refuse it
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_that_carries_code_is_refused(tmp_path, capsys):
    shutil.copytree(shared_ip_adapters(SD15)["plain"].parent / "image_encoder", tmp_path / "image_encoder")
    torch.save({"image_proj": {"proj.weight": Payload()}, "ip_adapter": {}}, tmp_path / "evil.bin")
    with pytest.raises(ResAdapterRTError) as info:
        load_ip_adapter(tmp_path / "evil.bin")
    assert str(info.value).startswith(f"{tmp_path / 'evil.bin'}: refused to load: it is not a plain tensor pickle readable "
                                      "with weights_only=True (")
    assert "this ran" not in capsys.readouterr().out


def test_faceid_and_foreign_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"image_proj.norm.weight": torch.ones(4), "image_proj.proj.0.weight": torch.ones(8, 4),
               "ip_adapter.1.to_k_ip.weight": torch.ones(2, 2)}, str(tmp_path / "faceid.safetensors"))
    save_file({"unet.conv.weight": torch.ones(2)}, str(tmp_path / "lora.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(ResAdapterRTError, match="a FaceID IP-Adapter .* which is not supported"):
        load_ip_adapter(tmp_path / "faceid.safetensors")
    with pytest.raises(ResAdapterRTError, match=r"no IP-Adapter weights found \(no image_proj\.\* and ip_adapter\.\* keys\)"):
        read_ip_adapter_file(tmp_path / "lora.safetensors")
    with pytest.raises(ResAdapterRTError, match="not a readable safetensors file .*is it truncated"):
        read_ip_adapter_file(tmp_path / "cut.safetensors")


def test_an_encoder_of_another_width_is_refused(tmp_path):
    encoder = tmp_path / "image_encoder"
    shutil.copytree(shared_ip_adapters(SD15)["plain"].parent / "image_encoder", encoder)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig.from_pretrained(encoder)
    config.projection_dim = 16
    CLIPVisionModelWithProjection(config).save_pretrained(encoder)
    with pytest.raises(ResAdapterRTError) as info:
        load_ip_adapter(shared_ip_adapters(SD15)["plain"], image_encoder=encoder)
    assert str(info.value) == (f"{encoder}: this image encoder gives image embeddings of width 16, the IP-Adapter "
                               f"{shared_ip_adapters(SD15)['plain']} expects 24; use the encoder released with it (ViT-H-14 "
                               "for SD1.5 adapters, ViT-bigG-14 for ip-adapter_sdxl)")


def test_an_encoder_without_safetensors_or_projection_is_refused(tmp_path):
    encoder = tmp_path / "enc"
    shutil.copytree(shared_ip_adapters(SD15)["plain"].parent / "image_encoder", encoder)
    (encoder / "model.safetensors").rename(encoder / "pytorch_model.bin")
    with pytest.raises(ResAdapterRTError, match="no model.safetensors; pickled weights .* are not loaded"):
        load_ip_adapter(shared_ip_adapters(SD15)["plain"], image_encoder=encoder)
    config = json.loads((encoder / "config.json").read_text())
    del config["projection_dim"]
    (encoder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ResAdapterRTError, match="not a CLIPVisionModelWithProjection"):
        load_ip_adapter(shared_ip_adapters(SD15)["plain"], image_encoder=encoder)


def test_an_sdxl_adapter_does_not_fit_an_sd15_unet():
    loaded = load_ip_adapter(shared_ip_adapters(SDXL)["plain"])
    with pytest.raises(ResAdapterRTError, match="use an IP-Adapter trained for this model family"):
        check_ip_adapter_fits(loaded, load_components("tiny-sd15").unet)
