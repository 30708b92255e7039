"""Tiled VAE decode and encode with the semantics of diffusers' ``AutoencoderKL.enable_tiling()``.

Overlapping tiles (a quarter of the tile), each run through the VAE alone, blended linearly into their
upper and left neighbours over a quarter of the tile, then cut to the stride: ``tiled_decode`` and
``_tiled_encode`` exactly, for the decoder (latents -> pixels) and the encoder's latent distribution
parameters (pixels -> moments). Row by row, so only two rows of tiles are held at a time.

One difference: diffusers starts tiles at every stride up to the canvas edge, so the last tile of an
axis is cut short and may be smaller than an engine covers. Such a tile is run widened backwards to the
VAE's minimum size and its result cut back to the short tile (elsewhere identical to diffusers).

Used automatically where a canvas is beyond what the VAE covers (the export's range or the engine
profiles), or on request (``vae_tiling=True``, ``--vae-tiling``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import ResAdapterRTError
from .tiling import LATENT, fits

OVERLAP = 0.25  # diffusers' tile_overlap_factor
TILE_MULTIPLE = 4 * LATENT  # the stride (3/4 of the tile, in latents) must be whole on both sides of the VAE
CIRCULAR_PADDING = 8  # latent columns wrapped onto each side before decoding a circular canvas (as diffusers)


def _blend(previous: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> None:
    """diffusers' ``blend_v`` (dim 2) / ``blend_h`` (dim 3), in place on ``tile``."""
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    if extent == 0:
        return
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    weight = (torch.arange(extent, dtype=torch.float64) / extent).to(tile.dtype).reshape(shape).to(tile.device)
    head = tile.narrow(dim, 0, extent)
    head.copy_(previous.narrow(dim, previous.shape[dim] - extent, extent) * (1 - weight) + head * weight)


def tiled(x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], tile_in: int, scale: float, min_in: int) -> torch.Tensor:
    """Run ``run`` over overlapping tiles of ``x`` ([B, C, H, W], tiles of ``tile_in`` input pixels) and blend.

    ``scale``: output size / input size (8 for the decoder, 1/8 for the encoder); ``min_in``: the smallest
    tile side ``run`` accepts (shorter edge tiles are run widened backwards, then cut).
    """
    tile_out = int(tile_in * scale)
    stride_in = int(tile_in * (1 - OVERLAP))
    extent = int(tile_out * OVERLAP)
    limit = tile_out - extent

    def tile_at(top: int, left: int) -> torch.Tensor:
        bottom, right = min(top + tile_in, x.shape[2]), min(left + tile_in, x.shape[3])
        top0, left0 = max(0, min(top, bottom - min_in)), max(0, min(left, right - min_in))
        out = run(x[:, :, top0:bottom, left0:right])
        return out[:, :, int((top - top0) * scale):, int((left - left0) * scale):]

    previous_row: list[torch.Tensor] = []
    rows = []
    for top in range(0, x.shape[2], stride_in):
        row: list[torch.Tensor] = []
        for j, left in enumerate(range(0, x.shape[3], stride_in)):
            tile = tile_at(top, left).float().clone()
            if previous_row:
                _blend(previous_row[j], tile, extent, 2)
            if row:
                _blend(row[-1], tile, extent, 3)
            row.append(tile)
        rows.append(torch.cat([t[:, :, :limit, :limit] for t in row], dim=3))
        previous_row = row
    return torch.cat(rows, dim=2)


def default_tile(pipe: Any) -> int:
    """The VAE tile in pixels: the model's native size (its training size), inside what the VAE covers, a multiple
    of 32 px (so that the 3/4-tile stride is whole in latents)."""
    low, high = pipe.covered_range() if pipe.profiles is None else \
        (min(p.min_px for p in pipe.profiles), max(p.max_px for p in pipe.profiles))
    size = min(max(int(pipe.manifest.get("training_size") or 512), low), high)
    return max(size // TILE_MULTIPLE * TILE_MULTIPLE, TILE_MULTIPLE)


def minimum_side(pipe: Any) -> int:
    """The smallest side the VAE takes (edge tiles are widened to it)."""
    if pipe.profiles is not None:
        return min(p.min_px for p in pipe.profiles)
    return pipe.covered_range()[0]


class TiledVae:
    """A VAE decoder or encoder runner that runs tiles of ``tile`` pixels through the real one."""

    def __init__(self, runner: Any, tile: int, minimum: int, decoder: bool) -> None:
        self.runner = runner
        self.input_names = runner.input_names
        self.input_name, self.output_name = ("latent_sample", "sample") if decoder else ("sample", "latent_parameters")
        self.tile_in, self.scale = (tile // LATENT, LATENT) if decoder else (tile, 1 / LATENT)
        self.min_in = minimum // LATENT if decoder else minimum

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        def run(part: torch.Tensor) -> torch.Tensor:
            return self.runner(**{self.input_name: part.contiguous()})[self.output_name].to(part.device, torch.float32)

        return {self.output_name: tiled(inputs[self.input_name].float(), run, self.tile_in, self.scale, self.min_in)}


def vae_runner(pipe: Any, name: str, width: int, height: int, batch: int, vae_tiling: bool | None = None) -> Any:
    """The ``vae_decoder``/``vae_encoder`` runner for a canvas of ``width`` x ``height`` pixels: the plain one
    where it fits (unless ``vae_tiling`` is True), else a tiled one (refused if ``vae_tiling`` is False)."""
    if vae_tiling not in (None, True, False):
        raise ResAdapterRTError(f"vae_tiling must be True, False or None (tile only where needed), got {vae_tiling!r}")
    needed = not fits(pipe, width, height, batch)
    if vae_tiling is False and needed:
        raise ResAdapterRTError(f"{width}x{height} is beyond what the VAE covers and VAE tiling is off; "
                                "leave vae_tiling unset (tiles where needed) or pass --vae-tiling")
    if not (vae_tiling or needed):
        return pipe.runners[name]
    return TiledVae(pipe.runners[name], default_tile(pipe), minimum_side(pipe), decoder=name == "vae_decoder")


def decode(pipe: Any, latents: torch.Tensor, vae_tiling: bool | None = None, circular: bool = False) -> torch.Tensor:
    """Scaled latents (already divided by the VAE scaling factor) -> pixels in [-1, 1]; a circular canvas is
    decoded with wrapped padding and cut back, as diffusers' ``decode_latents_with_padding``."""
    pad = CIRCULAR_PADDING if circular else 0
    if pad:
        latents = torch.cat([latents[..., -pad:], latents, latents[..., :pad]], dim=-1)
    height, width = LATENT * latents.shape[-2], LATENT * latents.shape[-1]
    decoded = vae_runner(pipe, "vae_decoder", width, height, latents.shape[0], vae_tiling)(latent_sample=latents)["sample"]
    return decoded[..., LATENT * pad:decoded.shape[-1] - LATENT * pad] if pad else decoded
