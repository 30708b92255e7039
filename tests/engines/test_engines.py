"""Engines around the builder: jobs, configs, cache keys (graph + weights), lock, atomic writes, manifests,
runtime checks, export reuse. The builder itself is faked here; test_rtx_builds.py builds for real."""

from __future__ import annotations

import json
import shutil
import threading
import time

import onnx
import pytest
import torch

from engine_fixtures import fresh_engine_dir, shared_sdxl_export
from resadapter_rt import ResAdapterRTError
from resadapter_rt.engines import runtimes
from resadapter_rt.engines.build import BuildOptions, BuildTarget, build_engines, cache_key, export_dims, run_worker, worker_job
from resadapter_rt.engines.manifest import check_engine_manifest, read_engine_manifest
from resadapter_rt.engines.ort_tensorrt import tensorrt_provider_options
from resadapter_rt.engines.prepare import stale_reason
from resadapter_rt.engines.profiles import ResolutionProfile
from resadapter_rt.engines.runtimes import GpuInfo
from resadapter_rt.export.exporter import ExportOptions, export_pipeline, read_manifest
from resadapter_rt.files import onnx_artifact_sha256
from resadapter_rt.pipeline import ResAdapterPipeline

RTX = BuildTarget("tensorrt-rtx", "1.7.1.116", ["8.6", "8.9"])
TRT = BuildTarget("tensorrt", "10.9.0", ["9.0"], "NVIDIA H100", "12.8")
PROFILES = (ResolutionProfile.parse("256-1024@0.28-3.5,opt=512x512,batch=1-2"), ResolutionProfile.static("1000x600"))
COMPONENTS = ["text_encoder", "text_encoder_2", "unet", "vae_decoder"]


@pytest.fixture(scope="module")
def export_dir():
    return shared_sdxl_export()


def test_worker_job_shapes_and_data_center_config(export_dir, tmp_path):
    from resadapter_rt.engines import trt_worker

    dims = export_dims(read_manifest(export_dir / "onnx"))
    assert dims == {"latent_channels": 4, "cross_attention_dim": 64, "pooled_dim": 32}
    options = BuildOptions(profiles=PROFILES, runtime="tensorrt", precision="fp16", optimization_level=4)
    job = worker_job("unet", tmp_path / "m.onnx", options, dims, "fp16", tmp_path / "timing.cache")
    assert len(job["profiles"]) == 2 and "resadapter_alpha" not in job["profiles"][0]
    assert job["profiles"][0]["sample"] == [[1, 4, 32, 32], [2, 4, 64, 64], [4, 4, 128, 128]]
    assert job["profiles"][1]["sample"] == [[1, 4, 75, 125], [2, 4, 75, 125], [2, 4, 75, 125]]  # CFG doubles the batch
    assert job["profiles"][0]["text_embeds"][2] == [4, 32] and job["timing_cache"] == str(tmp_path / "timing.cache")
    config = trt_worker.create_config(json.loads(json.dumps(job)))  # data-center polygraphy config, in this process
    assert config.fp16 is True and not config.bf16 and config.builder_optimization_level == 4 and len(config.profiles) == 2
    assert config.timing_cache_path == str(tmp_path / "timing.cache")
    rtx = worker_job("unet", tmp_path / "m.onnx", BuildOptions(profiles=PROFILES, compute_capabilities=("8.6", "12.0")), dims,
                     "fp32", tmp_path / "t")
    assert rtx["compute_capabilities"] == [[8, 6], [12, 0]] and rtx["timing_cache"] is None and rtx["runtime"] == "tensorrt-rtx"


def test_cache_key_is_stable_and_sensitive():
    options = BuildOptions(profiles=PROFILES)
    key = cache_key("abc", "unet", options, RTX, "fp32")
    assert key == cache_key("abc", "unet", BuildOptions(profiles=PROFILES), BuildTarget(**RTX.to_json()), "fp32")
    variants = [cache_key("abd", "unet", options, RTX, "fp32"), cache_key("abc", "vae_decoder", options, RTX, "fp32"),
                cache_key("abc", "unet", options, RTX, "fp16"),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES[:1]), RTX, "fp32"),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES, compute_capabilities=("8.6",)),
                          BuildTarget("tensorrt-rtx", "1.7.1.116", ["8.6"]), "fp32"),
                cache_key("abc", "unet", options, BuildTarget("tensorrt-rtx", "1.8.0", ["8.6", "8.9"]), "fp32"),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES, runtime="tensorrt"), TRT, "fp32"),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES, runtime="tensorrt", precision="bf16"), TRT, "fp32"),
                cache_key("abc", "unet", BuildOptions(profiles=PROFILES, optimization_level=5), RTX, "fp32")]
    assert len({key, *variants}) == 10


@pytest.fixture
def fake_builder():
    """Replaces only the child process: everything around it (keys, files, manifest, lock) is real."""
    calls = []

    def build(job, destination):
        calls.append((destination.stem, time.perf_counter()))
        time.sleep(0.05)
        with open(job["onnx"], "rb") as graph:
            destination.write_bytes(b"engine for " + graph.read(16) + json.dumps(job["profiles"]).encode())
        calls.append((destination.stem + ":done", time.perf_counter()))

    build.calls = calls
    return build


def build(directory, fake_builder, options=BuildOptions(profiles=PROFILES), target=RTX, **kwargs):
    return build_engines(directory, options, target=lambda options: target, builder=fake_builder, progress=lambda m: None, **kwargs)


def test_build_writes_manifest_then_reuses_and_rebuilds_on_changes(export_dir, tmp_path, fake_builder):
    directory = fresh_engine_dir(export_dir, tmp_path)
    first = build(directory, fake_builder)
    assert sorted(first.built) == COMPONENTS and not first.reused
    manifest = read_engine_manifest(directory)
    assert manifest["runtime"] == {"family": "tensorrt-rtx", "version": "1.7.1.116"} and manifest["compute_capabilities"] == ["8.6", "8.9"]
    assert [p["spec"] for p in manifest["profiles"]] == [p.describe() for p in PROFILES]
    unet = manifest["components"]["unet"]
    assert unet["onnx_sha256"] == onnx_artifact_sha256(directory / "onnx/unet/model.onnx")
    assert unet["size_bytes"] == (directory / "engines/unet.plan").stat().st_size > 0 and unet["precision"] == "fp32"
    assert manifest["build_seconds"] > 0 and manifest["built_at"] == max(c["built_at"] for c in manifest["components"].values())
    second = build(directory, fake_builder)
    assert not second.built and sorted(second.reused) == COMPONENTS
    assert read_engine_manifest(directory)["components"] == manifest["components"]  # a cache hit keeps the build record
    assert len(build(directory, fake_builder, BuildOptions(profiles=PROFILES[:1])).built) == 4  # a profile change is a new key
    assert len(build(directory, fake_builder, BuildOptions(profiles=PROFILES[:1]), BuildTarget("tensorrt-rtx", "1.7.1.116", ["12.0"])).built) == 4
    assert len(build(directory, fake_builder, BuildOptions(profiles=PROFILES[:1]), BuildTarget("tensorrt-rtx", "1.7.1.116", ["12.0"]),
                     force=True).built) == 4
    (directory / "engines/vae_decoder.plan").write_bytes(b"truncated")
    assert build(directory, fake_builder, BuildOptions(profiles=PROFILES[:1]), BuildTarget("tensorrt-rtx", "1.7.1.116", ["12.0"])).built == ["vae_decoder"]


def test_engine_cache_key_covers_external_weights(export_dir, tmp_path, fake_builder):
    """A graph whose weights live in model.onnx.data (every graph over 2 GB) is rebuilt when only the weights change."""
    directory = fresh_engine_dir(export_dir, tmp_path)
    graph = directory / "onnx/unet/model.onnx"
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=1024)
    assert build(directory, fake_builder).built
    data = graph.with_name("model.onnx.data")
    weights = bytearray(data.read_bytes())
    weights[100] ^= 0xFF  # other weights, same graph file, same export manifest
    data.write_bytes(bytes(weights))
    assert build(directory, fake_builder).built == ["unet"]


def test_onnx_artifact_sha256_hashes_graph_and_every_external_file(tmp_path):
    weights = onnx.numpy_helper.from_array(torch.arange(4096, dtype=torch.float32).numpy(), "w")
    node = onnx.helper.make_node("Add", ["x", "w"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4096])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4096])], [weights])
    path = tmp_path / "model.onnx"
    onnx.save_model(onnx.helper.make_model(graph), str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    first = onnx_artifact_sha256(path)
    (tmp_path / "weights.bin").write_bytes((tmp_path / "weights.bin").read_bytes()[::-1])
    assert onnx_artifact_sha256(path) != first
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ResAdapterRTError, match=r"model.onnx: external data file weights.bin is missing; re-export it"):
        onnx_artifact_sha256(path)
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].external_data[0].value = "../outside.bin"
    onnx.save_model(model, str(path))
    with pytest.raises(ResAdapterRTError, match=r"external data location '../outside.bin' leaves"):
        onnx_artifact_sha256(path)


def test_concurrent_builds_into_one_directory_are_serialised(export_dir, tmp_path, fake_builder):
    directory = fresh_engine_dir(export_dir, tmp_path)
    threads = [threading.Thread(target=build, args=(directory, fake_builder), kwargs={"force": True}) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    events = [name for name, _ in fake_builder.calls]
    assert len(events) == 16
    assert all(events[i + 1] == events[i] + ":done" for i in range(0, 16, 2))  # builds never interleave
    starts = [name for name in events if not name.endswith(":done")]
    assert starts[:4] == starts[4:]  # one whole build, then the other


def test_interrupted_or_failed_worker_leaves_no_partial_file(tmp_path, monkeypatch):
    import subprocess

    import resadapter_rt.engines.build as engines

    job = {"runtime": "tensorrt-rtx", "onnx": str(tmp_path / "missing.onnx")}

    def write_then_die(command, **kwargs):
        output = json.loads(open(command[-1]).read())["output"]
        with open(output, "wb") as handle:
            handle.write(b"half an engine")
        raise KeyboardInterrupt

    monkeypatch.setattr(subprocess, "run", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_worker(job, tmp_path / "unet.plan")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 2, "", "[W] noise\nerror: bad graph\n"))
    with pytest.raises(ResAdapterRTError) as info:
        engines.run_worker(job, tmp_path / "unet.plan")
    assert str(info.value) == "unet: the tensorrt-rtx build failed: bad graph"
    assert list(tmp_path.iterdir()) == []


def test_engine_manifest_checks_name_the_problem_and_the_fix(export_dir, tmp_path, fake_builder):
    directory = fresh_engine_dir(export_dir, tmp_path)
    manifest = build(directory, fake_builder).manifest
    rebuild = f"resadapter-rt build --model tiny-sdxl --resadapter tiny-sdxl --out {directory} --force"
    rtx4090 = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
    check_engine_manifest(directory, manifest, rtx4090, "1.7.1.116")  # fits: no error
    check_engine_manifest(directory, manifest, GpuInfo("NVIDIA GeForce RTX 3090", "8.6"), "1.7.1.116")
    cases = [
        (GpuInfo("NVIDIA H100 80GB HBM3", "9.0"), "1.7.1.116",
         "these are TensorRT-RTX engines, but this GPU is NVIDIA H100 80GB HBM3 (compute capability 9.0), which TensorRT-RTX "
         f"does not support; build with --runtime tensorrt on this machine: {rebuild} --runtime tensorrt"),
        (GpuInfo("NVIDIA GeForce RTX 5090", "12.0"), "1.7.1.116",
         "these TensorRT-RTX engines target compute capabilities 8.6, 8.9, but this GPU is NVIDIA GeForce RTX 5090 (compute "
         f"capability 12.0); rebuild: {rebuild} --compute-capability 12.0"),
        (rtx4090, "1.8.0", f"{directory}: engines were built with tensorrt-rtx 1.7.1.116 but this is 1.8.0; rebuild: {rebuild}"),
    ]
    for gpu, version, message in cases:
        with pytest.raises(ResAdapterRTError) as info:
            check_engine_manifest(directory, manifest, gpu, version)
        assert str(info.value) == message
    (directory / "engines" / "unet.plan").write_bytes(b"tampered")
    with pytest.raises(ResAdapterRTError, match=r"engine engines/unet.plan is missing or changed since it was built; rebuild"):
        check_engine_manifest(directory, manifest, rtx4090, "1.7.1.116")


def test_default_rtx_targets_include_later_blackwell_rtx_and_data_center_engines_fit_only_their_gpu():
    from resadapter_rt.engines.runtimes import RTX_DEFAULT_TARGETS, check_engines_fit_gpu

    for capability in ("8.0", "8.6", "8.9", "12.0", "12.1"):
        check_engines_fit_gpu("tensorrt-rtx", list(RTX_DEFAULT_TARGETS), GpuInfo("gpu", capability), "rebuild")
    with pytest.raises(ResAdapterRTError, match=r"target compute capabilities 8.0, 8.6, 8.9, 12.0\+, but this GPU is gpu \(compute capability 7.5\)"):
        check_engines_fit_gpu("tensorrt-rtx", list(RTX_DEFAULT_TARGETS), GpuInfo("gpu", "7.5"), "rebuild")
    check_engines_fit_gpu("tensorrt", ["9.0"], GpuInfo("NVIDIA H100", "9.0"), "rebuild")
    with pytest.raises(ResAdapterRTError, match=r"these TensorRT engines were built for compute capability 9.0, but this GPU is NVIDIA L4"):
        check_engines_fit_gpu("tensorrt", ["9.0"], GpuInfo("NVIDIA L4", "8.9"), "rebuild")


def test_tensorrt_backend_refuses_engines_not_built_from_the_kept_export(export_dir, tmp_path, fake_builder, monkeypatch):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    directory = fresh_engine_dir(export_dir, tmp_path)
    version = runtimes.runtime_version(runtimes.TENSORRT_RTX)
    build(directory, fake_builder, target=BuildTarget("tensorrt-rtx", version, ["8.6", "8.9"]))
    monkeypatch.setattr(runtimes, "gpu_info", lambda: GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))
    graph = directory / "onnx/unet/model.onnx"
    model = onnx.load(str(graph))
    model.doc_string = "re-exported with other settings"
    onnx.save_model(model, str(graph))
    with pytest.raises(ResAdapterRTError) as info:
        ResAdapterPipeline.from_artifacts(directory, backend="tensorrt")
    assert str(info.value) == (f"{directory}: engine unet was not built from onnx/unet/model.onnx (the export changed or is missing "
                               "since the build), so onnx/manifest.json does not describe it; rebuild: resadapter-rt build "
                               f"--model tiny-sdxl --resadapter tiny-sdxl --out {directory} --force")
    monkeypatch.setattr(runtimes, "gpu_info", lambda: GpuInfo("NVIDIA H200", "9.0"))
    with pytest.raises(ResAdapterRTError, match=r"which TensorRT-RTX does not support; build with --runtime tensorrt"):
        ResAdapterPipeline.from_artifacts(directory, backend="tensorrt")


def test_ort_tensorrt_provider_options(export_dir, tmp_path):
    dims = export_dims(read_manifest(export_dir / "onnx"))
    options = tensorrt_provider_options("unet", list(PROFILES), dims, tmp_path / "cache")
    assert options["trt_profile_min_shapes"] == (
        "sample:1x4x32x32,timestep:1,encoder_hidden_states:1x77x64,text_embeds:1x32,time_ids:1x6,"
        "sample:1x4x75x125,timestep:1,encoder_hidden_states:1x77x64,text_embeds:1x32,time_ids:1x6")
    assert options["trt_profile_max_shapes"].startswith("sample:4x4x128x128,timestep:4,")
    assert options["trt_engine_cache_enable"] == "True" and options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")


def test_engine_profiles_limit_the_runtime(export_dir):
    pipe = ResAdapterPipeline.from_artifacts(export_dir)  # an engine dir: the export in onnx/ is used
    pipe.profiles = [ResolutionProfile.static("1000x600")]
    with pytest.raises(ResAdapterRTError) as info:
        pipe("a cat", width=512, height=512, num_inference_steps=1)
    assert str(info.value).startswith("512x512 (batch 1) is not covered by the engine profiles "
                                      "(600-1000@1.66667-1.66667,opt=1000x600,batch=1-1,tokens=77-77); build one that covers it")


def test_export_reuse_follows_the_recorded_source_hashes(tmp_path):
    """Same settings are not enough: an adapter or LoRA file edited under the same path forces a re-export."""
    from safetensors.torch import load_file, save_file

    from resadapter_rt import load_components
    from resadapter_rt.models.tiny import tiny_adapter_dir
    from resadapter_rt.models.families import SD15

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir(SD15), adapter)
    unet = load_components("tiny-sd15", unet_only=True).unet
    name = "mid_block.attentions.0.transformer_blocks.0.attn1.to_v"
    out_f, in_f = unet.get_submodule(name).weight.shape
    lora = tmp_path / "style.safetensors"
    save_file({f"unet.{name}.lora_A.weight": torch.zeros(2, in_f), f"unet.{name}.lora_B.weight": torch.zeros(out_f, 2)}, str(lora))
    options = ExportOptions(model="tiny-sd15", resadapter=str(adapter), alpha=0.5, loras=(f"{lora}:0.8",),
                            validation_sizes=((328, 200, 1),))
    manifest = export_pipeline(options, tmp_path / "onnx", progress=lambda m: None)
    assert stale_reason(manifest, options, tmp_path / "onnx") is None
    from controlnet_fixtures import shared_controlnets

    for changed in ({"loras": (f"{lora}:0.3",)}, {"loras": ()}, {"alpha": 0.6}, {"alpha": "dynamic"}, {"resadapter": "tiny-sdxl"},
                    {"controlnets": (str(shared_controlnets()[0]),)}):
        assert stale_reason(manifest, ExportOptions(**{**options.__dict__, **changed}), tmp_path / "onnx"), changed
    save_file({k: v + 1 for k, v in load_file(str(lora)).items()}, str(lora))
    assert stale_reason(manifest, options, tmp_path / "onnx") == f"LoRA {lora} changed since the export"
    save_file({f"unet.{name}.lora_A.weight": torch.zeros(2, in_f), f"unet.{name}.lora_B.weight": torch.zeros(out_f, 2)}, str(lora))
    assert stale_reason(manifest, options, tmp_path / "onnx") is None
    norms = next(adapter.glob("diffusion_pytorch_model*.safetensors"))
    save_file({k: v * 2 for k, v in load_file(str(norms)).items()}, str(norms))
    assert stale_reason(manifest, options, tmp_path / "onnx") == f"adapter {adapter} changed since the export"
    (tmp_path / "onnx/unet/model.onnx").unlink()
    assert stale_reason(manifest, options, tmp_path / "onnx") == (f"{tmp_path / 'onnx'}: unet/model.onnx is missing, so this "
                                                                  "export is incomplete")


@pytest.mark.parametrize("kwargs,message", [
    ({"runtime": "onnx"}, "unknown runtime 'onnx'; choose one of tensorrt, tensorrt-rtx"),
    ({"runtime": "tensorrt", "compute_capabilities": ("8.6",)}, "--compute-capability picks TensorRT-RTX targets; data-center "
     "TensorRT builds for the GPU it runs on: drop it, or use --runtime tensorrt-rtx"),
    ({"runtime": "tensorrt", "precision": "int4"}, "unknown precision 'int4'; choose one of fp16, bf16, fp32"),
])
def test_build_options_refuse_what_the_runtime_cannot_do(kwargs, message):
    with pytest.raises(ResAdapterRTError) as info:
        BuildOptions(profiles=PROFILES, **kwargs)
    assert str(info.value) == message


def test_runtime_resolution(monkeypatch):
    monkeypatch.setattr(runtimes, "importable", lambda family: family is runtimes.TENSORRT_RTX)
    assert runtimes.resolve_runtime("auto") is runtimes.TENSORRT_RTX
    monkeypatch.setattr(runtimes, "importable", lambda family: True)
    assert runtimes.resolve_runtime("auto") is runtimes.TENSORRT  # data-center TensorRT first when both are there
    monkeypatch.setattr(runtimes, "importable", lambda family: False)
    with pytest.raises(ResAdapterRTError) as info:
        runtimes.resolve_runtime("auto")
    assert str(info.value) == ("neither TensorRT nor TensorRT for RTX is installed here; pip install -e \".[tensorrt-rtx]\" (or pip "
                               "install tensorrt-rtx-cu13==1.7.1.116) to build engines on any machine (RTX/Ampere/Ada/Blackwell-RTX "
                               "GPUs), or pip install tensorrt (from NVIDIA's index) on a machine with an NVIDIA GPU")
    with pytest.raises(ResAdapterRTError, match=r"unknown runtime 'trt'; choose one of auto, tensorrt, tensorrt-rtx"):
        runtimes.resolve_runtime("trt")


def test_tensorrt_rtx_compute_capabilities_match_the_installed_module():
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    installed = sorted(name for name in dir(trt.ComputeCapability) if name.startswith("SM"))
    assert sorted(f"SM{c.replace('.', '')}" for c in runtimes.RTX_COMPUTE_CAPABILITIES) == installed


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("runtime", ["tensorrt", "tensorrt-rtx"])
def test_tensorrt_engines_end_to_end_match_torch(tmp_path, runtime):
    """On a GPU with the runtime installed: build, generate with the engines, compare with the torch backend."""
    from resadapter_rt.cli import main

    if not runtimes.importable(runtimes.FAMILIES[runtime]):
        pytest.skip(f"{runtime} is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    major, minor = torch.cuda.get_device_capability()
    if runtime == "tensorrt-rtx" and f"{major}.{minor}" not in runtimes.RTX_COMPUTE_CAPABILITIES and major < 12:
        pytest.skip(f"TensorRT-RTX does not run on compute capability {major}.{minor}")
    out = tmp_path / "engines"
    assert main(["build", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--alpha", "dynamic", "--runtime", runtime,
                 "--profile", "256-1024@0.28-3.5,opt=512x512", "--out", str(out), "-q"]
                + (["--precision", "fp32"] if runtime == "tensorrt" else [])) == 0
    trt = ResAdapterPipeline.from_artifacts(out, backend="tensorrt")
    ref = ResAdapterPipeline.from_artifacts(out, backend="torch")
    kwargs = dict(height=600, width=1000, num_inference_steps=3, seed=2, resadapter_alpha=0.7, output_type="latent")
    assert float((trt("a cat", **kwargs).latents - ref("a cat", **kwargs).latents).abs().max()) <= 1e-2
    again = trt("a cat", **kwargs)  # the same shape again: CUDA graph replay (TensorRT) / runtime-cached kernels (RTX)
    assert float((again.latents - ref("a cat", **kwargs).latents).abs().max()) <= 1e-2
    if runtime == "tensorrt-rtx":
        assert (out / "engines/unet.rtxcache").stat().st_size > 0
