"""Real TensorRT-RTX engines, built here without a GPU (ahead of time), from tiny SD1.5 and SDXL exports.

Small profiles keep each build to seconds; the exports are shared per module.
"""

from __future__ import annotations

import os

import pytest

from engine_fixtures import fresh_engine_dir, shared_sdxl_export
from resadapter_rt.cli import main
from resadapter_rt.engines.build import BuildOptions, build_engines
from resadapter_rt.engines.manifest import check_engine_files, check_export_matches, read_engine_manifest
from resadapter_rt.engines.profiles import ResolutionProfile
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.files import onnx_artifact_sha256, sha256_file

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[tensorrt-rtx]')")

SD15_PROFILES = (ResolutionProfile.parse("256-512"), ResolutionProfile.parse("200-704"))  # two profiles, one odd-size


@pytest.fixture(scope="module")
def export_dir():
    return shared_sdxl_export()


@pytest.fixture(scope="module")
def sd15_engines(tmp_path_factory):
    """Tiny SD1.5, fp16 export, baked alpha; one engine per component with two profiles, for compute capability 8.6."""
    directory = tmp_path_factory.mktemp("sd15_rtx")
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.7, dtype="fp16", target="tensorrt",
                                  validation_sizes=((328, 200, 1),)), directory / "onnx", progress=lambda m: None)
    result = build_engines(directory, BuildOptions(profiles=SD15_PROFILES, compute_capabilities=("8.6",)), progress=lambda m: None)
    return directory, result


def test_sd15_fp16_baked_alpha_engines_with_two_profiles(sd15_engines):
    directory, result = sd15_engines
    assert sorted(result.built) == ["text_encoder", "unet", "vae_decoder"] and not result.reused
    manifest = read_engine_manifest(directory)
    assert manifest["runtime"]["family"] == "tensorrt-rtx" and manifest["runtime"]["version"] == __import__("tensorrt_rtx").__version__
    assert manifest["compute_capabilities"] == ["8.6"] and manifest["gpu_name"] is None
    assert manifest["alpha_mode"] == "baked" and manifest["alpha"] == 0.7 and manifest["export_dtype"] == "fp16"
    assert [p["spec"] for p in manifest["profiles"]] == [p.describe() for p in SD15_PROFILES]
    assert manifest["build_options"]["strongly_typed"] is True and manifest["build_seconds"] > 0
    for name, component in manifest["components"].items():
        engine = directory / component["engine"]
        assert component["size_bytes"] == engine.stat().st_size > 100_000, name
        assert component["sha256"] == sha256_file(engine)
        assert component["precision"] == ("fp32" if name == "text_encoder" else "fp16")  # SD1.5's VAE decoder is fp16 too
        assert component["onnx_sha256"] == onnx_artifact_sha256(directory / component["onnx"]) and component["build_seconds"] > 0
    check_engine_files(directory, manifest, "rebuild")
    check_export_matches(directory, manifest, "rebuild")
    assert not list(directory.rglob("*.tmp")) and not list(directory.rglob(".*.json"))  # nothing half-written left


def test_second_build_is_a_cache_hit(sd15_engines):
    directory, _ = sd15_engines
    before = {p: p.stat().st_mtime_ns for p in (directory / "engines").iterdir()}
    again = build_engines(directory, BuildOptions(profiles=SD15_PROFILES, compute_capabilities=("8.6",)), progress=lambda m: None)
    assert not again.built and sorted(again.reused) == ["text_encoder", "unet", "vae_decoder"]
    assert {p: p.stat().st_mtime_ns for p in (directory / "engines").iterdir()} == before


def test_polygraphy_in_this_process_still_targets_data_center_tensorrt(sd15_engines):
    """The RTX builds ran in child processes: this process's polygraphy is untouched and builds TensorRT configs."""
    from polygraphy import config
    from polygraphy.backend.trt import CreateConfig

    assert config.USE_TENSORRT_RTX is False and os.environ.get("POLYGRAPHY_USE_TENSORRT_RTX", "0") == "0"
    assert CreateConfig(fp16=True).fp16 is True  # refused under TensorRT-RTX ("Precision flags ... not supported")


@pytest.fixture(scope="module")
def sdxl_cli_build(export_dir, tmp_path_factory):
    """Tiny SDXL, fp32, dynamic alpha, through the command line; the shared export stands in DIR/onnx and is reused."""
    out = fresh_engine_dir(export_dir, tmp_path_factory.mktemp("sdxl_rtx") / "engines")
    args = ["build", "--model", "tiny-sdxl", "--resadapter", "tiny-sdxl", "--alpha", "dynamic", "--runtime", "tensorrt-rtx",
            "--profile", "256-384", "--compute-capability", "8.9", "--out", str(out)]
    return out, args


def test_sdxl_fp32_dynamic_build_via_cli_then_cache_hit_then_rebuild_for_new_compute_capability(sdxl_cli_build, capsys):
    out, args = sdxl_cli_build
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"tensorrt-rtx engines in {out}: built unet, text_encoder, text_encoder_2, vae_decoder; reused none"
    assert f"[build] reusing the validated export in {out / 'onnx'}" in captured.err
    manifest = read_engine_manifest(out)
    assert {c["precision"] for c in manifest["components"].values()} == {"fp32"}
    assert manifest["alpha_mode"] == "dynamic" and manifest["compute_capabilities"] == ["8.9"]
    assert main(args + ["-q"]) == 0
    assert capsys.readouterr().out.strip().endswith("built none; reused unet, text_encoder, text_encoder_2, vae_decoder")
    assert main(args[:-4] + ["--compute-capability", "8.6,12.0", "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip().endswith("built unet, text_encoder, text_encoder_2, vae_decoder; reused none")
    manifest = read_engine_manifest(out)
    assert manifest["compute_capabilities"] == ["8.6", "12.0"] and manifest["components"]["unet"]["size_bytes"] > 0
    assert main(["inspect", str(out), "--size", "384x256"]) == 0
    text = capsys.readouterr().out
    assert f"engines: tensorrt-rtx {manifest['runtime']['version']}, compute capability 8.6, 12.0 (ahead of time, no GPU)" in text
    assert "  unet: engines/unet.plan, fp32, " in text and "profiles: 256-384@0.666667-1.5,opt=312x312" in text
    assert "384x256: covered by the engine profiles" in text


def test_user_file_in_kept_export_survives_a_rebuild_request(sdxl_cli_build, capsys):
    """build may replace its own stale export, never one holding a file it did not write."""
    out, args = sdxl_cli_build
    if not (out / "onnx").is_dir():
        pytest.skip("needs the SDXL build above")
    notes = out / "onnx" / "notes.txt"
    notes.write_text("mine")
    changed = [a if a != "dynamic" else "0.7" for a in args]  # another alpha: the export is stale
    assert main(changed) == 2
    assert capsys.readouterr().err.strip() == (f"error: {out / 'onnx'}: holds 'notes.txt', which the export did not write; move "
                                               "it away or choose another --out (build never replaces what it did not create)")
    assert notes.read_text() == "mine"
    notes.unlink()


def test_a_graph_tensorrt_rtx_cannot_build_is_one_line_and_leaves_no_file(tmp_path):
    """The real worker on a valid ONNX with an op TensorRT-RTX does not know: one line naming the component."""
    import onnx

    from resadapter_rt import ResAdapterRTError
    from resadapter_rt.engines.build import run_worker

    node = onnx.helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("com.example", 1)])
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    job = {"runtime": "tensorrt-rtx", "onnx": str(tmp_path / "model.onnx"), "profiles": [], "compute_capabilities": [[8, 6]],
           "optimization_level": 3, "precision": "fp32", "strongly_typed": True, "refittable": False, "timing_cache": None}
    engines = tmp_path / "engines"
    engines.mkdir()
    with pytest.raises(ResAdapterRTError) as info:
        run_worker(job, engines / "text_encoder.plan")
    message = str(info.value)
    assert message.startswith("text_encoder: the tensorrt-rtx build failed: ") and "\n" not in message
    assert list(engines.iterdir()) == []


@pytest.mark.slow  # an export plus three engine builds: 3.5 min on 2 shared cores
def test_sd15_with_a_controlnet_builds_with_control_images_in_pixel_ranges(tmp_path):
    """The ControlNet is inside the UNet graph; its control image gets the latent box x 8 as its profile."""
    import json

    from controlnet_fixtures import shared_controlnets
    from resadapter_rt.engines.build import export_dims, worker_job

    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.7, dtype="fp16", target="tensorrt",
                                  controlnets=(str(shared_controlnets()[0]),), validation_sizes=((264, 392, 1),)),
                    tmp_path / "onnx", progress=lambda m: None)
    options = BuildOptions(profiles=(ResolutionProfile.parse("200-512"),), compute_capabilities=("8.6",))
    result = build_engines(tmp_path, options, progress=lambda m: None)
    assert sorted(result.built) == ["text_encoder", "unet", "vae_decoder"]
    assert read_engine_manifest(tmp_path)["components"]["unet"]["size_bytes"] > 100_000
    dims = export_dims(json.loads((tmp_path / "onnx" / "manifest.json").read_text()))
    (profile,) = worker_job("unet", tmp_path / "onnx" / "unet" / "model.onnx", options, dims, "fp16", tmp_path / "t")["profiles"]
    for (n, batch, channels, height, width), (batch2, _, latent_h, latent_w) in zip(profile["controlnet_cond"], profile["sample"]):
        assert (n, batch, channels, height, width) == (1, batch2, 3, 8 * latent_h, 8 * latent_w)
    assert profile["controlnet_cond"][0] == [1, 1, 3, 200, 200] and profile["controlnet_cond"][2] == [1, 2, 3, 512, 512]


@pytest.mark.slow  # a fresh export and four engines: minutes on 2 shared cores
def test_sd15_with_an_ip_adapter_builds_its_image_encoder_and_image_embeds_profiles(tmp_path):
    """The IP-Adapter is inside the UNet graph (image_embeds per sample, a static scale); the image encoder is its own engine."""
    import json

    from ip_adapter_fixtures import shared_ip_adapters
    from resadapter_rt.engines.build import export_dims, worker_job
    from resadapter_rt.models.families import SD15

    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.7, dtype="fp16", target="tensorrt",
                                  ip_adapter=str(shared_ip_adapters(SD15)["full-face"]), validation_sizes=((264, 392, 1),)),
                    tmp_path / "onnx", progress=lambda m: None)
    options = BuildOptions(profiles=(ResolutionProfile.parse("200-512"),), compute_capabilities=("8.6",))
    result = build_engines(tmp_path, options, progress=lambda m: None)
    assert sorted(result.built) == ["image_encoder", "text_encoder", "unet", "vae_decoder"]
    manifest = read_engine_manifest(tmp_path)
    assert manifest["components"]["image_encoder"]["precision"] == "fp32" and manifest["components"]["unet"]["size_bytes"] > 100_000
    dims = export_dims(json.loads((tmp_path / "onnx" / "manifest.json").read_text()))
    (profile,) = worker_job("unet", tmp_path / "onnx" / "unet" / "model.onnx", options, dims, "fp16", tmp_path / "t")["profiles"]
    assert [shape[0] for shape in profile["image_embeds"]] == [shape[0] for shape in profile["sample"]]
    assert profile["image_embeds"][2][1:] == [1, 257, 32]
