"""Inpainting with the base 4-channel UNet, exactly as diffusers' ``StableDiffusionInpaintPipeline`` (and the
SDXL one) do for such a UNet: the mask binarised at 0.5 and resized to the latents (nearest), and after
every step the unmasked part replaced by the source image's latents noised to the next timestep.
At strength 1 the loop starts from pure noise. The masked source image is VAE-encoded there only
for 9-channel inpainting UNets; its latent sample still draws from the generator, and so does this
(the same draw, unused), so ancestral schedulers get the same noise as diffusers'.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ResAdapterRTError
from .img2img import ImageStart


def mask_request(mask_image: Any, image: Any, width: int, height: int, vae_scale_factor: int) -> torch.Tensor | None:
    """The checked mask, [1, 1, H, W] in {0, 1} (white: re-generate), or None without one."""
    if mask_image is None:
        return None
    from PIL import Image

    if image is None:
        raise ResAdapterRTError("a mask needs the image it applies to; pass image= (--image FILE) with mask_image= (--mask FILE)")
    if not isinstance(mask_image, Image.Image):
        raise ResAdapterRTError(f"the mask must be a PIL image, got {type(mask_image).__name__}")
    if mask_image.size != image.size:
        raise ResAdapterRTError(f"the mask is {mask_image.width}x{mask_image.height} but the image is "
                                f"{image.width}x{image.height}; pass a mask of the image's size (white = re-generate)")
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_normalize=False, do_binarize=True,
                                  do_convert_grayscale=True)
    return processor.preprocess(mask_image, height=height, width=width).to(torch.float32)


def latent_mask(mask: torch.Tensor, vae_scale_factor: int, batch: int) -> torch.Tensor:
    """The mask at latent size, [batch, 1, h, w] (``prepare_mask_latents``)."""
    height, width = mask.shape[-2] // vae_scale_factor, mask.shape[-1] // vae_scale_factor
    small = torch.nn.functional.interpolate(mask, size=(height, width))
    return small.repeat(batch // small.shape[0], 1, 1, 1)


def draw_masked_image_sample(generator: torch.Generator, latent_shape: tuple[int, ...]) -> None:
    """Advance the generator by the masked-image latent sample diffusers draws (and a 4-channel UNet never uses)."""
    torch.randn(latent_shape, generator=generator, dtype=torch.float32)


def blend_unmasked(latents: torch.Tensor, start: ImageStart, mask: torch.Tensor, scheduler: Any, index: int) -> torch.Tensor:
    """After step ``index``: keep the masked latents, put back the source outside the mask at the next noise level."""
    proper = start.image_latents
    if index < len(start.timesteps) - 1:
        proper = scheduler.add_noise(proper, start.noise, torch.tensor([start.timesteps[index + 1]]))
    mask = mask.to(latents.device)
    return (1 - mask) * proper.to(latents.device) + mask * latents
