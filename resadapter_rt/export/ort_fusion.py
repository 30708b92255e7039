"""The ``cuda`` export target: ONNX Runtime's own fusion tooling (``onnxruntime.transformers``).

GroupNorm(+SiLU) becomes ``com.microsoft.GroupNorm`` (activation=1 when SiLU follows), with the
other CUDA-only fusions the tool applies to diffusion UNets/VAEs (NhwcConv, BiasSplitGelu, BiasAdd,
SkipLayerNormalization). Its attention fusion is switched off: with numpy 2.4 it crashes in
``fusion_attention_unet.get_num_heads`` (``int()`` of a 1-element array), seen here with
onnxruntime 1.31.1. The fused ops have no CPU kernels, so the export is validated on the
pre-fusion graph (same weights) and the fused graph is checked structurally here, numerically on GPUs.
"""

from __future__ import annotations

import logging
from pathlib import Path

MODEL_TYPES = {"unet": "unet", "vae_decoder": "vae"}


def fuse_for_cuda(path: Path, component: str) -> bool:
    """Rewrite ``path`` in place with ORT's CUDA fusions; False when the component has none."""
    if component not in MODEL_TYPES:
        return False
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    for name in ("onnxruntime.transformers", "fusion", "onnx_model"):
        logging.getLogger(name).setLevel(logging.ERROR)
    options = FusionOptions(MODEL_TYPES[component])
    options.enable_attention = False  # crashes with numpy 2.4 (see module docstring)
    model = optimize_model(str(path), model_type=MODEL_TYPES[component], opt_level=0, optimization_options=options,
                           use_gpu=True, only_onnxruntime=False)
    large = (path.parent / (path.name + ".data")).is_file()
    model.save_model_to_file(str(path), use_external_data_format=large, all_tensors_to_one_file=True)
    return True
