"""Stage 4, runtime: the runner interface and its backends (ONNX Runtime, torch, TensorRT),
scheduler names, the alpha policy, and ``ResAdapterPipeline``, which drives the scheduler loop
over any backend's runners. It may import every earlier stage (``models``, ``export``,
``engines``) and ``kernels``; never ``cli``.
"""

from .pipeline import GenerationOutput, ResAdapterPipeline, Timings

__all__ = ["GenerationOutput", "ResAdapterPipeline", "Timings"]
