"""MultiDiffusion window planning (no torch): where the windows of a tiled canvas lie, and whether a tiled request
fits the engines (``inspect --size WxH --tile-size PX``). The tiled denoising itself is ``runtime/tiling.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ResAdapterRTError
from .profiles import LATENT_FACTOR as LATENT


@dataclass(frozen=True)
class Window:
    """A window on the latent canvas (latent pixels); with ``circular`` it may run past the right edge."""

    top: int
    left: int
    height: int
    width: int


def axis_starts(size: int, tile: int, stride: int, circular: bool = False) -> list[int]:
    """Window starts along one axis (all in the same unit); the last window ends at the edge."""
    if size <= tile:
        return [0]
    if circular:
        return [k * stride for k in range(math.ceil(size / stride))]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def plan_windows(height: int, width: int, tile: int, stride: int, circular: bool = False) -> list[Window]:
    """Row-major windows over a latent canvas (diffusers' ``get_views`` order)."""
    h, w = min(tile, height), min(tile, width)
    return [Window(top, left, h, w) for top in axis_starts(height, tile, stride)
            for left in axis_starts(width, tile, stride, circular)]


def positive_multiple(name: str, value: Any) -> int:
    """A tile size or stride: a positive multiple of 8 px."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % LATENT:
        raise ResAdapterRTError(f"{name} {value!r} is not a positive multiple of {LATENT} px; use e.g. 512")
    return value


def check_stride(tile: int, stride: int) -> None:
    """A stride larger than the tile would leave gaps between windows."""
    if stride > tile:
        raise ResAdapterRTError(f"tile stride {stride} px is larger than the tile size {tile} px, which would leave gaps; "
                                f"use a stride of at most {tile} px (e.g. {tile * 3 // 4 // LATENT * LATENT})")


def tiled_coverage(width: int, height: int, tile: int, stride: int | None,
                   covers: Callable[[int, int], bool]) -> tuple[str, bool]:
    """``inspect --size WxH --tile-size PX``: whether a tiled request fits, as a line and a flag. ``covers(w, h)``:
    whether the engines (or the export's range) take that size; the VAE then decodes in tiles of at most ``tile``."""
    tile = positive_multiple("tile size", tile)
    stride = positive_multiple("tile stride", tile if stride is None else stride)
    check_stride(tile, stride)
    windows = plan_windows(height // LATENT, width // LATENT, tile // LATENT, stride // LATENT)
    w, h = windows[0].width * LATENT, windows[0].height * LATENT
    ok = covers(w, h)
    return (f"{width}x{height} in tiles of {tile} px (stride {stride}): {len(windows)} UNet windows of {w}x{h}, "
            f"{'covered' if ok else 'NOT covered'}"), ok
