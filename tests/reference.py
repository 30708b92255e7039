"""The reference application of a ResAdapter: diffusers' own LoRA path (PEFT, unmerged) + load_state_dict."""

from __future__ import annotations

import copy
from pathlib import Path

from safetensors.torch import load_file

from resadapter_rt.models import load_components


def reference_pipeline(unet, family, loras: list[tuple[Path, str]], weights: list[float], norm_file: Path | None):
    """A diffusers pipeline around a copy of ``unet`` with LoRAs loaded as PEFT adapters.

    The other components come from the tiny pipeline of the same family; only the UNet path matters.
    """
    parts = load_components(f"tiny-{family.name}")
    pipe = parts.with_(unet=copy.deepcopy(unet), family=family).to_diffusers()
    for path, name in loras:
        pipe.load_lora_weights(str(path), adapter_name=name)
    pipe.set_adapters([name for _, name in loras], adapter_weights=weights)
    if norm_file is not None:
        missing, unexpected = pipe.unet.load_state_dict(load_file(str(norm_file)), strict=False)
        assert not unexpected, unexpected
    return pipe
