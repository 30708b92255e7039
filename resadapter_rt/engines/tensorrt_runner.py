"""TensorRT execution for the runtime's runner interface (needs TensorRT, a GPU and torch CUDA).

One CUDA stream per runner; inputs are torch CUDA tensors bound by pointer (no host round trip);
output buffers are kept per shape and reused; the optimization profile is chosen per request.
Written on TensorRT 10's documented API (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``); exercised only by the ``trt``-marked tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ResAdapterRTError


class TensorRTRunner:
    """Runs one engine file; ``__call__`` takes and returns torch tensors by name."""

    def __init__(self, engine_path: Path, device: str = "cuda") -> None:
        import tensorrt as trt

        self._trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ResAdapterRTError(f"{engine_path}: TensorRT could not deserialize this engine; rebuild it with `resadapter-rt build`")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        self.device = device
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._outputs: dict[tuple, dict[str, torch.Tensor]] = {}
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

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        tensors = {n: inputs[n].to(self.device).contiguous() for n in self.input_names}
        shapes = {n: tuple(t.shape) for n, t in tensors.items()}
        profile = self._profile_for(shapes)
        if profile != self._profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self._profile = profile
        for name, tensor in tensors.items():
            self.context.set_input_shape(name, tensor.shape)
            self.context.set_tensor_address(name, tensor.data_ptr())
        key = tuple(sorted(shapes.items()))
        if key not in self._outputs:
            self._outputs[key] = {
                n: torch.empty(tuple(self.context.get_tensor_shape(n)), device=self.device,
                               dtype=_torch_dtype(self.engine.get_tensor_dtype(n), self._trt))
                for n in self.output_names
            }
        outputs = self._outputs[key]
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ResAdapterRTError("TensorRT execution failed (execute_async_v3 returned False)")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return {n: t.clone() for n, t in outputs.items()}


def _torch_dtype(trt_dtype, trt) -> torch.dtype:
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int32: torch.int32, trt.int64: torch.int64, trt.bool: torch.bool}[trt_dtype]
