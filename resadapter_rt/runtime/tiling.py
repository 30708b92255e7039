"""MultiDiffusion tiling (Bar-Tal et al. 2023): a canvas larger than the engines cover, denoised in windows.

Each step the latent canvas is cut into windows of the tile size at the given stride; every window gets
its UNet prediction at a size the engine covers (windows batched into one UNet call, classifier-free
guidance included) and overlapping predictions are averaged per latent pixel. ``circular`` wraps the
width (360-degree panoramas): windows run off the right edge and continue at the left.

Where this differs from diffusers' ``StableDiffusionPanoramaPipeline`` (and why):

* The last window of each axis is placed so that it ends at the canvas edge: the whole canvas is
  covered (diffusers drops the remainder when ``(size - tile) % stride != 0``, leaving it pure noise).
  Circular widths get ``ceil(width / stride)`` windows. Where diffusers covers the canvas whole the
  windows are the same.
* The UNet predictions are averaged and the scheduler steps once on the whole canvas; diffusers steps
  each window (keeping a scheduler state per window batch) and averages the stepped latents. For
  steps that are linear in the model output (DDIM without ``clip_sample``, Euler, DPM-Solver++ 2M, ...)
  the two are the same; for ancestral schedulers one noise draw keeps the noise variance right, where
  averaging independent per-window draws shrinks it in the overlaps. Multistep schedulers need no
  per-window state.
* SDXL windows carry their own micro-conditioning: ``time_ids`` = (canvas height, canvas width,
  window top, window left, window height, window width) in pixels, i.e. "a crop of the canvas at this
  place"; ControlNet images are cropped with their window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..engines.tile_windows import LATENT, Window, check_stride, plan_windows, positive_multiple
from ..errors import ResAdapterRTError
from ..export.controlnet import CONTROLNET_COND
from ..export.ip_adapter import IMAGE_EMBEDS

WINDOWS_PER_CALL = 8  # backends without a batch range (ONNX Runtime, torch, OpenVINO): bounded memory
PER_SAMPLE_INPUTS = ("timestep", "encoder_hidden_states", "text_embeds", "time_ids", IMAGE_EMBEDS)


@dataclass(frozen=True)
class TilePlan:
    """Checked tiling of one request: the windows and how many go into each UNet call."""

    tile: int  # pixels
    stride: int  # pixels
    circular: bool
    per_call: int
    canvas: tuple[int, int]  # latent height, width
    windows: tuple[Window, ...]

    @property
    def window_size(self) -> tuple[int, int]:
        """(width, height) in pixels the UNet sees: every window has the same size."""
        return self.windows[0].width * LATENT, self.windows[0].height * LATENT

    def parameters(self) -> dict:
        """What shaped the tiling, for PNG metadata."""
        return {"tile_size": self.tile, "tile_stride": self.stride, "circular": self.circular, "tiles": len(self.windows)}


def fits(pipe: Any, width: int, height: int, batch: int = 1) -> bool:
    """Whether the pipeline's UNet/VAE serve this size (the export's per-side range, or an engine profile)."""
    if pipe.profiles is not None:
        return any(p.covers(width, height, batch) for p in pipe.profiles)
    low, high = pipe.covered_range()
    return low <= width <= high and low <= height <= high


def largest_batch(pipe: Any, width: int, height: int) -> int | None:
    """The most images one call at this size may hold (engine profiles); None where the export sets no limit."""
    if pipe.profiles is None:
        return None
    return max((p.batch[2] for p in pipe.profiles if p.covers(width, height, p.batch[0])), default=0)


def default_tiles(pipe: Any) -> tuple[int, int]:
    """(tile size, stride) in pixels that make any canvas fit: the largest covered tile, a quarter overlap."""
    high = max(p.max_px for p in pipe.profiles) if pipe.profiles is not None else pipe.covered_range()[1]
    return high, high * 3 // 4 // LATENT * LATENT


def tile_hint(pipe: Any) -> str:
    """``default_tiles`` as command-line options, for error messages."""
    return "--tile-size {} --tile-stride {}".format(*default_tiles(pipe))


def tile_plan(pipe: Any, width: int, height: int, images: int, tile_size: int | None, tile_stride: int | None,
              circular: bool = False, tile_batch: int | None = None) -> TilePlan | None:
    """The checked plan for a request (None: no tiling). ``images``: images per request (the UNet sees them
    per window, twice with classifier-free guidance)."""
    if tile_size is None:
        for name, given in (("tile_stride", tile_stride is not None), ("circular", bool(circular)),
                            ("tile_batch", tile_batch is not None)):
            if given:
                raise ResAdapterRTError(f"{name} needs a tile size; pass --tile-size PX (tile_size=) as well, e.g. {tile_hint(pipe)}")
        return None
    tile = positive_multiple("tile size", tile_size)
    stride = positive_multiple("tile stride", tile if tile_stride is None else tile_stride)
    check_stride(tile, stride)
    if circular and width <= tile:
        raise ResAdapterRTError(f"circular tiling needs a canvas wider than the tile ({width} px <= {tile} px); "
                                f"use a smaller --tile-size or a wider canvas")
    windows = plan_windows(height // LATENT, width // LATENT, tile // LATENT, stride // LATENT, circular)
    w, h = windows[0].width * LATENT, windows[0].height * LATENT
    if not fits(pipe, w, h, images):
        low, high = pipe.covered_range() if pipe.profiles is None else (None, None)
        covered = f"{low}-{high} px per side" if low is not None else "; ".join(p.describe() for p in pipe.profiles)
        raise ResAdapterRTError(f"tiles of {w}x{h} px (batch {images}) are outside what the UNet covers ({covered}); "
                                f"choose a tile size inside it, e.g. {tile_hint(pipe)}")
    limit = largest_batch(pipe, w, h)
    if tile_batch is not None:
        if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
            raise ResAdapterRTError(f"tile batch must be a positive integer (windows per UNet call), got {tile_batch!r}")
        if limit is not None and tile_batch * images > limit:
            raise ResAdapterRTError(f"tile batch {tile_batch} x {images} image(s) is more than the engine profiles' batch "
                                    f"range allows at {w}x{h} (at most {limit}); use --tile-batch {max(limit // images, 1)}")
        per_call = tile_batch
    else:
        per_call = WINDOWS_PER_CALL if limit is None else max(limit // images, 1)
    return TilePlan(tile=tile, stride=stride, circular=bool(circular), per_call=min(per_call, len(windows)),
                    canvas=(height // LATENT, width // LATENT), windows=tuple(windows))


def crop(tensor: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """``tensor[..., top:top+height, left:left+width]``, wrapping past the right edge."""
    full = tensor.shape[-1]
    rows = tensor[..., top:top + height, :]
    if left + width <= full:
        return rows[..., left:left + width]
    return torch.cat([rows[..., left:], rows[..., :left + width - full]], dim=-1)


def add_into(total: torch.Tensor, part: torch.Tensor, top: int, left: int) -> None:
    """``total[..., window] += part`` for a window that may wrap past the right edge."""
    height, width, full = part.shape[-2], part.shape[-1], total.shape[-1]
    inside = min(width, full - left)
    total[..., top:top + height, left:left + inside] += part[..., :inside]
    if inside < width:
        total[..., top:top + height, :width - inside] += part[..., inside:]


class TiledUNet:
    """A UNet runner over the whole canvas that calls the real one per window batch and averages."""

    def __init__(self, unet: Any, plan: TilePlan, sdxl: bool) -> None:
        self.unet, self.plan, self.sdxl = unet, plan, sdxl
        self.input_names = unet.input_names
        count = torch.zeros(1, 1, *plan.canvas)
        for window in plan.windows:
            add_into(count, torch.ones(1, 1, window.height, window.width), window.top, window.left)
        self.count = count

    def _time_ids(self, time_ids: torch.Tensor, window: Window) -> torch.Tensor:
        height, width = self.plan.canvas
        row = [height, width, window.top, window.left, window.height, window.width]
        return torch.tensor([[LATENT * v for v in row]], dtype=time_ids.dtype, device=time_ids.device).expand_as(time_ids)

    def _batch_inputs(self, inputs: dict[str, torch.Tensor], group: list[Window]) -> dict[str, torch.Tensor]:
        batched = {}
        for name, value in inputs.items():
            if name == CONTROLNET_COND:  # [N, B, 3, H, W] pixels: cropped with the window
                batched[name] = torch.cat([crop(value, LATENT * w.top, LATENT * w.left, LATENT * w.height, LATENT * w.width)
                                           for w in group], dim=1)
            elif name == "time_ids" and self.sdxl:
                batched[name] = torch.cat([self._time_ids(value, w) for w in group])
            elif name in PER_SAMPLE_INPUTS:
                batched[name] = torch.cat([value] * len(group))
            else:  # per-request scalars: alpha, ControlNet and IP-Adapter scales
                batched[name] = value
        return batched

    def __call__(self, sample: torch.Tensor, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        value = torch.zeros(sample.shape, dtype=torch.float32, device=sample.device)
        windows, per_call, batch = list(self.plan.windows), self.plan.per_call, sample.shape[0]
        for start in range(0, len(windows), per_call):
            group = windows[start:start + per_call]
            crops = torch.cat([crop(sample, w.top, w.left, w.height, w.width) for w in group])
            out = self.unet(sample=crops, **self._batch_inputs(inputs, group))["out_sample"]
            for window, part in zip(group, out.to(value.device, torch.float32).split(batch)):
                add_into(value, part, window.top, window.left)
        return {"out_sample": value / self.count.to(value.device)}
