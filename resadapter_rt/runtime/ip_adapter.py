"""IP-Adapter at run time: the image prompt encoded once per request, the scale chosen per request.

As diffusers' ``prepare_ip_adapter_image_embeds``: the image goes through the CLIP preprocessing saved
with the export (``feature_extractor/``) and the exported image encoder; plain adapters take the
projected embedding with zeros as the negative, plus / full-face adapters the penultimate hidden
states with the encoding of a zero image as the negative. One image is shared by the whole batch.
Without an image, a dynamic-scale export runs with scale 0 (exactly the model without IP-Adapter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ResAdapterRTError
from ..export.ip_adapter import ENCODER_INPUT, IMAGE_EMBEDS, IMAGE_ENCODER, IP_SCALE
from ..models.ip_adapter import parse_ip_adapter_scale

NO_IP_ADAPTER = ("this export has no IP-Adapter, so {what} cannot be used; re-export with "
                 "`resadapter-rt export ... --ip-adapter FILE --image-encoder DIR`")


@dataclass
class ImagePrompt:
    """The UNet's image-prompt inputs for one request: embeddings [B, 1, ...] (negatives first under CFG) and scale."""

    embeds: torch.Tensor
    scale: float
    with_image: bool

    def parameters(self) -> dict:
        return {"ip_adapter_scale": self.scale} if self.with_image else {}


def load_feature_extractor(directory: Path) -> Any:
    """The CLIP image preprocessing saved with an IP-Adapter export."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor.from_pretrained(Path(directory) / "feature_extractor")


def _scale(entry: dict, requested: Any, with_image: bool) -> float:
    if entry["scale_mode"] == "baked":
        baked = float(entry["scale"])
        if requested is not None and abs(parse_ip_adapter_scale(requested) - baked) > 1e-9:
            raise ResAdapterRTError(f"this export has the IP-Adapter scale baked at {baked:g}; re-export without "
                                    "--ip-adapter-scale (a dynamic scale) to choose it per request")
        if not with_image:
            raise ResAdapterRTError(f"this export has the IP-Adapter scale baked at {baked:g}, so it needs an image prompt; "
                                    "pass ip_adapter_image= (--ip-adapter-image FILE), or re-export with a dynamic scale")
        return baked
    if not with_image:
        if requested is not None and parse_ip_adapter_scale(requested) != 0:
            raise ResAdapterRTError("an IP-Adapter scale was given without an image prompt; pass ip_adapter_image= "
                                    "(--ip-adapter-image FILE) too")
        return 0.0
    return 1.0 if requested is None else parse_ip_adapter_scale(requested)


def encode_image_prompt(image: Any, runner: Any, feature_extractor: Any, hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) embedding of one image, each [1, ...], as diffusers' ``encode_image`` makes them."""
    pixels = feature_extractor(image, return_tensors="pt").pixel_values.to(torch.float32)
    if hidden_states:
        out = runner(**{ENCODER_INPUT: torch.cat([pixels, torch.zeros_like(pixels)])})["penultimate_hidden_states"].float().cpu()
        return out[:1], out[1:]
    embeds = runner(**{ENCODER_INPUT: pixels})["image_embeds"].float().cpu()
    return embeds, torch.zeros_like(embeds)


def image_prompt_request(manifest: dict, runners: dict, feature_extractor: Any, image: Any, scale: Any, batch: int,
                         cfg: bool) -> ImagePrompt | None:
    """The checked image prompt of a request (None for exports without IP-Adapter)."""
    entry = manifest.get("ip_adapter")
    if not entry:
        if image is not None:
            raise ResAdapterRTError(NO_IP_ADAPTER.format(what="an image prompt"))
        if scale is not None:
            raise ResAdapterRTError(NO_IP_ADAPTER.format(what="an IP-Adapter scale"))
        return None
    from PIL import Image

    if image is not None and not isinstance(image, Image.Image):
        raise ResAdapterRTError(f"the IP-Adapter image must be a PIL image, got {type(image).__name__}")
    value = _scale(entry, scale, image is not None)
    hidden = entry["image_embeds"] == "penultimate hidden states"
    if image is None:
        shape = manifest["components"]["unet"]["inputs"]
        dims = next(i["shape"] for i in shape if i["name"] == IMAGE_EMBEDS)[2:]
        positive = negative = torch.zeros(1, *dims)
    else:
        positive, negative = encode_image_prompt(image, runners[IMAGE_ENCODER], feature_extractor, hidden)
    embeds = positive[None].repeat_interleave(batch, dim=0)  # [batch, 1 image, ...]
    if cfg:
        embeds = torch.cat([negative[None].repeat_interleave(batch, dim=0), embeds])
    return ImagePrompt(embeds=embeds, scale=value, with_image=image is not None)


def image_prompt_inputs(prompt: ImagePrompt | None, unet_inputs: tuple[str, ...], device: str | torch.device = "cpu") -> dict:
    """The UNet inputs that stay the same at every step: image embeddings and (dynamic exports) the scale."""
    if prompt is None:
        return {}
    inputs = {IMAGE_EMBEDS: prompt.embeds.to(device)}
    if IP_SCALE in unet_inputs:
        inputs[IP_SCALE] = torch.tensor(prompt.scale, dtype=torch.float32, device=device)
    return inputs
