"""Exports read by diffusers'/optimum's own loaders: model_index.json, component configs, tokenizers, IO dtypes."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer
from tokenizers.models import BPE

from conftest import quiet
from resadapter_rt import load_components
from resadapter_rt.export.exporter import ExportOptions, export_pipeline


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    for family, size in (("sd15", (328, 200, 1)), ("sdxl", (384, 264, 1))):
        export_pipeline(ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}", alpha=0.8, validation_sizes=(size,)),
                        root / family, progress=quiet)
    return root


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_consumers_config_loaders_read_the_export(baked, family):
    import diffusers
    from transformers import AutoConfig, CLIPTokenizer

    export, parts = baked / family, load_components(f"tiny-{family}")
    index = diffusers.DiffusionPipeline.load_config(export)
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert dict(diffusers.UNet2DConditionModel.load_config(export / "unet"))["block_out_channels"] == list(parts.unet.config.block_out_channels)
    assert dict(diffusers.AutoencoderKL.load_config(export / "vae_decoder"))["scaling_factor"] == parts.vae.config.scaling_factor
    scheduler = getattr(diffusers, index["scheduler"][1]).from_pretrained(export / "scheduler")
    assert scheduler.config.num_train_timesteps == parts.scheduler.config.num_train_timesteps
    encoders = ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",)
    for name in encoders:
        assert AutoConfig.from_pretrained(export / name).num_hidden_layers == getattr(parts, name).config.num_hidden_layers
    for name in ("tokenizer", "tokenizer_2") if family == "sdxl" else ("tokenizer",):
        ids = CLIPTokenizer.from_pretrained(export / name)("a red fox").input_ids
        assert ids == getattr(parts, name)("a red fox").input_ids
        slow = BPE.from_file(str(export / name / "vocab.json"), str(export / name / "merges.txt"))  # what 4.x's CLIPTokenizer reads
        assert Tokenizer(slow).get_vocab_size() == len(json.loads((export / name / "tokenizer.json").read_text())["model"]["vocab"])
    if family == "sdxl":
        assert index["force_zeros_for_empty_prompt"] is True and index["text_encoder_2"][1] == "CLIPTextModelWithProjection"


def test_graphs_take_what_optimum_and_diffusers_feed(baked):
    """int32 or int64 input ids (both loaders cast to the graph's int32), and a [1] timestep for a batch of 2."""
    encoder = ort.InferenceSession(str(baked / "sd15" / "text_encoder" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert encoder.get_inputs()[0].type == "tensor(int32)"
    ids = np.array([[49406, 320, 49407] + [49407] * 74], dtype=np.int32) % 500
    hidden = encoder.run(None, {"input_ids": ids})[0]
    unet = ort.InferenceSession(str(baked / "sd15" / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    g = np.random.default_rng(0)
    sample = g.standard_normal((2, 4, 25, 41)).astype(np.float32)
    embeds = np.concatenate([hidden, hidden])
    scalar = unet.run(None, {"sample": sample, "timestep": np.array([500.0], np.float32), "encoder_hidden_states": embeds})[0]
    batched = unet.run(None, {"sample": sample, "timestep": np.array([500.0, 500.0], np.float32), "encoder_hidden_states": embeds})[0]
    np.testing.assert_allclose(scalar, batched, atol=1e-6)


def test_manifest_says_which_exports_are_drop_in(baked, tmp_path):
    assert json.loads((baked / "sd15" / "manifest.json").read_text())["interop"]["optimum_onnxruntime_drop_in"] is True
    manifest = export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic",
                                             validation_sizes=((328, 200, 1),)), tmp_path / "dynamic", progress=quiet)
    assert manifest["interop"]["optimum_onnxruntime_drop_in"] is False
    assert "resadapter_alpha" in manifest["interop"]["note"]
