"""Hires fix: generate at the base size, upscale the image, then image-to-image at ``scale`` x the base size.

The second pass runs the tiled UNet (``tiling.py``) where the upscaled size is beyond what the engines
cover, and the tiled VAE where it is beyond the VAE (both as for any request). It encodes the upscaled
image with the export's VAE encoder, so the export needs ``--vae-encoder``.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ResAdapterRTError
from ..export.vae_encoder import NAME as VAE_ENCODER
from .tiling import LATENT, default_tiles, fits

DEFAULT_STRENGTH = 0.5


def check_hires(scale: Any, strength: Any, steps: Any) -> tuple[float, float, int | None]:
    """The checked scale (> 1), strength in (0, 1] and optional second-pass step count."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or not 1.0 < scale <= 8.0:
        raise ResAdapterRTError(f"hires scale must be a number in (1, 8], got {scale!r}; e.g. 2 for twice the base size")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ResAdapterRTError(f"hires strength must be in (0, 1], got {strength!r}; e.g. {DEFAULT_STRENGTH}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ResAdapterRTError(f"hires steps must be a positive integer, got {steps!r}")
    return float(scale), float(strength), steps


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """``scale`` x the base size, to the nearest multiple of 8 px."""
    return (max(LATENT, round(width * scale / LATENT) * LATENT), max(LATENT, round(height * scale / LATENT) * LATENT))


class HiresFix:
    """A pipeline wrapper with the pipeline's call signature: ``HiresFix(pipe, 2.0, 0.5)(prompt, width=512, ...)``
    returns images at 1024 x ..., made by the two passes. Other attributes are the wrapped pipeline's."""

    def __init__(self, pipe: Any, scale: float, strength: float = DEFAULT_STRENGTH, steps: int | None = None) -> None:
        self.pipe = pipe
        self.scale, self.strength, self.steps = check_hires(scale, strength, steps)
        if VAE_ENCODER not in pipe.runners:
            raise ResAdapterRTError("the hires fix encodes the upscaled image, and this export has no VAE encoder; "
                                    "re-export with `resadapter-rt export ... --vae-encoder`")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, prompt: Any, height: int = 512, width: int = 512, num_inference_steps: int = 25,
                 num_images_per_prompt: int = 1, callback: Any = None, tile_size: int | None = None,
                 tile_stride: int | None = None, circular: bool = False, tile_batch: int | None = None,
                 output_type: str = "pil", **kwargs: Any) -> Any:
        """The base pass at ``width`` x ``height`` (untiled), then the second pass (tiled where needed).

        ``kwargs`` (prompt, guidance, seed, alpha, scheduler, ControlNet ...) go to both passes; the tile
        options to the second; a dynamic alpha is chosen per pass for the size its UNet sees.
        """
        from PIL import Image

        if num_images_per_prompt != 1 or not isinstance(prompt, str):
            raise ResAdapterRTError("the hires fix makes one image per call (one prompt, --num-images 1); "
                                    "call it once per image")
        if "image" in kwargs or "mask_image" in kwargs:
            raise ResAdapterRTError("the hires fix starts from text; drop the source image/mask, or use image-to-image alone")
        steps = self.steps or num_inference_steps
        if isinstance(steps, int) and int(steps * self.strength) < 1:
            raise ResAdapterRTError(f"hires strength {self.strength:g} with {steps} second-pass steps leaves no denoising step; "
                                    "raise --hires-strength or --hires-steps")
        base = self.pipe(prompt, height=height, width=width, num_inference_steps=num_inference_steps,
                         callback=callback, **kwargs)
        big_width, big_height = upscaled_size(width, height, self.scale)
        if tile_size is None and not fits(self.pipe, big_width, big_height, 1):
            tile_size, tile_stride = default_tiles(self.pipe)
        upscaled = base.images[0].resize((big_width, big_height), Image.LANCZOS)
        second = self.pipe(prompt, height=big_height, width=big_width, num_inference_steps=steps,
                           image=upscaled, strength=self.strength, callback=callback, tile_size=tile_size,
                           tile_stride=tile_stride, circular=circular, tile_batch=tile_batch, output_type=output_type,
                           **kwargs)
        second.parameters |= {"hires_scale": self.scale, "hires_strength": self.strength,
                              "hires_steps": steps, "base_width": width, "base_height": height,
                              "base_alpha": base.alpha}
        second.timings.total += base.timings.total
        return second
