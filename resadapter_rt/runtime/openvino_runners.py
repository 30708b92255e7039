"""The ``openvino`` backend: the export's own ``model.onnx`` files compiled by OpenVINO for the CPU.

Dynamic shapes come from the ONNX graphs as exported (batch, latent height/width, alpha stays an
input). ``cpu_precision`` picks OpenVINO's ``INFERENCE_PRECISION_HINT``: ``fp32``, ``bf16``, or
``auto`` (bf16 where the CPU reports native bf16 support, else fp32). OpenVINO's own CPU default
is bf16 on such CPUs, so fp32 is always requested explicitly.

bf16 is applied per component (``BF16_COMPONENTS``, measured in benchmarks/cpu_bf16_quality.py):
components left out of it run in fp32 even when bf16 is asked for, and every runner reports the
precision it was compiled with.

Compiled models are cached on disk (OpenVINO's ``CACHE_DIR``) under the project cache, one folder
per component file hash, so a second start skips compilation; each runner records how long its
compile (or cache load) took and whether it came from the cache. The CPU plugin's blob does not
depend on the precision hint (it is applied when the blob is loaded), so fp32 and bf16 share it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ResAdapterRTError

CPU_PRECISIONS = ("fp32", "bf16", "auto")
OPENVINO_INSTALL = 'pip install -e ".[openvino]"'
# Components that run in bf16 when bf16 is chosen; the others stay fp32. All of them, because each one's loss is small
# (benchmarks/results/cpu_bf16_quality_*.json, 20 steps, images vs all-fp32 on [0, 1] pixels; full-size SD1.5 at 256x256:
# UNet alone 45.6 dB PSNR / max abs 0.029, VAE decoder alone 54.5 dB / 0.010, text encoder alone 64.5 dB / 0.003,
# all three 44.7 dB / 0.031) and inside QUALITY_BOUND.
BF16_COMPONENTS = frozenset({"unet", "text_encoder", "text_encoder_2", "vae_decoder"})
# What bf16 may cost against fp32 (same seed, 20 steps, decoded [0, 1] pixels): PSNR at least, max abs difference at most.
QUALITY_BOUND = {"psnr_db": 40.0, "max_abs_pixel": 0.05}
_HINTS = {"fp32": "f32", "bf16": "bf16"}


def import_openvino():
    """The ``openvino`` module, or a one-line error naming the pip extra."""
    try:
        import openvino
    except ImportError:
        raise ResAdapterRTError(f"backend 'openvino' needs the OpenVINO runtime, which is not installed; {OPENVINO_INSTALL}") from None
    return openvino


def check_cpu_precision(name: str) -> str:
    """``fp32``, ``bf16`` or ``auto``; anything else is a one-line error."""
    if name not in CPU_PRECISIONS:
        raise ResAdapterRTError(f"unknown CPU precision {name!r}; choose one of {', '.join(CPU_PRECISIONS)}")
    return name


def check_cpu_precision_for(backend: str, cpu_precision: str | None) -> None:
    """``--cpu-precision`` is a valid choice, and only given with the openvino backend."""
    if cpu_precision is None:
        return
    check_cpu_precision(cpu_precision)
    if backend != "openvino":
        raise ResAdapterRTError(f"--cpu-precision applies to --backend openvino, not {backend}; drop it or use --backend openvino")


def cpu_capabilities(core) -> list[str]:
    """What OpenVINO's CPU plugin reports it can run natively (e.g. ``FP32``, ``BF16``, ``INT8``)."""
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def resolve_cpu_precision(requested: str, capabilities: list[str]) -> str:
    """``auto`` -> bf16 where the CPU has native bf16, else fp32; explicit bf16 needs native bf16."""
    check_cpu_precision(requested)
    native = "BF16" in capabilities
    if requested == "auto":
        return "bf16" if native else "fp32"
    if requested == "bf16" and not native:
        raise ResAdapterRTError(
            f"--cpu-precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX); OpenVINO reports only "
            f"{', '.join(capabilities) or 'nothing'} here; use --cpu-precision fp32 (or auto)")
    return requested


def bf16_unavailable(core=None) -> str | None:
    """Why ``--cpu-precision bf16`` is refused on this CPU (the very check ``generate`` applies), or None where it runs."""
    try:
        resolve_cpu_precision("bf16", cpu_capabilities(core or import_openvino().Core()))
    except ResAdapterRTError as error:
        return str(error)
    return None


def component_precision(component: str, precision: str) -> str:
    """The precision one component is compiled with under the chosen ``precision``."""
    return precision if component in BF16_COMPONENTS else "fp32"


def openvino_cache_dir(sha256: str) -> Path:
    """Compiled-model cache for one component file: ``<cache root>/openvino/<graph+weights hash>``."""
    from ..cache import cache_root

    return cache_root() / "openvino" / sha256[:24]


class OpenVINORunner:
    """One ONNX file compiled by OpenVINO for the CPU at one precision, behind the named-tensor interface.

    Each thread gets its own infer request, so concurrent calls are safe.
    """

    def __init__(self, path: Path, precision: str, cache_dir: Path | None = None, core=None,
                 names: tuple[tuple[str, ...], tuple[str, ...]] | None = None) -> None:
        ov = import_openvino()
        if precision not in _HINTS:
            raise ResAdapterRTError(f"unknown CPU precision {precision!r}; choose one of fp32, bf16")
        core = core or ov.Core()
        config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        started = time.perf_counter()
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.compile_seconds = time.perf_counter() - started
        self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        self.precision = precision
        # a port may carry several tensor names; the ONNX graph's own IO names are among them
        self.input_names, self.output_names = names or (tuple(_onnx_name(p) for p in self.compiled.inputs),
                                                        tuple(_onnx_name(p) for p in self.compiled.outputs))
        self._outputs = [self.compiled.output(name) for name in self.output_names]
        self._local = threading.local()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        feed = {name: inputs[name].detach().cpu().contiguous().numpy() for name in self.input_names}
        results = self._request().infer(feed)
        return {name: torch.from_numpy(np.array(results[port], copy=True)) for name, port in zip(self.output_names, self._outputs)}


def _onnx_name(port) -> str:
    """The shortest of a port's tensor names: the ONNX IO name, not an internal one merged into it."""
    return min(port.get_names(), key=lambda n: (len(n), n))


def openvino_runners(directory: Path, manifest: dict, cpu_precision: str = "auto") -> tuple[dict[str, OpenVINORunner], str]:
    """OpenVINO CPU runners for every component of an export (its ``model.onnx`` files, no second export),
    and the precision ``cpu_precision`` resolved to on this CPU (``fp32`` or ``bf16``)."""
    check_cpu_precision(cpu_precision)
    ov = import_openvino()
    if manifest.get("target") == "cuda":
        raise ResAdapterRTError(f"{directory}: this export targets CUDA (fused GroupNorm ops OpenVINO cannot read); "
                                "re-export with --target cpu for the openvino backend")
    if any(spec.get("dtype") != "fp32" for spec in manifest["components"].values()):
        raise ResAdapterRTError(f"{directory}: the openvino backend reads fp32 exports (bf16 is chosen at compile time with "
                                "--cpu-precision); re-export with --dtype fp32")
    core = ov.Core()
    precision = resolve_cpu_precision(cpu_precision, cpu_capabilities(core))
    runners = {name: OpenVINORunner(directory / spec["path"], component_precision(name, precision),
                                 openvino_cache_dir(spec["sha256"]), core,
                                 (tuple(i["name"] for i in spec["inputs"]), tuple(o["name"] for o in spec["outputs"])))
               for name, spec in manifest["components"].items()}
    return runners, precision

