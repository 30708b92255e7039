"""One runner interface for every backend; the generation loop sees only this.

A runner maps named CPU/GPU torch tensors to named torch tensors. Backends:
``torch`` (reference; rebuilt from the export's recorded sources), ``onnxruntime`` (CPU provider,
CUDA/TensorRT providers when onnxruntime-gpu is installed), ``tensorrt`` (TensorRT or TensorRT-RTX engines
from ``resadapter-rt build``), ``openvino`` (the export's ONNX files on the CPU, fp32 or bf16; see
``openvino_runners``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ResAdapterRTError

BACKENDS = ("onnxruntime", "torch", "tensorrt", "onnxruntime-tensorrt", "openvino")


class Runner(Protocol):
    """Executes one network."""

    input_names: tuple[str, ...]

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]: ...


class OnnxRuntimeRunner:
    """An ONNX Runtime session; the best available provider first (TensorRT, CUDA, then CPU)."""

    def __init__(self, path: Path, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        preferred = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle intra-op threads otherwise spin after each run and take the cores from the scheduler
        # loop: measured here (tiny SD1.5, 1000x600, 2 cores) host time 1.85 -> 0.86 ms/step, UNet unchanged.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=preferred)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        feed = {name: inputs[name].detach().cpu().numpy() for name in self.input_names}
        outputs = self.session.run(None, feed)
        return {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in zip(self.output_names, outputs)}


class TorchRunner:
    """A PyTorch module behind the same named-tensor interface (the export wrappers' signatures)."""

    def __init__(self, module: torch.nn.Module, input_names: tuple[str, ...], output_names: tuple[str, ...],
                 device: str = "cpu") -> None:
        self.module = module.eval().to(device)
        self.input_names, self.output_names, self.device = input_names, output_names, device

    @torch.inference_mode()
    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.module(*(inputs[name].to(self.device) for name in self.input_names))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return dict(zip(self.output_names, outputs))


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ResAdapterRTError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def tensorrt_runners(directory: Path) -> dict[str, Runner]:
    """Engines of a ``resadapter-rt build`` directory (TensorRT or TensorRT-RTX), after checking they fit this
    GPU and runtime, are intact, and were built from the export in ``directory/onnx``."""
    from ..engines import runtimes
    from ..engines.manifest import check_engine_manifest, read_engine_manifest, rebuild_command
    from ..engines.runtimes import FAMILIES, check_engines_fit_gpu, importable, runtime_version
    from ..engines.tensorrt_runner import TensorRTRunner

    manifest = read_engine_manifest(directory)
    family_name = manifest["runtime"].get("family")
    gpu = runtimes.gpu_info()
    check_engines_fit_gpu(family_name, manifest["compute_capabilities"], gpu, rebuild_command(directory, manifest))
    family = FAMILIES[family_name]
    if not importable(family):
        raise ResAdapterRTError(f"{directory}: these are {family.name} engines and {family.module} is not installed here; {family.install}")
    check_engine_manifest(directory, manifest, gpu, runtime_version(family))
    return {name: TensorRTRunner(directory / spec["engine"], family.name,
                                 runtime_cache=(directory / spec["engine"]).with_suffix(".rtxcache"))
            for name, spec in manifest["components"].items()}


def onnxruntime_tensorrt_runners(directory: Path, manifest: dict, profiles: list, cache_dir: Path) -> dict[str, Runner]:
    """ONNX Runtime's TensorRT execution provider with explicit profiles (needs onnxruntime-gpu)."""
    import onnxruntime as ort

    from ..engines.build import export_dims
    from ..engines.ort_tensorrt import tensorrt_provider_options

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise ResAdapterRTError("backend 'onnxruntime-tensorrt' needs onnxruntime-gpu with TensorRT (pip install onnxruntime-gpu "
                                "plus TensorRT); this onnxruntime offers " + ", ".join(ort.get_available_providers()))
    dims = export_dims(manifest)
    runners: dict[str, Runner] = {}
    for name, spec in manifest["components"].items():
        options = tensorrt_provider_options(name, profiles, dims, cache_dir / name)
        providers = [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]
        runners[name] = OnnxRuntimeRunner(directory / spec["path"], providers=providers)
    return runners


def onnxruntime_runners(directory: Path, manifest: dict) -> dict[str, Runner]:
    """ONNX Runtime sessions for every component; ``cuda``-target exports need the CUDA provider."""
    if manifest.get("target") == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ResAdapterRTError(
                f"{directory}: this export targets CUDA (its fused GroupNorm ops have no CPU kernels) and this machine's "
                "onnxruntime has no CUDA provider; run it where onnxruntime-gpu sees a GPU, or re-export with --target cpu")
    return {name: OnnxRuntimeRunner(directory / spec["path"]) for name, spec in manifest["components"].items()}


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def fused_group_norm_default() -> bool:
    """The fused GroupNorm(+SiLU) switch is on by default where its Triton kernel compiles: CUDA + Triton."""
    from ..kernels import triton_available

    return torch.cuda.is_available() and triton_available()


def torch_runners(manifest: dict, export_dir: Path, fused_group_norm: bool | None = None) -> tuple[dict[str, Runner], int]:
    """Rebuild the merged PyTorch networks from the sources the manifest records (same merge as export).

    The sources must be the recorded ones: local paths as recorded (never the hub), files unchanged.

    With ``fused_group_norm`` (default: on with CUDA and Triton) every GroupNorm -> SiLU pair of the
    UNet and VAE decoder runs as one fused kernel; returns the runners and how many pairs were fused.
    """
    from ..models.adapter import load_adapter
    from ..export.dynamic_alpha import attach_lora_branches
    from ..models.families import SDXL
    from ..models.lora import read_lora_file
    from ..models.merge import merge_adapter, merge_loras
    from ..models.components import load_components
    from ..models.provenance import check_adapter_files, recorded_sources
    from ..export.unet import IPAdapterInputs, unet_export_module
    from ..export.specs import TextEncoderForExport, VaeDecoderForExport
    from ..models.controlnet import load_controlnet, recorded_controlnets

    sources = recorded_sources(manifest["sources"], export_dir)
    components = load_components(sources.model)
    adapter = load_adapter(sources.resadapter)
    check_adapter_files(adapter, manifest["sources"])
    dynamic = manifest["alpha_mode"] == "dynamic"
    unet = merge_adapter(components.unet, adapter, 0.0 if dynamic else manifest["alpha"], inplace=True)
    alpha = attach_lora_branches(unet, adapter) if dynamic else None
    networks = {"unet": unet, **{n: getattr(components, n) for n in ("text_encoder", "text_encoder_2") if getattr(components, n) is not None}}
    merge_loras(networks, [(read_lora_file(path), weight) for path, weight in sources.loras])
    sdxl = components.family is SDXL
    controlnets = [load_controlnet(r).model for r in recorded_controlnets(manifest.get("controlnets") or [], export_dir)]
    ip_inputs, ip_scale, ip_adapter = None, None, None
    if manifest.get("ip_adapter"):
        from ..export.ip_adapter import attach_ip_adapter
        from ..models.ip_adapter import load_ip_adapter, recorded_ip_adapter

        entry = manifest["ip_adapter"]
        ip_adapter = load_ip_adapter(*recorded_ip_adapter(entry, export_dir))
        dynamic_ip = entry["scale_mode"] == "dynamic"
        ip_scale = attach_ip_adapter(unet, ip_adapter, None if dynamic_ip else entry["scale"])
        ip_inputs = IPAdapterInputs(ip_adapter.embed_shape(), dynamic_ip)
    fused = 0
    if fused_group_norm_default() if fused_group_norm is None else fused_group_norm:
        from ..kernels.fuse import fuse_group_norm_silu

        fused = fuse_group_norm_silu(unet) + (fuse_group_norm_silu(components.vae.decoder) if components.vae else 0)
        fused += sum(fuse_group_norm_silu(controlnet) for controlnet in controlnets)
    device = torch_device()
    specs = manifest["components"]
    io = {name: (tuple(i["name"] for i in spec["inputs"]), tuple(o["name"] for o in spec["outputs"])) for name, spec in specs.items()}
    unet_module = unet_export_module(unet, sdxl, alpha, dynamic, controlnets, ip_inputs, ip_scale)[0]  # as the export folds them
    runners: dict[str, Runner] = {"unet": TorchRunner(unet_module, *io["unet"], device=device)}
    for name in ("text_encoder", "text_encoder_2"):
        if name in specs:
            module = TextEncoderForExport(networks[name], all_hidden_states=sdxl, projected=(name == "text_encoder_2"))
            runners[name] = TorchRunner(module, *io[name], device=device)
    if "vae_decoder" in specs:
        runners["vae_decoder"] = TorchRunner(VaeDecoderForExport(components.vae), *io["vae_decoder"], device=device)
    if "vae_encoder" in specs:
        from ..export.vae_encoder import VaeEncoderForExport

        runners["vae_encoder"] = TorchRunner(VaeEncoderForExport(components.vae), *io["vae_encoder"], device=device)
    if ip_adapter is not None:
        from ..export.ip_adapter import IMAGE_ENCODER, ImageEncoderForExport

        runners[IMAGE_ENCODER] = TorchRunner(ImageEncoderForExport(ip_adapter.encoder), *io[IMAGE_ENCODER], device=device)
    return runners, fused
