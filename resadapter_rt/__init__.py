"""resadapter-rt: ResAdapter-merged Stable Diffusion (SD1.5/SDXL) at any resolution, fast.

``import resadapter_rt`` needs neither a GPU nor TensorRT; heavy optional libraries are
imported only inside the backends that use them.

The package is laid out by stage, each importing only the ones before it:
``models`` (adapters, LoRA, merging, model loading) -> ``export`` (ONNX) -> ``engines``
(profiles, TensorRT) -> ``runtime`` (runners, schedulers, the pipeline); ``kernels`` is a leaf
used by the runtime; ``training`` uses only ``models``; ``bench``, ``serve`` (Ray Serve, the Open
Inference Protocol, Triton model repositories) and ``miniature`` (the shapes grammar, its scorer,
``mini-sd15``'s training and the demo) sit on the runtime; ``cli`` on top; ``errors``,
``files`` and ``cache`` are shared by all.
"""

from .errors import ResAdapterRTError

_FROM_MODELS = ("SD15", "SDXL", "LoraLayer", "LoraWeights", "ModelFamily", "PipelineComponents", "ResAdapterWeights",
                "apply_lora", "load_adapter", "load_components", "load_unet", "merge_adapter", "merge_loras",
                "merge_pipeline", "parse_alpha", "read_lora_file")


def __getattr__(name: str):
    """The model API, imported on first use: ``import resadapter_rt`` (and the CLI's ``--help``) loads no torch."""
    if name in _FROM_MODELS:
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'resadapter_rt' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "LoraLayer", "LoraWeights", "ModelFamily", "PipelineComponents", "ResAdapterRTError", "ResAdapterWeights",
    "SD15", "SDXL", "apply_lora", "load_adapter", "load_components", "load_unet", "merge_adapter",
    "merge_loras", "merge_pipeline", "parse_alpha", "read_lora_file",
]
