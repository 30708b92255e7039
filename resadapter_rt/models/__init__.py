"""Stage 1, adapters and models: reading ResAdapter and LoRA checkpoints, loading personalized
SD1.5/SDXL pipelines (directories, single files, hub ids, the built-in tiny models), recognising
their family, and merging adapters into weights. Everything here is plain PyTorch/diffusers and
knows nothing of ONNX, engines or the runtime; it may import only the top-level cross-cutting
modules (``errors``, ``files``, ``cache``).
"""

from .adapter import ResAdapterWeights, load_adapter
from .components import PipelineComponents, load_components, load_unet
from .families import SD15, SDXL, ModelFamily
from .lora import LoraLayer, LoraWeights, read_lora_file
from .merge import apply_lora, merge_adapter, merge_loras, merge_pipeline, parse_alpha, parse_lora_spec

__all__ = [
    "LoraLayer", "LoraWeights", "ModelFamily", "PipelineComponents", "ResAdapterWeights", "SD15", "SDXL",
    "apply_lora", "load_adapter", "load_components", "load_unet", "merge_adapter", "merge_loras", "merge_pipeline",
    "parse_alpha", "parse_lora_spec", "read_lora_file",
]
