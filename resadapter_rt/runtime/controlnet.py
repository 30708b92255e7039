"""ControlNet conditioning at run time: checked request, control images as diffusers prepares them, per-step scales.

The export holds the ControlNet(s) inside the UNet graph (``export/controlnet.py``); the loop feeds
``controlnet_cond`` once per request and ``controlnet_scale`` per step: the conditioning scale times
diffusers' ``controlnet_keep`` (0 outside ``[control_guidance_start, control_guidance_end]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ResAdapterRTError
from ..export.controlnet import CONTROLNET_COND, CONTROLNET_SCALE


@dataclass
class ControlRequest:
    """Control images [N, B, 3, H, W] in [0, 1] (B doubled under CFG), one scale and guidance window per ControlNet."""

    images: torch.Tensor
    scales: list[float]
    starts: list[float]
    ends: list[float]

    def keep(self, index: int, total: int) -> list[float]:
        """diffusers' ``controlnet_keep`` for step ``index`` of ``total``: 1 inside each window, else 0."""
        return [1.0 - float(index / total < s or (index + 1) / total > e) for s, e in zip(self.starts, self.ends)]

    def step_scales(self, index: int, total: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """``controlnet_scale`` for one step: conditioning scale x keep, per ControlNet."""
        values = [scale * keep for scale, keep in zip(self.scales, self.keep(index, total))]
        return torch.tensor(values, dtype=torch.float32, device=device)

    def parameters(self) -> dict:
        """What shaped the control, for PNG metadata."""
        return {"controlnet_conditioning_scale": self.scales, "control_guidance_start": self.starts,
                "control_guidance_end": self.ends}


def controlnet_count(manifest: dict) -> int:
    """How many ControlNets an export's UNet graph holds."""
    return len(manifest.get("controlnets") or [])


def _per_net(value: Any, count: int, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count:
        raise ResAdapterRTError(f"{name} has {len(values)} values for {count} ControlNet(s); pass one value, or one per ControlNet")
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ResAdapterRTError(f"{name} must be numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ResAdapterRTError(f"{name} must be finite numbers, got {value!r}")
    return values


def check_control_arguments(manifest: dict, control_image: Any, scale: Any, start: Any, end: Any) -> tuple[list, list, list, list]:
    """The per-ControlNet images, scales, starts and ends, or a one-line error naming what does not fit the export."""
    count = controlnet_count(manifest)
    if count == 0:
        if control_image is not None:
            raise ResAdapterRTError("this export has no ControlNet, so a control image cannot be used; re-export with "
                                    "`resadapter-rt export ... --controlnet CONTROLNET`")
        return [], [], [], []
    if control_image is None:
        raise ResAdapterRTError(f"this export has {count} ControlNet(s); pass {count} control image(s) (control_image=, "
                                "or --control-image per ControlNet)")
    images = list(control_image) if isinstance(control_image, (list, tuple)) else [control_image]
    if len(images) != count:
        raise ResAdapterRTError(f"{len(images)} control image(s) given for an export with {count} ControlNet(s); "
                                "pass one control image per ControlNet, in export order")
    from PIL import Image

    for image in images:
        if not isinstance(image, Image.Image):
            raise ResAdapterRTError(f"a control image must be a PIL image, got {type(image).__name__}")
    scales = _per_net(scale, count, "controlnet_conditioning_scale")
    starts = _per_net(start, count, "control_guidance_start")
    ends = _per_net(end, count, "control_guidance_end")
    for s, e in zip(starts, ends):
        if not 0.0 <= s < e <= 1.0:
            raise ResAdapterRTError(f"control guidance window {s:g}-{e:g} is invalid; need 0 <= start < end <= 1")
    return images, scales, starts, ends


def prepare_control_images(images: Sequence[Any], width: int, height: int, vae_scale_factor: int, batch: int,
                           cfg: bool) -> torch.Tensor:
    """[N, B, 3, H, W] in [0, 1] as diffusers' ControlNet pipelines prepare it (RGB, resized to W x H,
    repeated over the batch, duplicated for classifier-free guidance)."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True, do_normalize=False)
    prepared = []
    for image in images:
        tensor = processor.preprocess(image, height=height, width=width).to(dtype=torch.float32)
        tensor = tensor.repeat_interleave(batch, dim=0)
        prepared.append(torch.cat([tensor] * 2) if cfg else tensor)
    return torch.stack(prepared)


def control_request(manifest: dict, control_image: Any, scale: Any, start: Any, end: Any, width: int, height: int,
                    batch: int, cfg: bool, device: str | torch.device = "cpu") -> ControlRequest | None:
    """The checked, preprocessed ControlNet part of a request (None for exports without ControlNets)."""
    images, scales, starts, ends = check_control_arguments(manifest, control_image, scale, start, end)
    if not images:
        return None
    tensor = prepare_control_images(images, width, height, manifest["vae_scale_factor"], batch, cfg).to(device)
    return ControlRequest(images=tensor, scales=scales, starts=starts, ends=ends)


def control_static_inputs(control: ControlRequest | None) -> dict[str, torch.Tensor]:
    """The UNet input that stays the same at every step: the control images."""
    return {} if control is None else {CONTROLNET_COND: control.images}


def control_step_inputs(control: ControlRequest | None, index: int, total: int,
                        device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The UNet input that changes per step: the ControlNet scales inside their guidance windows."""
    return {} if control is None else {CONTROLNET_SCALE: control.step_scales(index, total, device)}


def command_line_control(manifest: dict, paths: list[str], scales: list[float] | None, start: float, end: float,
                         canny: bool) -> tuple[dict, dict]:
    """``generate``'s ControlNet options -> (pipeline keyword arguments, PNG metadata), one-line errors in CLI terms."""
    from .canny import canny_image, read_image

    count = controlnet_count(manifest)
    if count == 0 and (paths or scales):
        raise ResAdapterRTError(f"this export has no ControlNet, so {'--control-image' if paths else '--controlnet-scale'} "
                                "cannot be used; re-export with `resadapter-rt export ... --controlnet CONTROLNET`")
    if count == 0:
        return {}, {}
    if len(paths) != count:
        raise ResAdapterRTError(f"--control-image given {len(paths)} time(s) for an export with {count} ControlNet(s); "
                                "pass one per ControlNet, in export order")
    if scales and len(scales) not in (1, count):
        raise ResAdapterRTError(f"--controlnet-scale has {len(scales)} values for {count} ControlNet(s); "
                                "pass one value, or one per ControlNet")
    images = [read_image(Path(path), "control image") for path in paths]
    if canny:
        images = [canny_image(image) for image in images]
    scale = (scales * count if len(scales) == 1 else list(scales)) if scales else 1.0
    kwargs = dict(control_image=images, controlnet_conditioning_scale=scale, control_guidance_start=start,
                  control_guidance_end=end)
    return kwargs, {"control_images": [str(p) for p in paths], "canny": canny}
