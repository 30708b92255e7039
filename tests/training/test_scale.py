"""Training options for scale, in one process: gradient accumulation, --cache-latents and --gradient-checkpointing
give the same adapter as the plain run; mixed precision keeps every trainable tensor fp32; launcher and device
misconfigurations are one line. (Several processes: test_distributed.py, extended tier.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli_harness import assert_bad_input_touches_nothing
from resadapter_rt import load_adapter
from resadapter_rt.cli import main
from resadapter_rt.training import trainer
from resadapter_rt.training.encoding import Encoder, draw
from run_state import adam_moments, checkpoint_state, relative_difference
from toy_data import COLOURS, make_dataset

STEPS = 3


def one_bucket_data(root: Path) -> Path:
    """4 distinct 64x64 images: a step of batch 4 and one of 2 batches of 2 see the same 4 samples."""
    from PIL import Image, ImageDraw

    data = root / "data"
    data.mkdir()
    for index, (colour, rgb) in enumerate(COLOURS.items()):
        image = Image.new("RGB", (64, 64), (90, 90, 90))
        ImageDraw.Draw(image).ellipse((8 + 4 * index, 16, 56, 48), fill=rgb)
        image.save(data / f"{colour}.png")
        (data / f"{colour}.txt").write_text(f"a {colour} circle")
    return data


def test_accumulation_cache_and_checkpointing_give_the_same_adapter(tmp_path, monkeypatch):
    data = one_bucket_data(tmp_path)
    encoded = []
    real_encode = Encoder._encode

    def counting_encode(self, samples, flips):
        encoded.append(len(samples))
        return real_encode(self, samples, flips)

    monkeypatch.setattr(Encoder, "_encode", counting_encode)
    common = ["train", "--model", "tiny-sd15", "--data", str(data), "--min-side", "64", "--steps", str(STEPS), "-q",
              "--learning-rate", "1e-2", "--checkpointing-steps", str(STEPS), "--seed", "5"]
    runs = {"plain": ["--batch-size", "4"], "accumulated": ["--batch-size", "2", "--gradient-accumulation-steps", "2"],
            "cached": ["--batch-size", "4", "--cache-latents", "--gradient-checkpointing"]}
    images = {}
    for name, extra in runs.items():
        encoded.clear()
        assert main([*common, *extra, "--out", str(tmp_path / name)]) == 0
        images[name] = sum(encoded)
    plain = checkpoint_state(tmp_path / "plain", STEPS)
    assert [r["batch"] for r in plain["history"]] == [4] * STEPS
    latent_shape = (4, 8, 8)
    flips = {(i, draw(5, epoch, i, latent_shape, 1000).flip) for epoch in range(STEPS) for i in range(4)}
    # Each step is one epoch of the 4 images; the cache encodes each (image, flip) once.
    assert images == {"plain": 4 * STEPS, "accumulated": 4 * STEPS, "cached": len(flips)} and len(flips) < 4 * STEPS
    for name in ("accumulated", "cached"):
        other = checkpoint_state(tmp_path / name, STEPS)
        assert [r["batch"] for r in other["history"]] == [4] * STEPS
        errors = (relative_difference(plain["trainable"], other["trainable"]), relative_difference(adam_moments(plain), adam_moments(other)),
                  max(abs(a["loss"] - b["loss"]) / a["loss"] for a, b in zip(plain["history"], other["history"])))
        print(f"{name} vs plain: trainable {errors[0]:.1e}, AdamW first moment {errors[1]:.1e}, loss {errors[2]:.1e}")
        assert max(errors) <= 1e-5, (name, errors)
    assert relative_difference(plain["trainable"], checkpoint_state(tmp_path / "plain", STEPS)["trainable"]) == 0
    assert not torch.equal(plain["trainable"]["down_blocks.0.resnets.0.norm1.weight"], torch.ones(8))  # it trained


def dtypes_during_training(monkeypatch) -> dict:
    """Patch the step to record the dtypes of the frozen and trainable tensors while a run trains."""
    seen: dict = {}
    real_step = trainer._Run.step

    def step(self, batches):
        seen.update(unet=self.unet.conv_in.weight.dtype, vae=self.components.vae.dtype,
                    text=self.components.text_encoder.dtype, trainable={p.dtype for _, p in self.trainable},
                    device=self.accelerator.device.type, names=len(self.trainable))
        loss = real_step(self, batches)
        seen.setdefault("losses", []).append(loss)
        return loss

    monkeypatch.setattr(trainer._Run, "step", step)
    return seen


def mixed_precision_step(tmp_path: Path, monkeypatch, device: str, precision: str) -> dict:
    data = make_dataset(tmp_path / "data", count=2)
    seen = dtypes_during_training(monkeypatch)
    argv = ["train", "--model", "tiny-sd15", "--data", str(data), "--out", str(tmp_path / "o"), "--min-side", "64",
            "--steps", "1", "--batch-size", "1", "--device", device, "--mixed-precision", precision, "-q",
            "--checkpointing-steps", "1", "--validation-prompt", "a red circle", "--validation-sizes", "64x64",
            "--validation-steps", "2"]
    assert main(argv) == 0
    state = torch.load(tmp_path / "o" / "checkpoints" / "checkpoint-000001" / "training_state.pt", weights_only=True)
    assert {t.dtype for t in state["trainable"].values()} == {torch.float32}
    assert load_adapter(tmp_path / "o").norms and (tmp_path / "o" / "validation" / "epoch-000-64x64.png").is_file()
    assert all(torch.isfinite(torch.tensor(seen["losses"]))), seen["losses"]
    return {**seen, "scaler": state["scaler"]}


def test_bf16_on_the_cpu_keeps_trainable_tensors_fp32(tmp_path, monkeypatch):
    seen = mixed_precision_step(tmp_path, monkeypatch, "cpu", "bf16")
    assert (seen["unet"], seen["vae"], seen["text"], seen["trainable"]) == (torch.bfloat16,) * 3 + ({torch.float32},)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_one_cuda_training_step(tmp_path, monkeypatch, precision):
    """On a GPU: frozen networks in half precision (the VAE fp32 under fp16), LoRA and norms fp32, loss finite."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    seen = mixed_precision_step(tmp_path, monkeypatch, "cuda", precision)
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    assert seen["device"] == "cuda" and (seen["unet"], seen["text"], seen["trainable"]) == (half, half, {torch.float32})
    assert seen["vae"] == (torch.float32 if precision == "fp16" else half)
    assert bool(seen["scaler"]) == (precision == "fp16")  # fp16 trains with a gradient scaler, checkpointed


def _bad(tmp_path: Path, argv: list[str], expected: str, monkeypatch, capsys) -> None:
    make_dataset(tmp_path / "data", count=2)
    base = ["train", "--model", "tiny-sd15", "--data", "data", "--out", "o", "--min-side", "64", "--steps", "1", "-q"]
    assert_bad_input_touches_nothing(tmp_path, [*base, *argv], expected, monkeypatch, capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    _bad(tmp_path, ["--device", "cuda"], "--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
         "use --device cpu", monkeypatch, capsys)


def test_half_a_launch_environment_is_one_line(tmp_path, monkeypatch, capsys):
    """WORLD_SIZE set by hand without the rest of what torchrun sets: refused before anything is written."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    _bad(tmp_path, [], "a data-parallel launch sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, but "
         "LOCAL_RANK, MASTER_ADDR, MASTER_PORT are missing (found RANK, WORLD_SIZE)", monkeypatch, capsys)


@pytest.mark.parametrize("argv,expected", [
    (["--gradient-accumulation-steps", "0"], "--gradient-accumulation-steps 0 must be a positive integer"),
    (["--mixed-precision", "fp8"], "argument --mixed-precision: invalid choice: 'fp8' (choose from 'no', 'fp16', 'bf16')"),
])
def test_bad_scale_option_is_one_line(tmp_path, monkeypatch, capsys, argv, expected):
    _bad(tmp_path, argv, expected, monkeypatch, capsys)
