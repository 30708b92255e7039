"""ONNX export: parity with PyTorch in ONNX Runtime at shapes other than the traced one."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import quiet
from resadapter_rt import ResAdapterRTError, load_adapter, load_components, merge_adapter
from resadapter_rt.cli import main
from resadapter_rt.export.exporter import ExportOptions, export_pipeline, read_manifest
from resadapter_rt.files import onnx_artifact_sha256

SMALL_SIZES = ((328, 200, 2), (280, 1000, 1), (1008, 288, 1))  # non-multiple of 64, aspect 0.28 and 3.5


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for key, family, alpha in (("sd15_baked", "sd15", 0.7), ("sd15_dynamic", "sd15", "dynamic"), ("sdxl_dynamic", "sdxl", "dynamic"),
                               ("sdxl_baked", "sdxl", 0.7)):
        options = ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}", alpha=alpha, validation_sizes=SMALL_SIZES)
        export_pipeline(options, root / key, progress=quiet)
        made[key] = root / key
    return made


def session(directory: Path, component: str = "unet") -> ort.InferenceSession:
    return ort.InferenceSession(str(directory / component / "model.onnx"), providers=["CPUExecutionProvider"])


def unet_feed(unet, batch, height, width, seed=3, tokens=77):
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    feed = {"sample": torch.randn(batch, 4, height, width, generator=g), "timestep": torch.full((batch,), 421.5),
            "encoder_hidden_states": torch.randn(batch, tokens, cfg.cross_attention_dim, generator=g)}
    added = None
    if cfg.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(batch, 32, generator=g),
                 "time_ids": torch.tensor([[height * 8.0, width * 8.0, 0, 0, height * 8.0, width * 8.0]] * batch)}
        feed |= added
    return feed, added


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("width,height,batch", [(1000, 600, 1), (328, 200, 3), (512, 384, 2)])
def test_baked_unet_matches_merged_pytorch_off_trace(exports, family, width, height, batch):
    unet = merge_adapter(load_components(f"tiny-{family}", unet_only=True).unet, load_adapter(f"tiny-{family}"), 0.7).eval()
    feed, added = unet_feed(unet, batch, height // 8, width // 8)
    with torch.no_grad():
        expected = unet(feed["sample"], feed["timestep"], feed["encoder_hidden_states"], added_cond_kwargs=added).sample
    got = session(exports[f"{family}_baked"]).run(None, {k: v.numpy() for k, v in feed.items()})[0]
    assert got.shape == (batch, 4, height // 8, width // 8)
    assert np.abs(got - expected.numpy()).max() / np.abs(expected.numpy()).max() < 1e-5


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_dynamic_alpha_equals_baked_export_at_same_alpha(exports, family):
    dynamic, baked = session(exports[f"{family}_dynamic"]), session(exports[f"{family}_baked"])
    unet = load_components(f"tiny-{family}", unet_only=True).unet
    for height, width in ((75, 125), (41, 25)):
        feed, _ = unet_feed(unet, 2, height, width, tokens=154)
        feed = {k: v.numpy() for k, v in feed.items()}
        reference = baked.run(None, feed)[0]
        at_07 = dynamic.run(None, feed | {"resadapter_alpha": np.array(0.7, dtype=np.float32)})[0]
        at_02 = dynamic.run(None, feed | {"resadapter_alpha": np.array(0.2, dtype=np.float32)})[0]
        assert np.abs(at_07 - reference).max() / np.abs(reference).max() < 1e-5
        assert np.abs(at_02 - reference).max() / np.abs(reference).max() > 1e-3  # alpha really acts


def test_text_encoder_and_vae_decoder_match_pytorch(exports):
    parts = load_components("tiny-sdxl")
    ids = parts.tokenizer(["a cat", "two dogs on a sofa"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        out = parts.text_encoder_2(ids, output_hidden_states=True)
        latents = torch.randn(2, 4, 25, 41, generator=torch.Generator().manual_seed(1))
        image = parts.vae.decode(latents).sample
    encoder = session(exports["sdxl_dynamic"], "text_encoder_2")
    names = [o.name for o in encoder.get_outputs()]
    layers = parts.text_encoder_2.config.num_hidden_layers
    assert names == ["text_embeds", "last_hidden_state", *(f"hidden_states.{i}" for i in range(layers + 1))]  # optimum's
    assert encoder.get_inputs()[0].type == "tensor(int32)"
    outputs = dict(zip(names, encoder.run(None, {"input_ids": ids.numpy().astype(np.int32)})))
    np.testing.assert_allclose(outputs[f"hidden_states.{layers - 1}"], out.hidden_states[-2].numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["text_embeds"], out.text_embeds.numpy(), atol=1e-4)
    decoded = session(exports["sdxl_dynamic"], "vae_decoder").run(None, {"latent_sample": latents.numpy()})[0]
    assert decoded.shape == (2, 3, 200, 328)
    np.testing.assert_allclose(decoded, image.numpy(), atol=1e-4)


def test_manifest_records_io_hashes_groupnorm_and_validation(exports):
    manifest = read_manifest(exports["sdxl_dynamic"])
    assert manifest["family"] == "sdxl" and manifest["alpha_mode"] == "dynamic" and manifest["alpha"] is None
    assert set(manifest["components"]) == {"unet", "text_encoder", "text_encoder_2", "vae_decoder"}
    unet = manifest["components"]["unet"]
    inputs = {i["name"]: i["shape"] for i in unet["inputs"]}
    assert inputs == {"sample": ["batch", 4, "latent_height", "latent_width"], "timestep": ["batch"],
                      "encoder_hidden_states": ["batch", "tokens", 64], "text_embeds": ["batch", 32],
                      "time_ids": ["batch", 6], "resadapter_alpha": []}
    assert unet["outputs"][0]["name"] == "out_sample"
    assert unet["sha256"] == onnx_artifact_sha256(exports["sdxl_dynamic"] / "unet" / "model.onnx")  # graph + weights
    assert unet["group_norm"]["after"]["InstanceNormalization"] > 0 and unet["group_norm"]["after"]["GroupNormalization"] == 0
    assert len(unet["validation"]) == len(SMALL_SIZES) + 1  # first size at two alphas
    assert all(r["relative_error"] < 1e-4 for c in manifest["components"].values() for r in c["validation"])
    assert {(r["width"], r["height"]) for r in unet["validation"]} == {(w, h) for w, h, _ in SMALL_SIZES}
    assert set(manifest["sources"]["resadapter"]["files"]) == {"pytorch_lora_weights.safetensors", "diffusion_pytorch_model.safetensors"}
    for name in ("tokenizer", "tokenizer_2", "scheduler"):
        assert (exports["sdxl_dynamic"] / name).is_dir()


def test_graph_without_skip_sized_upsampling_breaks_on_odd_sizes(tmp_path, monkeypatch):
    """The pitfall the exporter guards against: traced at a multiple of 64, plain 2x upsampling is baked in."""
    import resadapter_rt.export.exporter as exporter

    monkeypatch.setattr(exporter, "upsample_sizes_from_skips", lambda unet: contextlib.nullcontext())
    options = ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", validation_sizes=((1000, 600, 1),))
    with pytest.raises(ResAdapterRTError, match=r"^unet: ONNX Runtime failed at \{'width': 1000, 'height': 600, 'batch': 1, 'tokens': 154\}"):
        export_pipeline(options, tmp_path / "out", progress=quiet)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch):
    import resadapter_rt.export.exporter as exporter

    calls = []

    def interrupt(*args):
        calls.append(args)
        if len(calls) == 2:  # after the UNet was written and validated
            raise KeyboardInterrupt
        return [{"relative_error": 0.0}]

    monkeypatch.setattr(exporter, "_validate", interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15"), out, progress=quiet)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,message", [
    (["--target", "coreml"], "error: unknown target 'coreml'; choose one of cpu, tensorrt, cuda"),
    (["--alpha", "3"], "error: alpha '3' is out of range; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)"),
    (["--alpha", "auto"], "error: alpha 'auto' is not a number; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)"),
])
def test_export_bad_options(tmp_path, capsys, extra, message):
    code = main(["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--out", str(tmp_path / "o"), *extra])
    assert code == 2 and capsys.readouterr().err.strip() == message


def test_export_refuses_non_empty_and_unwritable_output(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "model.onnx").write_text("previous")
    args = ["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "-q"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'full'}: directory is not empty and was not created by resadapter-rt, so it is left alone; "
        "choose another --out (or empty it yourself)")
    (tmp_path / "full" / ".resadapter-rt").write_text("{}")  # one of ours: replaced only with --force
    assert main(args + ["--out", str(tmp_path / "full")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path / 'full'}: directory is not empty; pass --force to replace it or choose another --out")
    (tmp_path / "afile").write_text("x")
    assert main(args + ["--out", str(tmp_path / "afile" / "sub")]) == 2
    assert "cannot write here" in capsys.readouterr().err


def test_read_manifest_refuses_other_versions(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "resadapter-rt/export", "format_version": 99}))
    with pytest.raises(ResAdapterRTError, match=r"export format 'resadapter-rt/export' v99 is not resadapter-rt/export v2; re-export"):
        read_manifest(tmp_path)


def test_unet_only_export(tmp_path):
    unet_dir = tmp_path / "unet"
    load_components("tiny-sd15", unet_only=True).unet.save_pretrained(unet_dir)
    manifest = export_pipeline(ExportOptions(model=str(unet_dir), resadapter="tiny-sd15", validation_sizes=((328, 200, 1),)),
                               tmp_path / "out", progress=quiet)
    assert set(manifest["components"]) == {"unet"}
    assert onnx.load(str(tmp_path / "out" / "unet" / "model.onnx")).graph.output[0].name == "out_sample"


def test_fp16_export_with_dynamic_alpha_validates_at_two_alphas(tmp_path):
    """The half-precision copy carries its own alpha binding (a deep copy of the dynamic-alpha UNet)."""
    manifest = export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", dtype="fp16",
                                             validation_sizes=((328, 200, 1),)), tmp_path / "fp16", progress=quiet)
    unet = manifest["components"]["unet"]
    assert unet["dtype"] == "fp16" and "resadapter_alpha" in [i["name"] for i in unet["inputs"]]
    alphas = {case["alpha"] for case in unet["validation"] if "alpha" in case}
    assert len(alphas) >= 2 and all(r["relative_error"] < 2e-2 for r in unet["validation"])


def test_fp16_export_keeps_groupnorm_fp32_and_matches_fp32_pytorch(tmp_path):
    manifest = export_pipeline(ExportOptions(model="tiny-sdxl", resadapter="tiny-sdxl", alpha=0.5, dtype="fp16",
                                             validation_sizes=((1000, 600, 1),)), tmp_path / "fp16", progress=quiet)
    unet = manifest["components"]["unet"]
    assert manifest["dtype"] == "fp16" and unet["dtype"] == "fp16" and unet["io_dtype"] == "fp32"
    assert manifest["components"]["vae_decoder"]["dtype"] == "fp32"  # SDXL VAE overflows in fp16
    assert manifest["components"]["text_encoder_2"]["dtype"] == "fp32"
    graph = onnx.load(str(tmp_path / "fp16" / "unet" / "model.onnx")).graph
    weights = {t.name: t.data_type for t in graph.initializer}
    conv_weights = [weights[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in weights]
    assert conv_weights and set(conv_weights) == {onnx.TensorProto.FLOAT16}
    norm_inputs = [weights.get(n.input[1]) for n in graph.node if n.op_type == "InstanceNormalization"]
    assert norm_inputs and set(norm_inputs) <= {onnx.TensorProto.FLOAT, None}  # statistics in fp32
    errors = [r["relative_error"] for r in unet["validation"]]
    assert all(1e-6 < e < 2e-2 for e in errors), errors  # really fp16, and still close to fp32 PyTorch


def test_unknown_dtype(tmp_path, capsys):
    assert main(["export", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--dtype", "int8", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown dtype 'int8'; choose fp32 or fp16"
