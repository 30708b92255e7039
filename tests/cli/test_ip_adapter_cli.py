"""IP-Adapter, image-to-image and inpainting on the command line: export --ip-adapter, generate --ip-adapter-image
--image --mask (PNG metadata), and bad input as one line that touches nothing."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from cli_harness import assert_bad_input_touches_nothing, run_main
from controlnet_fixtures import noise_image, shared_controlnet_exports
from ip_adapter_fixtures import shared_ip_adapters, shared_ip_exports
from resadapter_rt.models.families import SD15, SDXL


def test_generate_inpainting_with_an_image_prompt_records_it(tmp_path, capsys):
    noise_image(100, 80, 1).save(tmp_path / "face.png")
    noise_image(136, 128, 2).save(tmp_path / "source.png")
    noise_image(136, 128, 3).convert("L").save(tmp_path / "mask.png")
    out = tmp_path / "out.png"
    result = run_main(["generate", "--artifacts", str(shared_ip_exports()["sd15-plain"]), "--prompt", "a fox", "--width", "136",
                       "--height", "128", "--steps", "4", "--scheduler", "euler", "-q", "-o", str(out),
                       "--ip-adapter-image", str(tmp_path / "face.png"), "--ip-adapter-scale", "0.7",
                       "--image", str(tmp_path / "source.png"), "--strength", "0.5", "--mask", str(tmp_path / "mask.png")], capsys)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        parameters = json.loads(image.text["parameters"])
        assert image.size == (136, 128)
    assert parameters["ip_adapter_image"] == str(tmp_path / "face.png") and parameters["ip_adapter_scale"] == 0.7
    assert parameters["mask"] == str(tmp_path / "mask.png") and parameters["inpainting"] is True and parameters["strength"] == 0.5


def test_export_cli_takes_the_encoder_beside_the_file_and_bakes_a_scale(tmp_path, capsys):
    result = run_main(["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--ip-adapter",
                       str(shared_ip_adapters(SD15)["plain-bin"]), "--ip-adapter-scale", "0.5", "--validation-sizes", "136x128",
                       "--out", str(tmp_path / "exp"), "-q"], capsys)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    entry = manifest["ip_adapter"]
    assert (entry["variant"], entry["scale_mode"], entry["scale"]) == ("plain", "baked", 0.5)
    assert entry["image_encoder"]["path"] == str(shared_ip_adapters(SD15)["plain"].parent / "image_encoder")
    assert "ip_adapter_scale" not in [i["name"] for i in manifest["components"]["unet"]["inputs"]]
    assert manifest["interop"]["optimum_onnxruntime_drop_in"] is False and "image_embeds" in manifest["interop"]["note"]


def setup_files(root):
    noise_image(40, 40, 0).save(root / "a.png")
    noise_image(20, 20, 1).save(root / "small.png")
    (root / "broken.png").write_bytes(b"not an image at all")
    adapters = shared_ip_adapters(SD15)
    shutil.copy(adapters["plain"], root / "lonely.safetensors")  # no image_encoder/ beside it


GENERATE = ["generate", "--prompt", "a fox", "--width", "128", "--height", "128", "--steps", "2", "-q", "-o", "out.png"]
EXPORT = ["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--out", "new", "-q"]


@pytest.mark.parametrize("key,extra,message", [
    ("none", ["--ip-adapter-image", "a.png"], "error: this export has no IP-Adapter, so an image prompt cannot be used; "
                                              "re-export with `resadapter-rt export ... --ip-adapter FILE --image-encoder DIR`"),
    ("ip", ["--ip-adapter-image", "broken.png"], "error: broken.png: cannot read this IP-Adapter image (cannot identify image file"),
    ("ip", ["--ip-adapter-image", "missing.png"], "error: missing.png: no such IP-Adapter image file; pass a PNG or JPEG file"),
    ("ip", ["--ip-adapter-image", "a.png", "--ip-adapter-scale", "3"],
     "error: ip_adapter_scale 3.0 is not a number in [0, 2]; use e.g. 0.6 (0 turns the image prompt off)"),
    ("ip", ["--mask", "a.png"], "error: --mask needs --image (the image it applies to; white = re-generate)"),
    ("ip", ["--image", "a.png", "--mask", "small.png"],
     "error: the mask is 20x20 but the image is 40x40; pass a mask of the image's size (white = re-generate)"),
    ("ip", ["--image", "a.png", "--mask", "broken.png"], "error: broken.png: cannot read this mask image (cannot identify image file"),
])
def test_generate_ip_adapter_bad_input(tmp_path, monkeypatch, capsys, key, extra, message):
    source = shared_controlnet_exports()["plain"] if key == "none" else shared_ip_exports()["sd15-plain"]
    shutil.copytree(source, tmp_path / "exp")
    setup_files(tmp_path)
    capsys.readouterr()  # a fixture built just now may have drawn progress bars
    assert_bad_input_touches_nothing(tmp_path, GENERATE + ["--artifacts", "exp"] + extra, message, monkeypatch, capsys)


@pytest.mark.parametrize("extra,message", [
    (["--image-encoder", "enc"], "error: --image-encoder needs --ip-adapter FILE (the IP-Adapter whose encoder or scale it sets)"),
    (["--ip-adapter", "IP", "--ip-adapter-scale", "0"], "error: --ip-adapter-scale 0 would export the UNet without its IP-Adapter"),
    (["--ip-adapter", "IP", "--ip-adapter-scale", "big"], "error: --ip-adapter-scale 'big' is not a number in [0, 2]"),
    (["--ip-adapter", "lonely.safetensors"], "error: lonely.safetensors: an IP-Adapter needs its CLIP image encoder and there is "
                                             "no image_encoder; pass --image-encoder DIR"),
    (["--ip-adapter", "missing.safetensors"], "error: missing.safetensors: no such IP-Adapter file"),
    (["--ip-adapter", "broken.png"], "error: broken.png: an IP-Adapter is a .safetensors or .bin file"),
    (["--ip-adapter", "SDXL"], "error: SDXL: this IP-Adapter is for a UNet with 17 cross-attentions of width 64; the model's "
                               "UNet has 11 of width 32; use an IP-Adapter trained for this model family"),
])
def test_export_ip_adapter_bad_input(tmp_path, monkeypatch, capsys, extra, message):
    setup_files(tmp_path)
    capsys.readouterr()
    files = {"IP": str(shared_ip_adapters(SD15)["plain"]), "SDXL": str(shared_ip_adapters(SDXL)["plain"])}
    message = message.replace("SDXL:", f"{files['SDXL']}:")
    assert_bad_input_touches_nothing(tmp_path, EXPORT + [files.get(a, a) for a in extra], message, monkeypatch, capsys)


def test_an_export_missing_its_image_preprocessing_is_one_line(tmp_path, monkeypatch, capsys):
    shutil.copytree(shared_ip_exports()["sd15-plain"], tmp_path / "exp")
    shutil.rmtree(tmp_path / "exp" / "feature_extractor")
    capsys.readouterr()
    assert_bad_input_touches_nothing(tmp_path, GENERATE + ["--artifacts", "exp"],
                                     "error: exp: feature_extractor/preprocessor_config.json (the IP-Adapter's image preprocessing) "
                                     "is missing, so this export is incomplete; re-export it", monkeypatch, capsys)
