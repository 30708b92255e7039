"""resadapter-rt: ResAdapter-merged Stable Diffusion (SD1.5/SDXL) at any resolution, fast.

``import resadapter_rt`` needs neither a GPU nor TensorRT; heavy optional libraries are
imported only inside the backends that use them.
"""

from .adapter import ResAdapterWeights, load_adapter
from .errors import ResAdapterRTError
from .families import SD15, SDXL, ModelFamily
from .lora import LoraLayer, LoraWeights, read_lora_file
from .merge import apply_lora, merge_adapter, merge_loras, merge_pipeline, parse_alpha
from .models import PipelineComponents, load_components, load_unet

__version__ = "0.1.0"

__all__ = [
    "LoraLayer", "LoraWeights", "ModelFamily", "PipelineComponents", "ResAdapterRTError", "ResAdapterWeights",
    "SD15", "SDXL", "apply_lora", "load_adapter", "load_components", "load_unet", "merge_adapter",
    "merge_loras", "merge_pipeline", "parse_alpha", "read_lora_file",
]
