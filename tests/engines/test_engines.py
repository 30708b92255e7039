"""TensorRT engines up to the TensorRT boundary: configs, cache, lock, atomic writes, manifests, CLI."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from resadapter_rt import ResAdapterRTError
from resadapter_rt.cli import main
from resadapter_rt.engines.build import (BuildOptions, TensorRTEnvironment, build_engines, cache_key, check_engine_manifest,
                                   create_config, export_dims, polygraphy_profiles)
from resadapter_rt.export.exporter import ExportOptions, export_pipeline, read_manifest
from resadapter_rt.engines.ort_tensorrt import tensorrt_provider_options
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.engines.profiles import ResolutionProfile

ENV = TensorRTEnvironment("10.9.0", "12.8", "NVIDIA H100", "9.0")
PROFILES = (ResolutionProfile.parse("256-1024@0.28-3.5,opt=512x512,batch=1-2"), ResolutionProfile.static("1000x600"))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_dir")
    export_pipeline(ExportOptions(model="tiny-sdxl", resadapter="tiny-sdxl", alpha="dynamic", target="tensorrt",
                                  validation_sizes=((384, 264, 1),)), root / "onnx", progress=lambda m: None)
    return root


def fresh_engine_dir(export_dir, tmp_path):
    import shutil

    shutil.copytree(export_dir / "onnx", tmp_path / "onnx")
    return tmp_path


def test_polygraphy_profiles_and_config(export_dir, tmp_path):
    dims = export_dims(read_manifest(export_dir / "onnx"))
    assert dims == {"latent_channels": 4, "cross_attention_dim": 64, "pooled_dim": 32}
    options = BuildOptions(profiles=PROFILES, precision="fp16", optimization_level=4)
    profiles = polygraphy_profiles("unet", options, dims)
    assert len(profiles) == 2
    assert (profiles[0]["sample"].min, profiles[0]["sample"].opt, profiles[0]["sample"].max) == \
        ((1, 4, 32, 32), (2, 4, 64, 64), (4, 4, 128, 128))
    assert (profiles[1]["sample"].min, profiles[1]["sample"].max) == ((1, 4, 75, 125), (2, 4, 75, 125))  # CFG doubles
    assert profiles[0]["text_embeds"].max == (4, 32) and "resadapter_alpha" not in profiles[0]
    config = create_config("unet", options, dims, tmp_path / "timing.cache")
    assert config.fp16 is True and not config.bf16 and config.builder_optimization_level == 4
    assert config.timing_cache_path == str(tmp_path / "timing.cache") and len(config.profiles) == 2
    typed = create_config("unet", BuildOptions(profiles=PROFILES, strongly_typed=True), dims, tmp_path / "t")
    assert not typed.fp16  # strongly typed networks take precision from the ONNX


def test_cache_key_is_stable_and_sensitive():
    options = BuildOptions(profiles=PROFILES)
    key = cache_key("abc", "unet", options, ENV)
    assert key == cache_key("abc", "unet", BuildOptions(profiles=PROFILES), TensorRTEnvironment(**ENV.to_json()))
    variants = [cache_key("abd", "unet", options, ENV), cache_key("abc", "vae_decoder", options, ENV),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES, precision="bf16"), ENV),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES[:1]), ENV),
                cache_key("abc", "unet", options, TensorRTEnvironment("10.8.0", "12.8", "NVIDIA H100", "9.0")),
                cache_key("abc", "unet", options, TensorRTEnvironment("10.9.0", "12.8", "NVIDIA L4", "8.9"))]
    assert len({key, *variants}) == 7


@pytest.fixture
def fake_builder(monkeypatch):
    """Replace only the TensorRT call: everything around it (keys, files, manifest, lock) is real."""
    import resadapter_rt.engines.build as engines

    calls = []

    def build(onnx_path, config, strongly_typed, timing_cache, destination):
        calls.append((onnx_path.parent.name, time.perf_counter()))
        time.sleep(0.05)
        destination.write_bytes(b"engine for " + onnx_path.read_bytes()[:16] + repr(config.profiles).encode())
        calls.append((onnx_path.parent.name + ":done", time.perf_counter()))

    monkeypatch.setattr(engines, "_build_engine", build)
    return calls


def test_build_writes_manifest_then_reuses_and_force_rebuilds(export_dir, tmp_path, fake_builder):
    directory = fresh_engine_dir(export_dir, tmp_path)
    options = BuildOptions(profiles=PROFILES)
    first = build_engines(directory, options, environment=lambda: ENV, progress=lambda m: None)
    assert sorted(first.built) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder"] and not first.reused
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["environment"] == ENV.to_json() and manifest["precision"] == "fp16"
    assert [p["spec"] for p in manifest["profiles"]] == [p.describe() for p in PROFILES]
    assert manifest["components"]["unet"]["onnx_sha256"] == read_manifest(directory / "onnx")["components"]["unet"]["sha256"]
    second = build_engines(directory, options, environment=lambda: ENV, progress=lambda m: None)
    assert not second.built and len(second.reused) == 4
    third = build_engines(directory, BuildOptions(profiles=PROFILES[:1]), environment=lambda: ENV, progress=lambda m: None)
    assert len(third.built) == 4  # a profile change is a new key
    forced = build_engines(directory, BuildOptions(profiles=PROFILES[:1]), force=True, environment=lambda: ENV, progress=lambda m: None)
    assert len(forced.built) == 4


def test_concurrent_builds_into_one_directory_are_serialised(export_dir, tmp_path, fake_builder):
    directory = fresh_engine_dir(export_dir, tmp_path)
    threads = [threading.Thread(target=build_engines, args=(directory, BuildOptions(profiles=PROFILES)),
                                kwargs={"environment": lambda: ENV, "progress": lambda m: None, "force": True}) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    events = [name for name, _ in fake_builder]
    assert len(events) == 16
    # builds never interleave: each component's start is immediately followed by its end
    assert all(events[i + 1] == events[i] + ":done" for i in range(0, 16, 2))
    starts = [name for name in events if not name.endswith(":done")]
    assert starts[:4] == starts[4:]  # one whole build, then the other


def test_interrupted_engine_write_leaves_no_partial_file(export_dir, tmp_path, monkeypatch):
    import polygraphy.backend.trt as pg

    import resadapter_rt.engines.build as engines

    class FakeLoader:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self):
            return object()

    def save_then_die(engine, path):
        with open(path, "wb") as handle:
            handle.write(b"half an engine")
        raise KeyboardInterrupt

    monkeypatch.setattr(pg, "NetworkFromOnnxPath", FakeLoader)
    monkeypatch.setattr(pg, "EngineFromNetwork", FakeLoader)
    monkeypatch.setattr(pg, "save_engine", save_then_die)
    destination = tmp_path / "unet.plan"
    with pytest.raises(KeyboardInterrupt):
        engines._build_engine(tmp_path / "x.onnx", None, False, tmp_path / "t.cache", destination)
    assert list(tmp_path.iterdir()) == []


def test_engine_manifest_mismatches_name_the_problem_and_the_fix(export_dir, tmp_path, fake_builder):
    directory = fresh_engine_dir(export_dir, tmp_path)
    manifest = build_engines(directory, BuildOptions(profiles=PROFILES), environment=lambda: ENV, progress=lambda m: None).manifest
    rebuild = "resadapter-rt build ... --force"
    check_engine_manifest(directory, manifest, ENV, rebuild)  # matches: no error
    with pytest.raises(ResAdapterRTError) as info:
        check_engine_manifest(directory, manifest, TensorRTEnvironment("10.10.0", "12.8", "NVIDIA H100", "9.0"), rebuild)
    assert str(info.value) == f"{directory}: engines were built with TensorRT 10.9.0 but this is TensorRT 10.10.0; rebuild: {rebuild}"
    with pytest.raises(ResAdapterRTError, match=r"built for compute capability 9.0 \(NVIDIA H100\) but this GPU is 8.9 \(NVIDIA L4\); rebuild"):
        check_engine_manifest(directory, manifest, TensorRTEnvironment("10.9.0", "12.8", "NVIDIA L4", "8.9"), rebuild)
    (directory / "engines" / "unet.plan").write_bytes(b"tampered")
    with pytest.raises(ResAdapterRTError, match=r"engine engines/unet.plan is missing or changed since it was built; rebuild"):
        check_engine_manifest(directory, manifest, ENV, rebuild)


def test_ort_tensorrt_provider_options(export_dir, tmp_path):
    dims = export_dims(read_manifest(export_dir / "onnx"))
    options = tensorrt_provider_options("unet", list(PROFILES), dims, tmp_path / "cache")
    assert options["trt_profile_min_shapes"] == (
        "sample:1x4x32x32,timestep:1,encoder_hidden_states:1x77x64,text_embeds:1x32,time_ids:1x6,"
        "sample:1x4x75x125,timestep:1,encoder_hidden_states:1x77x64,text_embeds:1x32,time_ids:1x6")
    assert options["trt_profile_max_shapes"].startswith("sample:4x4x128x128,timestep:4,")
    assert options["trt_engine_cache_enable"] == "True" and options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")


def test_build_without_tensorrt_keeps_export_and_inspect_works(tmp_path, capsys):
    pytest.importorskip("polygraphy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this test is about machines without it")
    except ImportError:
        pass
    out = tmp_path / "engines"
    args = ["build", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--alpha", "0.5", "--out", str(out),
            "--profile", "256-768@0.5-2,opt=512x512", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: TensorRT is not installed here; install TensorRT on a machine with an NVIDIA GPU (pip install tensorrt, "
                   f"from NVIDIA's index) and run the same command again; the validated export is kept in {out / 'onnx'} "
                   f"(see `resadapter-rt inspect {out}`)")
    assert read_manifest(out / "onnx")["alpha"] == 0.5
    assert main(args) == 2  # the second run reuses the export instead of exporting again
    assert main(["inspect", str(out), "--size", "1000x600"]) == 0
    text = capsys.readouterr().out
    assert "engines: none built yet" in text and "requested profiles: 256-768@0.5-2,opt=512x512" in text
    assert "1000x600: NOT covered by the engine profiles" in text
    assert "1000x600: covered by the ONNX export (128-1024 px per side, multiples of 8)" in text


def test_build_bad_flags_fail_before_exporting(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["build", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--precision", "int4", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown precision 'int4'; choose one of fp16, bf16, fp32"
    assert main(["build", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--profile", "big", "--out", str(out)]) == 2
    assert "is not MIN-MAX[@AMIN-AMAX]" in capsys.readouterr().err
    assert not out.exists()


def test_engine_profiles_limit_the_runtime(export_dir):
    pipe = ResAdapterPipeline.from_artifacts(export_dir)  # an engine dir: the export in onnx/ is used
    pipe.profiles = [ResolutionProfile.static("1000x600")]
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a cat", width=512, height=512, num_inference_steps=1)
    assert str(info.value).startswith("512x512 (batch 1) is not covered by the engine profiles "
                                      "(600-1000@1.66667-1.66667,opt=1000x600,batch=1-1,tokens=77-77); build one that covers it")


@pytest.mark.trt
def test_tensorrt_engines_end_to_end_match_torch(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    out = tmp_path / "engines"
    assert main(["build", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--alpha", "dynamic", "--precision", "fp32",
                 "--profile", "256-1024@0.28-3.5,opt=512x512", "--out", str(out), "-q"]) == 0
    trt = ResAdapterPipeline.from_artifacts(out, backend="tensorrt")
    ref = ResAdapterPipeline.from_artifacts(out, backend="torch")
    kwargs = dict(height=600, width=1000, num_inference_steps=3, seed=2, resadapter_alpha=0.7, output_type="latent")
    assert float((trt("a cat", **kwargs).latents - ref("a cat", **kwargs).latents).abs().max()) <= 1e-2


def test_build_reuses_an_export_only_for_the_same_sources_and_lora_weights(tmp_path):
    from safetensors.torch import save_file

    from resadapter_rt import load_components
    from resadapter_rt.cli import _export_matches

    unet = load_components("tiny-sd15", unet_only=True).unet
    name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_v"
    out_f, in_f = unet.get_submodule(name).weight.shape
    lora = tmp_path / "style.safetensors"
    save_file({f"unet.{name}.lora_A.weight": torch.zeros(2, in_f), f"unet.{name}.lora_B.weight": torch.zeros(out_f, 2)}, str(lora))
    options = ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.5, loras=(f"{lora}:0.8",),
                            validation_sizes=((328, 200, 1),))
    export_pipeline(options, tmp_path / "onnx", progress=lambda m: None)
    assert _export_matches(tmp_path / "onnx", options)
    for changed in ({"loras": (f"{lora}:0.3",)}, {"loras": ()}, {"alpha": 0.6}, {"alpha": "dynamic"}, {"resadapter": "tiny-sdxl"}):
        assert not _export_matches(tmp_path / "onnx", ExportOptions(**{**options.__dict__, **changed})), changed
