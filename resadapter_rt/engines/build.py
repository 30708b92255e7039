"""TensorRT / TensorRT-RTX engines from a validated export: ``build_engines``, cache keys, the engine manifest.

Each engine is built by polygraphy in a child process (``trt_worker.py``), written to a temporary
file and renamed into place. A component is rebuilt only when its cache key changed: the sha256 of
its ONNX graph *and* external data, its profiles and builder options, the runtime family and
version, and the target compute capabilities. Builds into one directory are serialised by a lock
(removed when the build ends); the directory carries the ``.resadapter-rt`` marker of everything this tool writes.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import ResAdapterRTError
from ..export.exporter import read_manifest
from ..files import ARTIFACT_MARKER, exclusive_lock, onnx_artifact_sha256, sha256_file
from .manifest import ENGINE_FORMAT, ENGINE_FORMAT_VERSION, read_engine_manifest
from .profiles import ResolutionProfile
from .runtimes import FAMILIES, RTX_DEFAULT_TARGETS, TENSORRT, TENSORRT_RTX, runtime_version

PRECISIONS = ("fp16", "bf16", "fp32")
WORKER = Path(__file__).with_name("trt_worker.py")


@dataclass(frozen=True)
class BuildOptions:
    """What changes an engine (and so its cache key), checked against what the runtime family can do."""

    profiles: tuple[ResolutionProfile, ...]
    runtime: str = TENSORRT_RTX.name
    precision: str | None = None  # TensorRT only (fp16 when None); TensorRT-RTX takes the export's dtype
    optimization_level: int = 3
    refittable: bool = False
    strongly_typed: bool = False
    compute_capabilities: tuple[str, ...] | None = None  # TensorRT-RTX only; None: its default targets
    timing_cache: str | None = None  # TensorRT only; None: DIR/timing.cache

    def __post_init__(self) -> None:
        if self.runtime not in FAMILIES:
            raise ResAdapterRTError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(FAMILIES)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ResAdapterRTError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not 0 <= self.optimization_level <= 5:
            raise ResAdapterRTError(f"builder optimization level {self.optimization_level} is outside 0-5")
        if not self.profiles:
            raise ResAdapterRTError("no resolution profile given; pass --profile SPEC or --static WxH")
        if self.runtime == TENSORRT_RTX.name:
            if self.precision is not None:
                raise ResAdapterRTError("--precision is not available with TensorRT-RTX: its networks are strongly typed and take "
                                        "the export's dtype; use --dtype fp16 (or fp32) instead, or use --runtime tensorrt")
            if self.refittable:
                raise ResAdapterRTError("--refittable is not available for TensorRT-RTX builds (refit needs a GPU); drop it: a changed "
                                        "export is rebuilt automatically (engines are keyed by the ONNX hash), or use --runtime tensorrt")
            if self.timing_cache is not None:
                raise ResAdapterRTError("--timing-cache is not available with TensorRT-RTX: it has no builder timing cache (kernels "
                                        "are compiled at first run and kept in the runtime cache in the engine directory); drop it, "
                                        "or use --runtime tensorrt")
        elif self.compute_capabilities is not None:
            raise ResAdapterRTError("--compute-capability picks TensorRT-RTX targets; data-center TensorRT builds for the GPU it "
                                    "runs on: drop it, or use --runtime tensorrt-rtx")

    def component_precision(self, export_dtype: str) -> str:
        """TensorRT-RTX (strongly typed): the component's ONNX dtype; TensorRT: the precision flag (fp16 default)."""
        if self.runtime == TENSORRT_RTX.name or self.strongly_typed:
            return export_dtype
        return self.precision or "fp16"

    def key_material(self) -> dict:
        return {"profiles": [p.describe() for p in self.profiles], "runtime": self.runtime, "precision": self.precision,
                "optimization_level": self.optimization_level, "refittable": self.refittable,
                "strongly_typed": self.strongly_typed or self.runtime == TENSORRT_RTX.name,
                "compute_capabilities": list(self.compute_capabilities) if self.compute_capabilities else None}


@dataclass
class BuildTarget:
    """What engines are tied to: runtime family and version, and the compute capabilities they run on."""

    runtime: str
    runtime_version: str
    compute_capabilities: list[str]
    gpu_name: str | None = None  # TensorRT: the GPU it built on; TensorRT-RTX builds need none
    cuda_version: str | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def build_target(options: BuildOptions) -> BuildTarget:
    """The local facts for ``options.runtime``: TensorRT-RTX needs no GPU; TensorRT needs the GPU it builds for."""
    if options.runtime == TENSORRT_RTX.name:
        targets = list(options.compute_capabilities) if options.compute_capabilities else list(RTX_DEFAULT_TARGETS)
        return BuildTarget(TENSORRT_RTX.name, runtime_version(TENSORRT_RTX), targets)
    version = runtime_version(TENSORRT)
    import torch

    if not torch.cuda.is_available():
        raise ResAdapterRTError("--runtime tensorrt builds on the GPU it targets and none is visible here; run it on the GPU "
                                "machine, or build with --runtime tensorrt-rtx (no GPU needed)")
    major, minor = torch.cuda.get_device_capability()
    return BuildTarget(TENSORRT.name, version, [f"{major}.{minor}"], torch.cuda.get_device_name(), torch.version.cuda)


def export_dims(export_manifest: dict) -> dict:
    """Channel sizes the profile shapes need, read from the export's UNet inputs."""
    inputs = {i["name"]: i["shape"] for i in export_manifest["components"]["unet"]["inputs"]}
    dims = {"latent_channels": inputs["sample"][1], "cross_attention_dim": inputs["encoder_hidden_states"][2],
            "pooled_dim": inputs["text_embeds"][1] if "text_embeds" in inputs else None}
    if "controlnet_cond" in inputs:  # ControlNets folded into the UNet: [N, B, 3, 8H, 8W]
        dims["controlnets"] = inputs["controlnet_cond"][0]
    if "image_embeds" in inputs:  # an IP-Adapter: [B, 1, D] or [B, 1, T, C]; its image encoder takes [1-2, 3, S, S]
        dims["image_embed_shape"] = list(inputs["image_embeds"][2:])
        dims["image_size"] = export_manifest["ip_adapter"]["image_size"]
    return dims


def cache_key(onnx_sha256: str, component: str, options: BuildOptions, target: BuildTarget, precision: str) -> str:
    """Stable across runs and dict orderings; changes with any input that changes the engine."""
    material = {"onnx_sha256": onnx_sha256, "component": component, **options.key_material(), "component_precision": precision,
                "runtime_version": target.runtime_version, "compute_capabilities": target.compute_capabilities}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def worker_job(component: str, onnx_path: Path, options: BuildOptions, dims: dict, precision: str, timing_cache: Path,
               verbose: bool = False) -> dict:
    """The JSON job ``trt_worker.py`` builds one engine from (shapes per profile, runtime options)."""
    return {
        "runtime": options.runtime, "onnx": str(onnx_path), "output": None, "verbose": verbose,
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p.component_shapes(component, dims).items()}
                     for p in options.profiles],
        "compute_capabilities": [[int(x) for x in c.split(".")] for c in options.compute_capabilities or ()] or None,
        "optimization_level": options.optimization_level, "precision": precision, "strongly_typed": options.strongly_typed,
        "refittable": options.refittable, "timing_cache": str(timing_cache) if options.runtime == TENSORRT.name else None,
    }


def run_worker(job: dict, destination: Path) -> None:
    """Build in a child process into a temporary file beside ``destination``, then rename it into place."""
    handle, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(handle)
    job_path = Path(tmp).with_suffix(".json")
    try:
        job_path.write_text(json.dumps({**job, "output": tmp}))
        done = subprocess.run([sys.executable, str(WORKER), str(job_path)], capture_output=True, text=True)
        if job.get("verbose"):
            print(done.stderr, end="", file=sys.stderr)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            reason = lines[-1].removeprefix("error: ") if lines else f"exit status {done.returncode}"
            raise ResAdapterRTError(f"{destination.stem}: the {job['runtime']} build failed: {reason}")
        if os.path.getsize(tmp) == 0:
            raise ResAdapterRTError(f"{destination.stem}: the {job['runtime']} build wrote an empty engine")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; engines are as readable as the user's umask says
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        job_path.unlink(missing_ok=True)


@dataclass
class EngineBuild:
    """Result of ``build_engines``: the manifest and which components were built or reused."""

    manifest: dict
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_engines(directory: Path, options: BuildOptions, force: bool = False,
                  target: Callable[[BuildOptions], BuildTarget] = build_target,
                  builder: Callable[[dict, Path], None] = run_worker, progress=print, verbose: bool = False) -> EngineBuild:
    """Engines for every component of ``directory/onnx`` (a validated export) into ``directory/engines``.

    Existing engines whose cache key matches (and whose file is intact) are reused unless ``force``;
    the manifest is rewritten atomically at the end.
    """
    directory = Path(directory)
    export_manifest = read_manifest(directory / "onnx")
    built_for = target(options)
    dims = export_dims(export_manifest)
    engines_dir = directory / "engines"
    engines_dir.mkdir(parents=True, exist_ok=True)
    result = EngineBuild(manifest={})
    with exclusive_lock(directory / ".build.lock", str(directory), wait=True):
        (directory / ARTIFACT_MARKER).write_text('{"created_by": "resadapter-rt"}\n')
        previous = _previous_components(directory)
        components = {}
        for name, spec in export_manifest["components"].items():
            onnx_path = directory / "onnx" / spec["path"]
            onnx_sha = onnx_artifact_sha256(onnx_path)
            precision = options.component_precision(spec["dtype"])
            key = cache_key(onnx_sha, name, options, built_for, precision)
            engine_path = engines_dir / f"{name}.plan"
            old = previous.get(name, {})
            if not force and old.get("cache_key") == key and _intact(engine_path, old):
                progress(f"[build] {name}: cached engine is current (key {key[:12]})")
                result.reused.append(name)
                components[name] = old
                continue
            progress(f"[build] {name}: building {options.runtime} engine ({precision}, {len(options.profiles)} profile(s)) ...")
            tick = time.perf_counter()
            builder(worker_job(name, onnx_path, options, dims, precision, Path(options.timing_cache or directory / "timing.cache"),
                               verbose), engine_path)
            seconds = round(time.perf_counter() - tick, 2)
            progress(f"[build] {name}: {engine_path.stat().st_size / 2**20:.1f} MiB in {seconds:.1f} s")
            result.built.append(name)
            components[name] = {"engine": f"engines/{name}.plan", "sha256": sha256_file(engine_path),
                                "size_bytes": engine_path.stat().st_size, "cache_key": key, "precision": precision,
                                "onnx": f"onnx/{spec['path']}", "onnx_sha256": onnx_sha, "build_seconds": seconds,
                                "built_at": _now(), "inputs": spec["inputs"], "outputs": spec["outputs"]}
        manifest = {
            "format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "family": export_manifest["family"],
            "alpha_mode": export_manifest["alpha_mode"], "alpha": export_manifest["alpha"], "sources": export_manifest["sources"],
            "export_dtype": export_manifest["dtype"], "runtime": {"family": built_for.runtime, "version": built_for.runtime_version},
            "compute_capabilities": built_for.compute_capabilities, "gpu_name": built_for.gpu_name,
            "cuda_version": built_for.cuda_version, "build_options": options.key_material(),
            "profiles": [p.to_json() for p in options.profiles], "components": components,
            # the engines' own build: the latest component build and the sum of their build times
            "built_at": max(c["built_at"] for c in components.values()),
            "build_seconds": round(sum(c["build_seconds"] for c in components.values()), 2),
        }
        _write_json_atomically(directory / "manifest.json", manifest)
    result.manifest = manifest
    return result


def _previous_components(directory: Path) -> dict:
    """Components of an earlier build in ``directory`` (none if there is no readable engine manifest)."""
    try:
        return read_engine_manifest(directory)["components"]
    except ResAdapterRTError:
        return {}


def _intact(engine_path: Path, recorded: dict) -> bool:
    return (engine_path.is_file() and engine_path.stat().st_size == recorded.get("size_bytes")
            and sha256_file(engine_path) == recorded.get("sha256"))


def _write_json_atomically(path: Path, data: dict) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(data, out, indent=2)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
