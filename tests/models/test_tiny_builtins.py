"""Built-in tiny ControlNet and IP-Adapter (``--controlnet tiny-sd15``, ``--ip-adapter tiny-sd15``) and the
random-weights note that images from the tiny models carry (PNG metadata and generate's summary)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cli_harness import run_main
from resadapter_rt import ResAdapterRTError
from resadapter_rt.export.exporter import ExportOptions, read_manifest
from resadapter_rt.models import load_components
from resadapter_rt.models.controlnet import check_controlnet_fits, load_controlnet
from resadapter_rt.models.ip_adapter import check_ip_adapter_fits, default_image_encoder, load_ip_adapter
from resadapter_rt.models.tiny import random_weight_parts


def test_builtin_controlnet_fits_its_model_and_is_recorded_by_name():
    loaded = load_controlnet("tiny-sd15")
    check_controlnet_fits(loaded, load_components("tiny-sd15", unet_only=True).unet)
    assert loaded.record()["source"] == "tiny-sd15" and loaded.record()["kind"] == "builtin"
    with pytest.raises(ResAdapterRTError, match=r"^mini-sd15: no such file or directory"):  # only the tiny models have one
        load_controlnet("mini-sd15")


def test_builtin_ip_adapter_brings_its_image_encoder_and_is_recorded_by_name():
    loaded = load_ip_adapter("tiny-sd15")
    check_ip_adapter_fits(loaded, load_components("tiny-sd15", unet_only=True).unet)
    record = loaded.record()
    assert (loaded.kind, record["source"], record["kind"]) == ("plain", "tiny-sd15", "builtin")
    assert (record["image_encoder"]["source"], record["image_encoder"]["kind"]) == ("tiny-sd15", "builtin")
    assert default_image_encoder("tiny-sd15") == "tiny-sd15"  # what build compares to reuse its export
    assert default_image_encoder("/models/ip-adapter_sd15.safetensors") == "/models/image_encoder"


@pytest.mark.parametrize("manifest,parts", [
    ({"sources": {"model": "tiny-sd15", "resadapter": {"source": "tiny-sd15"}}}, ["model tiny-sd15", "ResAdapter tiny-sd15"]),
    ({"sources": {"model": "mini-sd15", "resadapter": {"source": "mini-sd15"}}}, []),  # trained weights
    ({"sources": {"model": "/m/sd15", "resadapter": {"source": "/a/resadapter_v2_sd1.5"}}, "controlnets": [{"source": "tiny-sd15"}],
      "ip_adapter": {"source": "tiny-sd15"}}, ["ControlNet tiny-sd15", "IP-Adapter tiny-sd15"]),
])
def test_random_weight_parts_name_the_builtin_tiny_sources(manifest, parts):
    assert random_weight_parts(manifest) == parts


def test_builtin_controlnet_and_ip_adapter_run_offline_from_the_cli(tmp_path, capsys):
    """The README path: export with both built-ins, generate with a control image and an image prompt; build would reuse it."""
    from resadapter_rt.engines.prepare import stale_reason

    argv = ["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--controlnet", "tiny-sd15", "--ip-adapter",
            "tiny-sd15", "--alpha", "dynamic", "--validation-sizes", "192x128", "--out", str(tmp_path / "exp"), "-q"]
    assert run_main(argv, capsys).returncode == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    result = run_main(["generate", "--artifacts", str(tmp_path / "exp"), "--prompt", "a cat", "--width", "192", "--height", "128",
                       "--steps", "2", "--control-image", str(tmp_path / "c.png"), "--ip-adapter-image", str(tmp_path / "c.png"),
                       "-q", "-o", str(tmp_path / "o.png")], capsys)
    assert result.returncode == 0, result.stderr
    parameters = json.loads(Image.open(tmp_path / "o.png").text["parameters"])
    assert parameters["random_weights"] == ["model tiny-sd15", "ResAdapter tiny-sd15", "ControlNet tiny-sd15", "IP-Adapter tiny-sd15"]
    options = ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", controlnets=("tiny-sd15",),
                            ip_adapter="tiny-sd15")
    assert stale_reason(read_manifest(tmp_path / "exp"), options, tmp_path / "exp") is None
