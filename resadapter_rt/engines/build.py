"""TensorRT engines from a validated export: ``build_engines``, the engine manifest, cache and checks.

TensorRT is reached only through polygraphy's documented loaders (``NetworkFromOnnxPath``,
``CreateConfig``, ``EngineFromNetwork``), imported lazily; everything up to that boundary
(profiles, config arguments, cache keys, locking, manifests, mismatch messages) is plain Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ResAdapterRTError
from ..export.exporter import read_manifest
from .profiles import ResolutionProfile

ENGINE_FORMAT = "resadapter-rt/engines"
ENGINE_FORMAT_VERSION = 1
PRECISIONS = ("fp16", "bf16", "fp32")
INSTALL_HINT = ("install TensorRT on a machine with an NVIDIA GPU (pip install tensorrt, from NVIDIA's index) "
                "and run the same command again")


@dataclass(frozen=True)
class BuildOptions:
    """Builder flags that change the engine (and so the cache key)."""

    profiles: tuple[ResolutionProfile, ...]
    precision: str = "fp16"
    optimization_level: int = 3
    refittable: bool = False
    strongly_typed: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ResAdapterRTError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not 0 <= self.optimization_level <= 5:
            raise ResAdapterRTError(f"builder optimization level {self.optimization_level} is outside 0-5")
        if not self.profiles:
            raise ResAdapterRTError("no resolution profile given; pass --profile SPEC or --static WxH")

    def key_material(self) -> dict:
        return {"profiles": [p.describe() for p in self.profiles], "precision": self.precision,
                "optimization_level": self.optimization_level, "refittable": self.refittable,
                "strongly_typed": self.strongly_typed}


@dataclass
class TensorRTEnvironment:
    """What an engine is tied to: it deserializes only under the same TensorRT and GPU generation."""

    tensorrt_version: str
    cuda_version: str | None
    gpu_name: str
    compute_capability: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def tensorrt_environment() -> TensorRTEnvironment:
    """The local TensorRT/GPU facts, or a one-line error saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise ResAdapterRTError(f"TensorRT is not installed here; {INSTALL_HINT}") from None
    import torch

    if not torch.cuda.is_available():
        raise ResAdapterRTError("TensorRT needs an NVIDIA GPU and none is visible (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability()
    return TensorRTEnvironment(tensorrt.__version__, torch.version.cuda, torch.cuda.get_device_name(), f"{major}.{minor}")


def export_dims(export_manifest: dict) -> dict:
    """Channel sizes the profile shapes need, read from the export's UNet inputs."""
    inputs = {i["name"]: i["shape"] for i in export_manifest["components"]["unet"]["inputs"]}
    return {"latent_channels": inputs["sample"][1], "cross_attention_dim": inputs["encoder_hidden_states"][2],
            "pooled_dim": inputs["text_embeds"][1] if "text_embeds" in inputs else None}


def polygraphy_profiles(component: str, options: BuildOptions, dims: dict) -> list:
    """One polygraphy ``Profile`` per resolution profile (several buckets in one engine)."""
    from polygraphy.backend.trt import Profile

    profiles = []
    for profile in options.profiles:
        trt_profile = Profile()
        for name, (low, opt, high) in profile.component_shapes(component, dims).items():
            trt_profile.add(name, low, opt, high)
        profiles.append(trt_profile)
    return profiles


def create_config(component: str, options: BuildOptions, dims: dict, timing_cache: Path):
    """The polygraphy ``CreateConfig`` for a component (constructible without TensorRT)."""
    from polygraphy.backend.trt import CreateConfig

    precision = {} if options.strongly_typed else {"fp16": options.precision == "fp16", "bf16": options.precision == "bf16"}
    return CreateConfig(profiles=polygraphy_profiles(component, options, dims), builder_optimization_level=options.optimization_level,
                        refittable=options.refittable, load_timing_cache=str(timing_cache), **precision)


def cache_key(onnx_sha256: str, component: str, options: BuildOptions, environment: TensorRTEnvironment) -> str:
    """Stable across runs and dict orderings; changes with any input that changes the engine."""
    material = {"onnx_sha256": onnx_sha256, "component": component, **options.key_material(),
                "tensorrt": environment.tensorrt_version, "compute_capability": environment.compute_capability}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def _build_engine(onnx_path: Path, config, strongly_typed: bool, timing_cache: Path, destination: Path) -> None:
    """Build with polygraphy and write atomically (temp file + rename)."""
    from polygraphy.backend.trt import EngineFromNetwork, NetworkFromOnnxPath, save_engine

    network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=strongly_typed or None)
    engine = EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache))()
    handle, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    os.close(handle)
    try:
        save_engine(engine, path=tmp)
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class EngineBuild:
    """Result of ``build_engines``: the manifest and which components were built or reused."""

    manifest: dict
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def build_engines(directory: Path, options: BuildOptions, force: bool = False,
                  environment: Callable[[], TensorRTEnvironment] = tensorrt_environment, progress=print) -> EngineBuild:
    """Engines for every component of ``directory/onnx`` (a validated export) into ``directory/engines``.

    Builds into the same directory are serialised by a lock; existing engines whose cache key matches
    are reused unless ``force``; the manifest is rewritten atomically at the end.
    """
    from filelock import FileLock
    from ..files import sha256_file

    directory = Path(directory)
    export_manifest = read_manifest(directory / "onnx")
    env = environment()
    dims = export_dims(export_manifest)
    engines_dir = directory / "engines"
    engines_dir.mkdir(parents=True, exist_ok=True)
    result = EngineBuild(manifest={})
    with FileLock(str(directory / ".build.lock")):
        previous = _read_engine_manifest_or_empty(directory)
        components = {}
        for name, spec in export_manifest["components"].items():
            key = cache_key(spec["sha256"], name, options, env)
            engine_path = engines_dir / f"{name}.plan"
            old = previous.get("components", {}).get(name, {})
            if not force and old.get("cache_key") == key and engine_path.is_file() and sha256_file(engine_path) == old.get("sha256"):
                progress(f"[build] {name}: cached engine is current (key {key[:12]})")
                result.reused.append(name)
            else:
                progress(f"[build] {name}: building TensorRT engine ({options.precision}, {len(options.profiles)} profile(s)) ...")
                config = create_config(name, options, dims, directory / "timing.cache")
                _build_engine(directory / "onnx" / spec["path"], config, options.strongly_typed, directory / "timing.cache", engine_path)
                result.built.append(name)
            components[name] = {"engine": f"engines/{name}.plan", "sha256": sha256_file(engine_path), "cache_key": key,
                                "onnx": f"onnx/{spec['path']}", "onnx_sha256": spec["sha256"],
                                "inputs": spec["inputs"], "outputs": spec["outputs"]}
        manifest = {
            "format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "family": export_manifest["family"],
            "alpha_mode": export_manifest["alpha_mode"], "alpha": export_manifest["alpha"],
            "sources": export_manifest["sources"], "precision": options.precision, "build_options": options.key_material(),
            "profiles": [p.to_json() for p in options.profiles], "environment": env.to_json(), "components": components,
        }
        _write_json_atomically(directory / "manifest.json", manifest)
    result.manifest = manifest
    return result


def _read_engine_manifest_or_empty(directory: Path) -> dict:
    try:
        return json.loads((directory / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_json_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def check_engine_manifest(directory: Path, manifest: dict, env: TensorRTEnvironment, rebuild_command: str) -> None:
    """Refuse engines built for another TensorRT/GPU, or whose files changed, with one line."""
    from ..files import sha256_file

    if manifest.get("format") != ENGINE_FORMAT or manifest.get("format_version") != ENGINE_FORMAT_VERSION:
        raise ResAdapterRTError(f"{directory}: not a resadapter-rt engine directory of format v{ENGINE_FORMAT_VERSION}; rebuild: {rebuild_command}")
    built = manifest["environment"]
    if built["tensorrt_version"] != env.tensorrt_version:
        raise ResAdapterRTError(f"{directory}: engines were built with TensorRT {built['tensorrt_version']} but this is "
                                f"TensorRT {env.tensorrt_version}; rebuild: {rebuild_command}")
    if built["compute_capability"] != env.compute_capability:
        raise ResAdapterRTError(f"{directory}: engines were built for compute capability {built['compute_capability']} "
                                f"({built['gpu_name']}) but this GPU is {env.compute_capability} ({env.gpu_name}); rebuild: {rebuild_command}")
    for component in manifest["components"].values():
        path = directory / component["engine"]
        if not path.is_file() or sha256_file(path) != component["sha256"]:
            raise ResAdapterRTError(f"{directory}: engine {component['engine']} is missing or changed since it was built; rebuild: {rebuild_command}")

