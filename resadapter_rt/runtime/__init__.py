"""Stage 4, runtime: the runner interface and its backends (ONNX Runtime, torch, TensorRT),
scheduler names, the alpha policy, and ``ResAdapterPipeline``, which drives the scheduler loop
over any backend's runners. It may import every earlier stage (``models``, ``export``,
``engines``) and ``kernels``; never ``cli``.
"""


def __getattr__(name: str):
    """The pipeline API, imported on first use, so light modules (scheduler names) load without torch."""
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'resadapter_rt.runtime' has no attribute {name!r}")


__all__ = ["GenerationOutput", "ResAdapterPipeline", "Timings"]
