"""Model families ResAdapter exists for, and how to recognise each from a UNet or an adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping


@dataclass(frozen=True)
class ModelFamily:
    """Facts about one Stable Diffusion architecture family."""

    name: str
    display_name: str
    training_size: int  # pixels, the size the base model was trained at
    num_down_blocks: int  # UNet down blocks; all but the last have a downsampler
    pixel_range: tuple[int, int]  # pixels per side the official ResAdapter's model card covers

    @property
    def num_samplers(self) -> int:
        """Down-samplers (and, symmetrically, up-samplers) in the UNet."""
        return self.num_down_blocks - 1


SD15 = ModelFamily("sd15", "SD1.5", training_size=512, num_down_blocks=4, pixel_range=(128, 1024))
SDXL = ModelFamily("sdxl", "SDXL", training_size=1024, num_down_blocks=3, pixel_range=(256, 1536))
FAMILIES = {f.name: f for f in (SD15, SDXL)}


def family_of_unet_config(config: Mapping) -> ModelFamily:
    """SDXL UNets take pooled text embeds and time ids (``addition_embed_type="text_time"``)."""
    if config.get("addition_embed_type") == "text_time":
        return SDXL
    return SD15


def family_of_adapter_keys(lora_modules: Iterable[str], norm_keys: Iterable[str]) -> ModelFamily | None:
    """Guess the family from which sampler convs carry LoRA and which blocks carry norms.

    SD1.5 has four down blocks (three downsamplers); SDXL has three (two downsamplers).
    Returns None when the keys say nothing about it.
    """
    down_blocks: set[int] = set()
    for key in list(lora_modules) + list(norm_keys):
        parts = key.split(".")
        if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1 and parts[1].isdigit():
            index = int(parts[1])
            # up_blocks.i has an upsampler for i < num_down_blocks - 1; resnets in every block.
            down_blocks.add(index + (1 if "samplers" in key else 0))
    if not down_blocks:
        return None
    return SD15 if max(down_blocks) >= SD15.num_down_blocks - 1 else SDXL
