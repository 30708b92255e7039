"""The shipped mini-sd15 and its ResAdapter: they load offline, draw what the prompt says, and demo shows them."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import quiet
from resadapter_rt import load_adapter, load_components
from resadapter_rt.cli import main
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.miniature import DEMO_GUIDANCE
from resadapter_rt.models.mini import PIXEL_RANGE, TRAINING_SIZE
from resadapter_rt.miniature.scorer import score
from resadapter_rt.miniature.shapes import COLOURS, caption
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.schedulers import make_scheduler


def test_builtin_model_and_adapter_load_offline():
    parts = load_components("mini-sd15")
    assert parts.training_size == TRAINING_SIZE == 128 and parts.pixel_range == PIXEL_RANGE
    assert parts.vae is not None and parts.text_encoder is not None and parts.tokenizer is not None
    assert tuple(parts.unet.config.block_out_channels) == (32, 64, 96, 96)
    adapter = load_adapter("mini-sd15")
    assert adapter.family.name == "sd15" and adapter.norms and len(adapter.lora.layers) == 6


def test_in_domain_images_show_the_prompted_colour():
    """Random weights draw noise: this fails unless the shipped model learnt the grammar."""
    parts = load_components("mini-sd15")
    pipe = parts.to_diffusers(make_scheduler("model", dict(parts.scheduler.config)))
    pipe.set_progress_bar_config(disable=True)
    prompts = [caption(colour, shape, background)
               for colour, shape, background in zip(COLOURS, ("circle", "square", "triangle") * 2, ("white", "black") * 3)]
    images = pipe(prompts, height=128, width=128, num_inference_steps=20, guidance_scale=DEMO_GUIDANCE,
                  generator=torch.Generator().manual_seed(0)).images
    verdicts = [score(image, prompt) for image, prompt in zip(images, prompts)]
    assert sum(v.success for v in verdicts) >= 5, [v.describe() for v in verdicts]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--artifacts", str(root / "exports"), "--output-dir", str(root / "outputs"), "--steps", "12", "-q"])
    return code, root


def test_demo_writes_the_grid_and_verdicts(demo_run):
    from PIL import Image

    code, root = demo_run
    assert code == 0
    grid = Image.open(root / "outputs" / "demo.png")
    assert grid.width > 6 * 384 and grid.height > 2 * 384
    report = json.loads((root / "outputs" / "demo.json").read_text())
    cells = report["cells"]
    assert len(cells) == 12 and {c["variant"] for c in cells} == {"model", "resadapter"}
    assert all(c["verdict"] is not None for c in cells)
    in_domain = [c for c in cells if (c["width"], c["height"]) == (128, 128)]
    assert [c["alpha"] for c in in_domain] == [None, 1.0]
    assert {c["alpha"] for c in cells if c["variant"] == "resadapter"} == {1.0}  # the demo's default alpha
    with_adapter = sum(c["verdict"]["success"] for c in cells if c["variant"] == "resadapter")
    without = sum(c["verdict"]["success"] for c in cells if c["variant"] == "model")
    assert with_adapter > without  # seed 0's prompt: the adapter fixes out-of-domain sizes the model gets wrong


def test_demo_reuses_its_exports(demo_run, capsys):
    _, root = demo_run
    assert main(["demo", "--artifacts", str(root / "exports"), "--output-dir", str(root / "again"), "--steps", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("using the existing export") == 2


def test_exports_carry_the_models_training_size_and_range(demo_run):
    """mini-sd15 declares 128 px and 64-512 px: alpha auto is relative to 128, sizes past 512 are refused."""
    from resadapter_rt import ResAdapterRTError

    _, root = demo_run
    pipe = ResAdapterPipeline.from_artifacts(root / "exports" / "resadapter")
    assert pipe.manifest["training_size"] == 128 and pipe.manifest["pixel_range"] == [64, 512]
    assert pipe.resolve_alpha("auto", 256, 256) == 0.4667  # 2x the training size, the official bands
    with pytest.raises(ResAdapterRTError, match=r"width 520 px is outside what .* covers \(64-512 px per side"):
        pipe("a red circle on a white background", height=128, width=520, num_inference_steps=1)


def test_export_without_adapter_is_the_model_as_it_is(tmp_path):
    """``--resadapter none`` generates what diffusers' pipeline of the unmodified model does."""
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="none", validation_sizes=((328, 200, 1),)), tmp_path / "e",
                    progress=quiet)
    pipe = ResAdapterPipeline.from_artifacts(tmp_path / "e")
    out = pipe("a red fox", height=200, width=328, num_inference_steps=3, seed=4, scheduler="euler", output_type="latent")
    parts = load_components("tiny-sd15")
    reference = parts.to_diffusers(make_scheduler("euler", dict(parts.scheduler.config)))
    expected = reference("a red fox", height=200, width=328, num_inference_steps=3, guidance_scale=7.0,
                         generator=torch.Generator().manual_seed(4), output_type="latent").images
    assert float((out.latents - expected).abs().max()) <= 1e-3
    assert pipe.manifest["sources"]["resadapter"]["source"] == "none"
    assert pipe.manifest["sources"]["resadapter"]["files"] == {}


def test_dynamic_alpha_without_adapter_is_refused(tmp_path, capsys):
    code = main(["export", "--model", "tiny-sd15", "--resadapter", "none", "--alpha", "dynamic", "--out", str(tmp_path / "x")])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --alpha dynamic needs a ResAdapter, but --resadapter is none (the model as it is); "
        "leave --alpha out, or name an adapter")
    assert not (tmp_path / "x").exists()
