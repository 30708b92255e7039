"""TensorRT and TensorRT-RTX execution for the runtime's runner interface (needs a GPU and torch CUDA).

One CUDA stream per runner; inputs are copied into per-shape torch CUDA buffers bound by pointer (no
host round trip); the optimization profile is chosen per request.

* TensorRT-RTX: the execution context comes from a runtime config: the JIT-compiled kernels live in
  a runtime cache file beside the engine (loaded when it fits this GPU, driver and version; saved
  after each new shape), the kernel specialization strategy for dynamic shapes is chosen here, and
  the runtime captures and replays a CUDA graph per shape itself (``WHOLE_GRAPH_CAPTURE``).
* TensorRT: a CUDA graph per (profile, shape), captured after one eager warm-up run and replayed;
  a shape whose capture fails runs eagerly.

Written on the documented APIs (``create_runtime_config``, ``IRuntimeCache``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``, ``torch.cuda.graph``); exercised only by ``trt`` tests.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import torch

from ..errors import ResAdapterRTError
from .runtimes import FAMILIES, TENSORRT_RTX

log = logging.getLogger(__name__)
SPECIALIZATION = ("lazy", "eager", "none")


class TensorRTRunner:
    """Runs one engine file; ``__call__`` takes and returns torch tensors by name."""

    def __init__(self, engine_path: Path, family: str = "tensorrt", runtime_cache: Path | None = None,
                 kernel_specialization: str = "lazy", cuda_graphs: bool = True, device: str = "cuda") -> None:
        if kernel_specialization not in SPECIALIZATION:
            raise ResAdapterRTError(f"unknown kernel specialization {kernel_specialization!r}; choose one of {', '.join(SPECIALIZATION)}")
        trt = importlib.import_module(FAMILIES[family].module)
        self._trt, self.family, self.device, self.cuda_graphs = trt, family, device, cuda_graphs
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ResAdapterRTError(f"{engine_path}: {family} could not deserialize this engine; rebuild it with `resadapter-rt build`")
        self.runtime_cache_path = runtime_cache
        if family == TENSORRT_RTX.name:
            config = self.engine.create_runtime_config()
            config.dynamic_shapes_kernel_specialization_strategy = getattr(
                trt.DynamicShapesKernelSpecializationStrategy, kernel_specialization.upper())
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE if cuda_graphs else trt.CudaGraphStrategy.DISABLED
            self._runtime_cache = config.create_runtime_cache()
            if runtime_cache is not None and runtime_cache.is_file() and not self._runtime_cache.deserialize(runtime_cache.read_bytes()):
                log.warning("%s was made for another GPU, driver or TensorRT-RTX version; starting a new runtime cache", runtime_cache)
            config.set_runtime_cache(self._runtime_cache)
            self.context = self.engine.create_execution_context(config)
        else:
            self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._shapes: dict[tuple, dict] = {}  # (profile, shapes) -> static buffers and the captured graph
        self._profile = -1

    def _profile_for(self, shapes: dict[str, tuple[int, ...]]) -> int:
        for index in range(self.engine.num_optimization_profiles):
            fits = True
            for name, shape in shapes.items():
                if not shape:  # scalar inputs are not profiled
                    continue
                low, _, high = self.engine.get_tensor_profile_shape(name, index)
                fits &= all(lo <= s <= hi for lo, s, hi in zip(low, shape, high))
            if fits:
                return index
        raise ResAdapterRTError(f"no optimization profile of this engine covers input shapes {shapes}; "
                                "build one with `resadapter-rt build --profile ...`")

    def _prepare(self, key: tuple, inputs: dict[str, torch.Tensor]) -> dict:
        """Static input/output buffers for one (profile, shapes), bound to the context."""
        state = self._shapes.get(key)
        if state is None:
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
            state = {"inputs": {n: torch.empty_like(t) for n, t in inputs.items()}, "graph": None, "runs": 0,
                     "outputs": {n: torch.empty(tuple(self.context.get_tensor_shape(n)), device=self.device,
                                                dtype=_torch_dtype(self.engine.get_tensor_dtype(n), self._trt))
                                 for n in self.output_names}}
            self._shapes[key] = state
        for name, buffer in state["inputs"].items():
            self.context.set_input_shape(name, tuple(buffer.shape))
            self.context.set_tensor_address(name, buffer.data_ptr())
        for name, buffer in state["outputs"].items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        return state

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ResAdapterRTError(f"{self.family} execution failed (execute_async_v3 returned False)")

    def _capture(self, state: dict) -> None:
        """A CUDA graph of one enqueue (TensorRT only; TensorRT-RTX captures itself)."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self._execute()
            state["graph"] = graph
        except RuntimeError as exc:  # e.g. an engine with data-dependent shapes cannot be captured
            log.warning("CUDA graph capture failed for this shape, running it eagerly: %s", exc)
            state["graph"] = False

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        tensors = {n: inputs[n].to(self.device) for n in self.input_names}
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        profile = self._profile_for(shapes)
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self._profile = profile
        state = self._prepare((profile, tuple(sorted(shapes.items()))), tensors)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for name, tensor in tensors.items():
                state["inputs"][name].copy_(tensor)
            if state["graph"]:
                state["graph"].replay()
            else:
                self._execute()
                if self.cuda_graphs and self.family != TENSORRT_RTX.name and state["graph"] is None:
                    self._capture(state)  # after the eager warm-up run, as TensorRT asks
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        state["runs"] += 1
        if state["runs"] == 1 and self.family == TENSORRT_RTX.name:
            self.stream.synchronize()
            self.save_runtime_cache()
        return {n: t.clone() for n, t in state["outputs"].items()}

    def save_runtime_cache(self) -> None:
        """Write the TensorRT-RTX runtime cache beside the engine (temp file, then rename)."""
        if self.family != TENSORRT_RTX.name or self.runtime_cache_path is None:
            return
        tmp = self.runtime_cache_path.with_name(f".{self.runtime_cache_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(bytes(self._runtime_cache.serialize()))
            os.replace(tmp, self.runtime_cache_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _torch_dtype(trt_dtype, trt) -> torch.dtype:
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}[trt_dtype]
