"""`resadapter-rt train` on the tiny SD1.5 model: loss goes down, a resume is bit-identical, the outputs
load with this project and with diffusers (same UNet outputs), and only the ResAdapter set trains."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import official, relative_error, unet_inputs
from reference import reference_pipeline
from resadapter_rt import load_adapter, load_components, merge_adapter
from resadapter_rt.cli import main
from resadapter_rt.models.families import SD15
from resadapter_rt.training import trainer
from resadapter_rt.training.trainable import add_trainable_adapter
from toy_data import make_dataset

STEPS, CHECKPOINT = 20, 10
COMMON = ["--model", "tiny-sd15", "--steps", str(STEPS), "-q"]
TRAJECTORY = ["--batch-size", "2", "--learning-rate", "1e-2", "--min-side", "64", "--seed", "3", "--rank", "8"]


def _state(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"checkpoint-{step:06d}" / "training_state.pt", weights_only=True)


def _steps(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [r for r in records if r["event"] == "step"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run (official format), one interrupted after step 10, and its resume (peft format)."""
    root = tmp_path_factory.mktemp("train")
    data = make_dataset(root / "data")
    dirs = {name: root / name for name in ("straight", "interrupted", "resumed")}
    validation = ["--validation-prompt", "a red circle", "--validation-sizes", "64x64,128x64", "--validation-steps", "2"]
    assert main(["train", *COMMON, *TRAJECTORY, *validation, "--data", str(data), "--out", str(dirs["straight"]),
                 "--checkpointing-steps", str(CHECKPOINT)]) == 0
    real_step = trainer._Run.step
    calls = []

    def interrupting_step(self, indices):
        calls.append(indices)
        if len(calls) == CHECKPOINT + 1:
            raise KeyboardInterrupt
        return real_step(self, indices)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer._Run, "step", interrupting_step)
        assert main(["train", *COMMON, *TRAJECTORY, "--data", str(data), "--out", str(dirs["interrupted"]),
                     "--checkpointing-steps", str(CHECKPOINT)]) == 130
    # The resume repeats no trajectory option: they come from the checkpoint.
    checkpoint = dirs["interrupted"] / "checkpoints" / f"checkpoint-{CHECKPOINT:06d}"
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        assert main(["train", *COMMON, "--data", str(data), "--out", str(dirs["resumed"]), "--resume", str(checkpoint),
                     "--checkpointing-steps", str(CHECKPOINT), "--format", "peft"]) == 0
    dirs["resumed_summary"] = summary.getvalue()
    return dirs


def test_loss_decreases(runs):
    losses = [r["loss"] for r in _steps(runs["straight"])]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss mean of first 10 steps {first:.4f}, of last 10 {last:.4f}")
    assert len(losses) == STEPS and last < first - 0.02, (first, last)


def test_resume_continues_bit_identically(runs):
    straight, resumed = _state(runs["straight"], STEPS), _state(runs["resumed"], STEPS)
    assert sorted(straight["trainable"]) == sorted(resumed["trainable"])
    for name, tensor in straight["trainable"].items():
        assert torch.equal(tensor, resumed["trainable"][name]), name
    for index, moments in straight["optimizer"]["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, resumed["optimizer"]["state"][index][key]), (index, key)
    assert straight["scaler"] == resumed["scaler"] == {}  # fp32: no gradient scaler
    assert [r["loss"] for r in _steps(runs["straight"])] == [r["loss"] for r in _steps(runs["resumed"])]
    assert not torch.equal(straight["trainable"]["down_blocks.0.resnets.0.norm1.weight"],
                           _state(runs["straight"], CHECKPOINT)["trainable"]["down_blocks.0.resnets.0.norm1.weight"])
    # The written adapters agree too: norms exactly, the official fp16 LoRA as the peft fp32 LoRA rounded.
    norms = torch.load(runs["resumed"] / "groupnorm_state_dict.pt", weights_only=True)
    official_norms = load_file(str(runs["straight"] / "diffusion_pytorch_model.safetensors"))
    assert norms.keys() == official_norms.keys() and all(torch.equal(norms[k], official_norms[k]) for k in norms)
    peft = load_file(str(runs["resumed"] / "pytorch_lora_weights.safetensors"))
    kohya = load_file(str(runs["straight"] / "pytorch_lora_weights.safetensors"))
    name = "down_blocks.1.downsamplers.0.conv"
    assert torch.equal(peft[f"unet.{name}.lora_B.weight"].half(), kohya[f"lora_unet_{name.replace('.', '_')}.lora_up.weight"])


def test_resume_summary_counts_the_new_steps(runs):
    """A resume from step 10 to step 20 trained 10 steps, not 20, and says which; the losses quoted are the new ones."""
    losses = [r["loss"] for r in _steps(runs["resumed"])]
    assert runs["resumed_summary"].startswith(f"trained 10 steps (steps 11-20, resumed from step {CHECKPOINT}) in ")
    assert f"(loss {losses[CHECKPOINT]:.4f} -> {losses[-1]:.4f})" in runs["resumed_summary"]
    assert runs["resumed_summary"].rstrip().endswith("note: " + trainer.RANDOM_WEIGHTS_NOTE.format(model="tiny-sd15"))


def test_interrupted_run_keeps_whole_checkpoints_only(runs):
    run = runs["interrupted"]
    names = {p.name for p in run.iterdir()}
    assert names == {".resadapter-rt", "checkpoints", "train_log.jsonl"}, names  # no adapter, no temporary dirs
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"checkpoint-{CHECKPOINT:06d}"]
    assert len(_steps(run)) == CHECKPOINT
    assert load_adapter(run / "checkpoints" / f"checkpoint-{CHECKPOINT:06d}").norms  # a checkpoint is an adapter too


def test_official_format_matches_the_release_files(runs):
    release = official("resadapter_v2_sd1.5")  # the tiny SD1.5 has SD1.5's block layout, so the key names match
    for name in ("pytorch_lora_weights.safetensors", "diffusion_pytorch_model.safetensors"):
        with safe_open(str(release / name), "pt") as want, safe_open(str(runs["straight"] / name), "pt") as got:
            assert sorted(got.keys()) == sorted(want.keys()), name
            for key in want.keys():
                assert got.get_tensor(key).dtype == want.get_tensor(key).dtype, key
    alpha = load_file(str(runs["straight"] / "pytorch_lora_weights.safetensors"))["lora_unet_up_blocks_0_upsamplers_0_conv.alpha"]
    assert alpha.item() == 8.0  # lora_alpha = rank, as the training script: scale 1


def test_validation_images_and_log(runs):
    run = runs["straight"]
    images = sorted(p.name for p in (run / "validation").iterdir())
    # 12 images in 6 buckets of 2 -> 6 steps per epoch: epochs 0-2 complete, epoch 3 ends with the run.
    assert images == [f"epoch-{e:03d}-{s}.png" for e in range(4) for s in ("128x64", "64x64")]
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("validation") == 4
    from PIL import Image

    with Image.open(run / "validation" / "epoch-003-64x64.png") as image:  # tiny-sd15: the PNG says its weights are random
        assert image.text["note"] == trainer.RANDOM_WEIGHTS_NOTE.format(model="tiny-sd15")
        assert image.text["resadapter-rt"] == ("validation of tiny-sd15 + the ResAdapter being trained, epoch 3, step 20, "
                                               "prompt 'a red circle'")
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the run says so in a note instead
        assert not (run / "loss_curve.png").exists()
    else:
        assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["width"], r["height"]) for r in _steps(run)} == {(64, 64), (128, 64), (64, 128), (128, 128), (192, 64), (64, 192)}


@pytest.mark.parametrize("run,norm_file", [("straight", "diffusion_pytorch_model.safetensors"), ("resumed", "groupnorm_state_dict.pt")])
def test_trained_adapter_merges_like_diffusers_reference(runs, run, norm_file, tmp_path):
    directory = runs[run]
    base = load_components("tiny-sd15", unet_only=True).unet
    reference = reference_pipeline(base, SD15, [(directory / "pytorch_lora_weights.safetensors", "trained")], [1.0], None)
    norms = torch.load(directory / norm_file, weights_only=True) if norm_file.endswith(".pt") else load_file(str(directory / norm_file))
    assert not reference.unet.load_state_dict(norms, strict=False).unexpected_keys
    merged = merge_adapter(base, load_adapter(directory), 1.0)
    inputs = unet_inputs(base, height=16, width=24)
    with torch.no_grad():
        expected = reference.unet(**inputs).sample
        error = relative_error(merged(**inputs).sample, expected)
        change = relative_error(base(**inputs).sample, expected)
    print(f"{run}: merged vs diffusers reference {error:.1e}; adapter changes the output by {change:.1e}")
    assert error <= 1e-4 and change > 1e-3, (error, change)
    assert main(["merge", "--model", "tiny-sd15", "--resadapter", str(directory), "--out", str(tmp_path / "m")]) == 0


@pytest.mark.parametrize("model", ["tiny-sd15", "tiny-sdxl"])
def test_only_the_resadapter_set_gets_gradients(model):
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    unet = load_components(model, unet_only=True).unet
    expected = set()
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D):
            expected |= {f"{name}.{norm}.{p}" for norm in ("norm1", "norm2") for p in ("weight", "bias")}
        if isinstance(module, (Downsample2D, Upsample2D)):
            expected |= {f"{name}.conv.lora_{half}.default.weight" for half in ("A", "B")}
    trainable = add_trainable_adapter(unet, rank=4, seed=0)
    unet(**unet_inputs(unet, height=16, width=8)).sample.square().mean().backward()
    with_grad = {name for name, p in unet.named_parameters() if p.grad is not None}
    assert with_grad == expected == {name for name, _ in trainable}
    assert "conv_norm_out.weight" not in with_grad and any(".mid_block." in f".{n}" for n in with_grad)


def test_sdxl_trains(tmp_path):
    data = make_dataset(tmp_path / "data", count=2)
    assert main(["train", "--model", "tiny-sdxl", "--data", str(data), "--out", str(tmp_path / "o"), "--steps", "2",
                 "--min-side", "64", "--batch-size", "1", "-q"]) == 0
    adapter = load_adapter(tmp_path / "o")
    assert adapter.family.name == "sdxl" and adapter.norms
