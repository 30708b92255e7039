"""The command line: outputs that load, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import official, unet_inputs
from resadapter_rt import load_adapter, load_components, merge_adapter
from resadapter_rt.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed entry point in a fresh process, as users run it."""
    return subprocess.run([sys.executable, "-m", "resadapter_rt.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_merge_writes_a_loadable_diffusers_unet(tmp_path):
    from diffusers import UNet2DConditionModel

    out = tmp_path / "merged"
    result = run_cli("merge", "--model", "tiny-sdxl", "--resadapter", "tiny-sdxl", "--alpha", "0.6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".resadapter-rt", "config.json", "diffusion_pytorch_model.safetensors",
                                                     "resadapter_merge.json"]
    loaded = UNet2DConditionModel.from_pretrained(out).eval()
    expected = merge_adapter(load_components("tiny-sdxl", unet_only=True).unet, load_adapter("tiny-sdxl"), 0.6)
    inputs = unet_inputs(loaded, height=10, width=14)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).sample, expected(**inputs).sample)
    record = json.loads((out / "resadapter_merge.json").read_text())
    assert record["alpha"] == 0.6 and record["family"] == "sdxl" and len(record["resadapter"]["files"]) == 2


def test_merge_from_pipeline_dir_with_stacked_lora(tmp_path, capsys):
    from resadapter_rt.models.tiny import tiny_pipeline_dir, SD15

    lora_dir = tmp_path / "lora"
    lora_dir.mkdir()
    unet = load_components("tiny-sd15", unet_only=True).unet
    weight = unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_v").weight
    from safetensors.torch import save_file
    save_file({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_v.lora_A.weight": torch.ones(2, weight.shape[1]),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_v.lora_B.weight": torch.ones(weight.shape[0], 2)},
              str(lora_dir / "style.safetensors"))
    out = tmp_path / "merged"
    code = main(["merge", "--model", str(tiny_pipeline_dir(SD15)), "--resadapter", "tiny-sd15",
                 "--lora", f"{lora_dir / 'style.safetensors'}:0.25", "--out", str(out)])
    assert code == 0
    from diffusers import UNet2DConditionModel
    merged = UNet2DConditionModel.from_pretrained(out)
    got = merged.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn1.to_v").weight
    torch.testing.assert_close(got, weight + 0.25 * 2.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--model", "tiny-sd15", "--resadapter", "./missing_adapter"],
     "error: ./missing_adapter: no such file or directory (expected a ResAdapter: local directory, file, or hub id owner/repo[/subfolder])"),
    (["--model", "./missing_model", "--resadapter", "tiny-sd15"],
     "error: ./missing_model: no such file or directory (expected a model: local directory, file, or hub id owner/repo[/subfolder])"),
    (["--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--alpha", "-1"],
     "error: alpha '-1' is out of range; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)"),
    (["--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--alpha", "strong"],
     "error: alpha 'strong' is not a number; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)"),
    (["--model", "tiny-sd15", "--resadapter", "tiny-sdxl"],
     "this is a SDXL ResAdapter but the model is SD1.5; use the resadapter_*_sd1.5 variant"),
    (["--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--lora", "style.safetensors:lots"],
     "error: --lora 'style.safetensors:lots': weight 'lots' is not a number; write FILE:WEIGHT, e.g. lcm.safetensors:1.0"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, args, message):
    code = main(["merge", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_truncated_adapter_via_cli(tmp_path, capsys):
    data = (official("resadapter_v2_sd1.5") / "pytorch_lora_weights.safetensors").read_bytes()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pytorch_lora_weights.safetensors").write_bytes(data[:1000])
    code = main(["merge", "--model", "tiny-sd15", "--resadapter", str(tmp_path / "a"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a readable safetensors file" in err and len(err.splitlines()) == 1


def test_pickle_checkpoint_model_is_refused(tmp_path, capsys):
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04")
    code = main(["merge", "--model", str(tmp_path / "model.ckpt"), "--resadapter", "tiny-sd15", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "pickle checkpoints can run arbitrary code and are not loaded; use the .safetensors release" in capsys.readouterr().err


def test_force_replaces_only_what_resadapter_rt_created(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = ["merge", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--out", str(out)]
    for extra in ([], ["--force"]):
        assert main(args + extra) == 2
        assert capsys.readouterr().err == (f"error: {out}: directory is not empty and was not created by resadapter-rt, "
                                           "so it is left alone; choose another --out (or empty it yourself)\n")
        assert (out / "keep.txt").read_text() == "user data"
    (out / "keep.txt").unlink()
    assert main(args) == 0  # empty: written
    assert main(args) == 2
    assert f"error: {out}: directory is not empty; pass --force to replace it or choose another --out" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0  # ours: replaced


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(UNet2DConditionModel, "save_pretrained", boom)
    out = tmp_path / "out"
    assert main(["merge", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--out", str(out)]) == 130
    assert list(tmp_path.iterdir()) == []


def test_single_file_checkpoints_errors(tmp_path, capsys):
    from safetensors.torch import save_file

    bare = tmp_path / "unet_only.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(bare))
    assert main(["merge", "--model", str(bare), "--resadapter", "tiny-sd15", "--out", str(tmp_path / "o")]) == 2
    assert "this is a bare diffusers UNet state dict; pass the directory that holds it and its config.json" in capsys.readouterr().err
    truncated = tmp_path / "civitai.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    assert main(["merge", "--model", str(truncated), "--resadapter", "tiny-sd15", "--out", str(tmp_path / "o")]) == 2
    assert "not a readable safetensors checkpoint; is it truncated?" in capsys.readouterr().err
    ldm = tmp_path / "ldm.safetensors"  # LDM key layout; offline, diffusers cannot fetch its config
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(ldm))
    assert main(["merge", "--model", str(ldm), "--resadapter", "tiny-sd15", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "could not load this single-file checkpoint" in err and "pass --config with a local diffusers pipeline directory" in err
    assert len(err.strip().splitlines()) == 1
