"""ControlNet on the command line: export --controlnet, generate --control-image (PNG metadata), canny, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cli_harness import assert_bad_input_touches_nothing, run_main
from controlnet_fixtures import noise_image, shared_controlnet_exports, shared_controlnets
from resadapter_rt.export.exporter import VALIDATION_SIZES


@pytest.fixture(scope="module")
def exports():
    return shared_controlnet_exports()


def square_image(path, size=64):
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = 255
    Image.fromarray(pixels).save(path)


def test_generate_with_two_control_images_records_them(exports, tmp_path, capsys):
    noise_image(80, 60, 1).save(tmp_path / "a.png")
    noise_image(60, 80, 2).save(tmp_path / "b.png")
    out = tmp_path / "out.png"
    result = run_main(["generate", "--artifacts", str(exports["two"]), "--prompt", "a fox", "--width", "128", "--height", "136",
                       "--steps", "2", "--scheduler", "euler", "-q", "-o", str(out), "--control-image", str(tmp_path / "a.png"),
                       "--control-image", str(tmp_path / "b.png"), "--controlnet-scale", "0.5", "1.5",
                       "--control-guidance-start", "0.0", "--control-guidance-end", "0.5"], capsys)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        parameters = json.loads(image.text["parameters"])
        assert image.size == (128, 136)
    assert parameters["control_images"] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert parameters["controlnet_conditioning_scale"] == [0.5, 1.5]
    assert parameters["control_guidance_start"] == [0.0, 0.0] and parameters["control_guidance_end"] == [0.5, 0.5]
    assert parameters["canny"] is False


@pytest.mark.slow  # the default validation sizes (up to 1008x288 and 280x1000): ~2 min on 2 shared cores
def test_export_cli_folds_the_controlnet_into_the_unet(tmp_path, capsys):
    net = shared_controlnets()[0]
    result = run_main(["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--alpha", "0.5", "--controlnet", str(net),
                       "--out", str(tmp_path / "exp"), "-q"], capsys)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert [c["path"] for c in manifest["controlnets"]] == [str(net)]
    assert set(manifest["controlnets"][0]["files"]) == {"config.json", "diffusion_pytorch_model.safetensors"}
    shapes = {i["name"]: i["shape"] for i in manifest["components"]["unet"]["inputs"]}
    assert shapes["controlnet_cond"] == [1, "batch", 3, "height", "width"] and shapes["controlnet_scale"] == [1]
    # the built-in validation ran the ControlNet inputs at every off-trace size
    validated = [(r["width"], r["height"], r["batch"]) for r in manifest["components"]["unet"]["validation"]]
    assert validated == list(VALIDATION_SIZES)


def test_canny_matches_opencv_with_diffusers_thresholds(tmp_path, capsys):
    import cv2

    square_image(tmp_path / "in.png")
    result = run_main(["canny", str(tmp_path / "in.png"), str(tmp_path / "edges.png")], capsys)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "edges.png") as image:
        edges = np.asarray(image)
        assert json.loads(image.text["parameters"])["canny"]["low"] == 100
    expected = cv2.Canny(np.asarray(Image.open(tmp_path / "in.png").convert("RGB")), 100, 200)
    assert edges.shape == (64, 64, 3) and (edges == expected[:, :, None]).all()
    assert edges[16, 16:48, 0].max() == 255 and edges[32, 32, 0] == 0  # the square's outline, not its inside


def setup_images(root):
    noise_image(40, 40, 0).save(root / "a.png")
    noise_image(40, 40, 1).save(root / "b.png")
    (root / "broken.png").write_bytes(b"not an image at all")


GENERATE = ["generate", "--prompt", "a fox", "--width", "128", "--height", "128", "--steps", "1", "-q", "-o", "out.png"]


@pytest.mark.parametrize("key,extra,message", [
    ("plain", ["--control-image", "a.png"], "error: this export has no ControlNet, so --control-image cannot be used; "
                                            "re-export with `resadapter-rt export ... --controlnet CONTROLNET`"),
    ("one", ["--control-image", "a.png", "--control-image", "b.png"],
     "error: --control-image given 2 time(s) for an export with 1 ControlNet(s); pass one per ControlNet, in export order"),
    ("two", ["--control-image", "a.png"],
     "error: --control-image given 1 time(s) for an export with 2 ControlNet(s); pass one per ControlNet, in export order"),
    ("one", [], "error: --control-image given 0 time(s) for an export with 1 ControlNet(s); pass one per ControlNet, in export order"),
    ("two", ["--control-image", "a.png", "--control-image", "b.png", "--controlnet-scale", "1", "2", "3"],
     "error: --controlnet-scale has 3 values for 2 ControlNet(s); pass one value, or one per ControlNet"),
    ("one", ["--control-image", "broken.png"], "error: broken.png: cannot read this control image (cannot identify image file"),
    ("one", ["--control-image", "missing.png"], "error: missing.png: no such control image file; pass a PNG or JPEG file"),
    ("one", ["--control-image", "a.png", "--control-guidance-start", "0.9", "--control-guidance-end", "0.1"],
     "error: control guidance window 0.9-0.1 is invalid; need 0 <= start < end <= 1"),
])
def test_generate_control_bad_input(exports, tmp_path, monkeypatch, capsys, key, extra, message):
    shutil.copytree(exports[key], tmp_path / "exp")
    setup_images(tmp_path)
    assert_bad_input_touches_nothing(tmp_path, GENERATE + ["--artifacts", "exp"] + extra, message, monkeypatch, capsys)


@pytest.mark.parametrize("args,message", [
    (["in.png", "out.png", "--low", "300", "--high", "200"],
     "error: canny thresholds 300/200 are invalid; need 0 <= --low <= --high, e.g. 100/200"),
    (["broken.png", "out.png"], "error: broken.png: cannot read this image (cannot identify image file"),
    (["in.png", "out.jpg"], "error: out.jpg: images are written as PNG; pass a path ending in .png"),
])
def test_canny_bad_input(tmp_path, monkeypatch, capsys, args, message):
    square_image(tmp_path / "in.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    assert_bad_input_touches_nothing(tmp_path, ["canny", *args], message, monkeypatch, capsys)


def test_generate_image_to_image_with_a_controlnet_records_it(exports, tmp_path, capsys):
    noise_image(80, 60, 1).save(tmp_path / "control.png")
    noise_image(100, 100, 2).save(tmp_path / "source.png")
    out = tmp_path / "out.png"
    result = run_main(["generate", "--artifacts", str(exports["one"]), "--prompt", "a fox", "--width", "128", "--height", "128",
                       "--steps", "4", "--scheduler", "euler", "-q", "-o", str(out), "--control-image", str(tmp_path / "control.png"),
                       "--canny", "--image", str(tmp_path / "source.png"), "--strength", "0.5"], capsys)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        parameters = json.loads(image.text["parameters"])
    assert parameters["image"] == str(tmp_path / "source.png") and parameters["strength"] == 0.5 and parameters["canny"] is True


def test_generate_image_to_image_bad_input(exports, tmp_path, monkeypatch, capsys):
    shutil.copytree(exports["two"], tmp_path / "exp")
    setup_images(tmp_path)
    assert_bad_input_touches_nothing(
        tmp_path, GENERATE + ["--artifacts", "exp", "--control-image", "a.png", "--control-image", "b.png", "--image", "a.png"],
        "error: this export has no VAE encoder, so image-to-image cannot be used; re-export with `resadapter-rt export ... --vae-encoder`",
        monkeypatch, capsys)
