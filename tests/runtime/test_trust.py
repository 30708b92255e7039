"""What the runtime takes from a manifest is checked: sources, hashes, paths, the model's own settings; alpha per call."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import quiet
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_pipeline
from resadapter_rt.export.dynamic_alpha import LoraBranchConv2d
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.models.tiny import tiny_adapter_dir, tiny_pipeline_dir
from resadapter_rt.pipeline import ResAdapterPipeline

SIZES = ((328, 200, 1),)


@pytest.fixture
def local_sources(tmp_path, monkeypatch):
    """A tiny SD1.5 model and adapter as local directories, exported with relative paths from ``tmp/src``."""
    src = tmp_path / "src"
    shutil.copytree(tiny_pipeline_dir(SD15), src / "owner" / "model")  # a relative path shaped like a hub id
    shutil.copytree(tiny_adapter_dir(SD15), src / "adapter")
    monkeypatch.chdir(src)
    export_pipeline(ExportOptions(model="owner/model", resadapter="adapter", alpha="dynamic", validation_sizes=SIZES),
                    tmp_path / "export", progress=quiet)
    monkeypatch.chdir(tmp_path)  # elsewhere: relative sources must still resolve as recorded
    return src, tmp_path / "export"


def test_torch_backend_rebuilds_from_recorded_local_paths_from_any_directory(local_sources):
    src, export = local_sources
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["sources"]["model_kind"] == "local" and manifest["sources"]["model_path"] == str(src / "owner" / "model")
    torch_pipe = ResAdapterPipeline.from_artifacts(export, backend="torch")
    ort_pipe = ResAdapterPipeline.from_artifacts(export)
    kwargs = dict(height=200, width=328, num_inference_steps=2, seed=1, output_type="latent", resadapter_alpha=0.6)
    torch.testing.assert_close(torch_pipe("a cat", **kwargs).latents, ort_pipe("a cat", **kwargs).latents, atol=1e-3, rtol=0)


def test_edited_adapter_file_is_refused_by_name(local_sources):
    src, export = local_sources
    lora = src / "adapter" / "pytorch_lora_weights.safetensors"
    tensors = load_file(str(lora))
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 0.5
    save_file(tensors, str(lora))
    with pytest.raises(ResAdapterRTError, match="ResAdapter file pytorch_lora_weights.safetensors has changed since the export"):
        ResAdapterPipeline.from_artifacts(export, backend="torch")


def test_edited_model_file_is_refused_by_name(local_sources):
    src, export = local_sources
    (src / "owner" / "model" / "unet" / "config.json").write_text(
        (src / "owner" / "model" / "unet" / "config.json").read_text().replace("{", '{"_edited": 1, ', 1))
    with pytest.raises(ResAdapterRTError, match="model file unet/config.json has changed since the export"):
        ResAdapterPipeline.from_artifacts(export, backend="torch")


def test_a_vanished_local_source_never_falls_back_to_the_hub(local_sources):
    src, export = local_sources
    shutil.rmtree(src / "owner")
    with pytest.raises(ResAdapterRTError, match=r"the model it was exported from, .*owner/model, no longer exists"):
        ResAdapterPipeline.from_artifacts(export, backend="torch")


def test_sdxl_force_zeros_for_empty_prompt_comes_from_the_model(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir(SDXL), model)
    index = json.loads((model / "model_index.json").read_text())
    index["force_zeros_for_empty_prompt"] = False
    (model / "model_index.json").write_text(json.dumps(index))
    export_pipeline(ExportOptions(model=str(model), resadapter="tiny-sdxl", alpha=0.8, validation_sizes=((384, 264, 1),)),
                    tmp_path / "export", progress=quiet)
    assert json.loads((tmp_path / "export" / "manifest.json").read_text())["force_zeros_for_empty_prompt"] is False
    ours = ResAdapterPipeline.from_artifacts(tmp_path / "export")("a red fox", height=264, width=384, num_inference_steps=3,
                                                                   guidance_scale=6.0, seed=4, output_type="latent").latents
    parts = load_components(str(model))
    reference = merge_pipeline(parts, load_adapter("tiny-sdxl"), 0.8).to_diffusers()  # the model's scheduler, as ours
    assert reference.config.force_zeros_for_empty_prompt is False
    expected = reference("a red fox", height=264, width=384, num_inference_steps=3, guidance_scale=6.0,
                         generator=torch.Generator().manual_seed(4), output_type="latent").images
    assert float((ours - expected).abs().max()) <= 1e-3


def test_torch_backend_alpha_is_per_call_across_threads(tmp_path):
    """A second thread's call with another alpha runs in the middle of the first one's forward."""
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", validation_sizes=SIZES),
                    tmp_path / "export", progress=quiet)
    unet = ResAdapterPipeline.from_artifacts(tmp_path / "export", backend="torch").runners["unet"]
    g = torch.Generator().manual_seed(0)
    inputs = dict(sample=torch.randn(1, 4, 16, 24, generator=g), timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 77, 32, generator=g))
    expected = {a: unet(**inputs, resadapter_alpha=torch.tensor(a))["out_sample"] for a in (0.3, 1.7)}
    assert float((expected[0.3] - expected[1.7]).abs().max()) > 1e-4  # alpha matters at this size

    branches = [m for m in unet.module.modules() if isinstance(m, LoraBranchConv2d)]
    interleaved = {}

    def other_thread() -> None:
        interleaved[1.7] = unet(**inputs, resadapter_alpha=torch.tensor(1.7))["out_sample"]

    def run_other_thread_once(_module, _args):
        if 1.7 not in interleaved and threading.current_thread() is threading.main_thread():
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()

    hook = branches[len(branches) // 2].register_forward_pre_hook(run_other_thread_once)
    try:
        interleaved[0.3] = unet(**inputs, resadapter_alpha=torch.tensor(0.3))["out_sample"]
    finally:
        hook.remove()
    for alpha in (0.3, 1.7):
        torch.testing.assert_close(interleaved[alpha], expected[alpha], atol=1e-6, rtol=0)
